"""Two aggregators share one gateway's batches (a shared subscription hands seq n to one and
n+1 to the other): what happens when n+1 reaches its aggregator first.

Without holding (``ingest.reorder_wait_s: 0``, a lone SQLite aggregator's behaviour) n+1 is
stored as a *gap* and acknowledged before n is stored; n then fills the gap, and n+1's batch
id is below n's (readers that follow ids see the chain out of order). With holding (the
default over PostgreSQL) the store holds n+1 back until n is stored: both verdicts ``append``,
no gap row, ids in seq order, n+1 acknowledged only after n is durable. A predecessor that
never comes costs the wait, then n+1 is stored as a gap, which n fills if it comes later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store.postgres import PostgresEvidenceStore
from common.clock import SystemClock
from evidence import SealedBatch, generate_key
from evidence.wire import Ack, batch_topic
from tests.aggregator.ingest_support import SimGateway

pytestmark = pytest.mark.integration
AGG_KEY = generate_key()


class Node:
    """One aggregator's ingest: its own store object (connections) and store thread."""

    def __init__(self, tmp_path: Path, conninfo: dict[str, Any], wait_s: float) -> None:
        config = AggregatorConfig.model_validate(
            {"mqtt": {"insecure": True}, "store": {"path": str(tmp_path / "unused.sqlite3")},
             "influx": {"url": "http://127.0.0.1:9", "database": "unused"},
             "ingest": {"reorder_wait_s": wait_s}, "key_file": str(tmp_path / "unused.pem")}
        )  # fmt: skip
        self.threads = StoreThreads()
        self.store = PostgresEvidenceStore(conninfo)
        self.registry = GatewayRegistry(self.store)
        self.ingest = BatchIngest(config, store=self.store, registry=self.registry, key=AGG_KEY,
                                  clock=SystemClock(), run_db=self.threads.run_db)  # fmt: skip

    async def send(self, sealed: SealedBatch) -> Ack:
        answer = await self.ingest.process(batch_topic(sealed.header.gateway), sealed.to_bytes())
        assert answer is not None
        _, reply = answer
        assert isinstance(reply, Ack), reply
        return reply

    def close(self) -> None:
        self.threads.close()
        self.store.close()


@pytest_asyncio.fixture
async def nodes(tmp_path: Path, postgres_db: dict[str, Any], request: pytest.FixtureRequest) -> AsyncIterator[
    tuple[Node, Node, SimGateway]
]:  # fmt: skip
    wait_s: float = request.param
    a, b = Node(tmp_path, postgres_db, wait_s), Node(tmp_path, postgres_db, wait_s)
    gw = SimGateway("gw-order", meters=("pv-01",))
    a.registry.enrol(gw.enrolment(), at_ms=0)
    b.registry.refresh(force=True)
    yield a, b, gw
    a.close()
    b.close()


def _ids(store: PostgresEvidenceStore) -> dict[int, int]:
    """seq -> batch row id of the gateway's stored batches."""
    return {seq: i for i, (g, seq, _) in enumerate(store.batch_log()) if g == "gw-order"}


@pytest.mark.parametrize("nodes", [0.0], indirect=True)
async def test_without_holding_the_successor_is_stored_first_as_a_gap(
    nodes: tuple[Node, Node, SimGateway],
) -> None:
    a, b, gw = nodes
    first, n, n1 = gw.next_batch(), gw.next_batch(), gw.next_batch()
    await a.send(first)
    ack = await b.send(n1)  # n+1 reaches aggregator B before n reaches A
    assert ack.status == "stored" and a.store.batch_bytes("gw-order", 2) is None  # acked, n not stored
    await a.send(n)
    gaps = a.store.gaps("gw-order")
    assert [(g.seq, g.filled_ms is not None) for g in gaps] == [(2, True)]  # recorded, then filled
    ids = _ids(a.store)
    assert ids[3] < ids[2]  # stored out of order


@pytest.mark.parametrize("nodes", [30.0], indirect=True)
async def test_with_holding_the_successor_waits_for_its_predecessor(
    nodes: tuple[Node, Node, SimGateway],
) -> None:
    a, b, gw = nodes
    first, n, n1, n2 = gw.next_batch(), gw.next_batch(), gw.next_batch(), gw.next_batch()
    await a.send(first)
    later = asyncio.create_task(b.send(n1))  # n+1 reaches B first: held, unanswered
    async with asyncio.timeout(10):
        while b.ingest.stats.held < 3:  # noqa: ASYNC110 (the ingest's retries: no event to wait on)
            await asyncio.sleep(0.01)
    assert not later.done() and a.store.batch_bytes("gw-order", 3) is None
    await a.send(n)
    async with asyncio.timeout(10):
        ack = await later
    assert ack.status == "stored"
    assert (await a.send(n2)).status == "stored"  # A's view of the chain catches up
    assert a.store.gaps("gw-order") == []
    ids = _ids(a.store)
    assert sorted(ids, key=ids.__getitem__) == [1, 2, 3, 4]  # stored in chain order
    verdicts = {seq: v for seq, v in a.store._read(
        "SELECT seq, verdict FROM batches WHERE gateway = 'gw-order'")}  # fmt: skip
    assert set(verdicts.values()) == {"append"}


@pytest.mark.parametrize("nodes", [0.3], indirect=True)
async def test_a_predecessor_that_never_comes_costs_the_wait_then_a_gap(
    nodes: tuple[Node, Node, SimGateway],
) -> None:
    a, b, gw = nodes
    first, n, n1 = gw.next_batch(), gw.next_batch(), gw.next_batch()
    await a.send(first)
    async with asyncio.timeout(10):
        ack = await b.send(n1)  # n is lost at a dead aggregator: n+1 stored after the wait
    assert ack.status == "stored" and b.ingest.stats.held > 0
    assert [(g.seq, g.filled_ms) for g in a.store.gaps("gw-order")] == [(2, None)]
    await a.send(n)  # the gateway resends n: it fills the gap
    assert [g.seq for g in a.store.gaps("gw-order") if g.filled_ms is not None] == [2]
    assert sorted(seq for seq, _, _ in a.store.chain_links("gw-order")) == [1, 2, 3]
