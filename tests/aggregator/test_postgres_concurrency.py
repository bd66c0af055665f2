"""Several writers on one PostgreSQL evidence store, as several aggregators are: each its own
store object (its own connections) in its own thread, racing group for group.

Two writers store the same batches of the same gateways, in opposite gateway orders (the
chain heads are locked in one order, so they cannot deadlock); two others store other
gateways at the same time. Exactly one writer wins each ``(gateway, seq)``, every chain is
linear and complete, no batch is lost; and a reader polling the batch log meanwhile only
ever sees it grow at its end (ids become visible in the order they were drawn)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest

from aggregator.errors import StoreConflict
from aggregator.store import AcceptedBatch
from aggregator.store.postgres import PostgresEvidenceStore
from tests.aggregator.ingest_support import SimGateway
from tests.aggregator.store_support import accepted

pytestmark = pytest.mark.integration
ROUNDS = 60  # seqs per gateway
DEADLINE_S = 120.0

Outcome = dict[tuple[str, int], int | StoreConflict | None]


def _chains(prefix: str, count: int) -> dict[str, list[AcceptedBatch]]:
    gateways = [SimGateway(f"{prefix}-{i}", meters=("pv-01",)) for i in range(count)]
    return {gw.gateway: [accepted(gw, steps=1) for _ in range(ROUNDS)] for gw in gateways}


def _writer(
    conninfo: dict[str, Any], groups: Sequence[list[AcceptedBatch]], start: threading.Barrier, out: Outcome
) -> Callable[[], None]:
    def run() -> None:
        store = PostgresEvidenceStore(conninfo)
        try:
            start.wait(DEADLINE_S)
            for group in groups:
                for b, result in zip(group, store.store_group(group), strict=True):
                    out[(b.gateway, b.seq)] = result
        finally:
            store.close()

    return run


def test_racing_writers_store_each_batch_once_and_the_log_only_grows_at_its_end(
    postgres_db: dict[str, Any],
) -> None:
    PostgresEvidenceStore(postgres_db).close()  # the schema, before the race
    shared, own_c, own_d = _chains("gw-s", 4), _chains("gw-c", 3), _chains("gw-d", 3)
    by_seq = list(zip(*shared.values(), strict=True))  # round n: seq n+1 of every shared gateway
    plans = {
        "a": [list(batches) for batches in by_seq],
        "b": [list(reversed(batches)) for batches in by_seq],  # the other gateway order
        "c": [list(batches) for batches in zip(*own_c.values(), strict=True)],
        "d": [list(batches) for batches in zip(*own_d.values(), strict=True)],
    }
    outcomes: dict[str, Outcome] = {name: {} for name in plans}
    start = threading.Barrier(len(plans) + 1)
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 (reported in the test's thread)
                errors.append(exc)
                start.abort()

        return run

    writers = [
        threading.Thread(target=guarded(_writer(postgres_db, plan, start, outcomes[n])), name=f"writer-{n}")
        for n, plan in plans.items()
    ]
    for w in writers:
        w.start()
    snapshots: list[list[int]] = []
    with psycopg.connect(**postgres_db, autocommit=True) as reader:
        start.wait(DEADLINE_S)
        while any(w.is_alive() for w in writers):
            snapshots.append([i for (i,) in reader.execute("SELECT id FROM batches ORDER BY id")])
    for w in writers:
        w.join()
    assert errors == []

    store = PostgresEvidenceStore(postgres_db)
    try:
        for gateway, batches in (shared | own_c | own_d).items():
            links = store.chain_links(gateway)
            assert [s for s, _, _ in links] == list(range(1, ROUNDS + 1)), gateway
            assert [h for _, h, _ in links] == [b.header_sha256 for b in batches]
            assert all(prev == links[n - 1][1] for n, (_, _, prev) in enumerate(links) if n), "not linear"
            assert store.highest_seq(gateway) == ROUNDS
        with psycopg.connect(**postgres_db) as conn:
            log = [i for (i,) in conn.execute("SELECT id FROM batches ORDER BY id")]
    finally:
        store.close()

    for key in {(g, b.seq) for g, batches in shared.items() for b in batches}:
        won = [name for name in ("a", "b") if isinstance(outcomes[name][key], int)]
        lost = [name for name in ("a", "b") if isinstance(outcomes[name][key], StoreConflict)]
        assert len(won) == 1 and len(lost) == 1, (key, outcomes["a"][key], outcomes["b"][key])
    for name in ("c", "d"):
        assert all(isinstance(r, int) for r in outcomes[name].values())
    wins = [r for o in outcomes.values() for r in o.values() if isinstance(r, int)]
    assert sorted(wins) == log and len(log) == len(set(log)) == ROUNDS * 10
    assert len(snapshots) > 10, "the reader did not look while the writers ran"
    grown = [s for s in snapshots if s != log[: len(s)]]
    assert grown == [], f"{len(grown)} of {len(snapshots)} views were not a prefix of the log"
