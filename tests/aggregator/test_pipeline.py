"""Ingest's pipeline (group commit with optimistic chain state) against a real SQLite store.

The invariant under every test: a batch is acknowledged only when it is durable in the store
(checked through the store's own reader connection at the moment the ack is sent), and every
batch that is not stored is answered with a reject, so its gateway resends it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from aggregator.config import AggregatorConfig
from aggregator.errors import StoreConflict, StoreError
from aggregator.ingest import BatchIngest
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store import AcceptedBatch, Rejection, SQLiteEvidenceStore
from common.clock import SystemClock
from evidence import KeyRotationRecord, SealedBatch, generate_key
from evidence.batch import seal_batch
from evidence.keys import public_key_b64
from evidence.wire import Ack, Reject, RejectReason, Reply, batch_topic
from tests.aggregator.ingest_support import T0, SimGateway

AGG_KEY = generate_key()


class SlowStore(SQLiteEvidenceStore):
    """The real store, with each commit held back (so groups form) and faults on demand."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.delay_s = 0.02
        self.fail_seqs: set[tuple[str, int]] = set()  # a group holding one of these fails (once)
        self.groups: list[int] = []

    def store_group(
        self, batches: Sequence[AcceptedBatch], rejections: Sequence[Rejection] = ()
    ) -> list[int | StoreConflict | None]:
        time.sleep(self.delay_s)
        hit = {(b.gateway, b.seq) for b in batches} & self.fail_seqs
        if hit:
            self.fail_seqs -= hit
            raise StoreError(f"injected: disk full while storing {sorted(hit)}")
        self.groups.append(len(batches))
        return super().store_group(batches, rejections)


class Harness:
    def __init__(self, tmp_path: Path, threads: StoreThreads) -> None:
        config = AggregatorConfig.model_validate(
            {"mqtt": {"insecure": True}, "store": {"path": str(tmp_path / "e.sqlite3")},
             "influx": {"url": "http://127.0.0.1:9", "database": "unused"},
             "key_file": str(tmp_path / "unused.pem")}
        )  # fmt: skip
        self.store = SlowStore(config.store.path)
        self.registry = GatewayRegistry(self.store)
        self.ingest = BatchIngest(config, store=self.store, registry=self.registry, key=AGG_KEY,
                                  clock=SystemClock(), run_db=threads.run_db)  # fmt: skip
        self.replies: list[Reply] = []
        self._run_db = threads.run_db

    async def drain_store_thread(self) -> None:
        """Return once every store call queued so far has finished: the store thread runs its
        calls one at a time in order, so a no-op queued now runs after all of them."""
        await self._run_db(lambda: None)

    async def send(self, topic: str, reply: Reply) -> None:
        if isinstance(reply, Ack):  # durable at the moment it is acknowledged
            assert self.store.batch_bytes(reply.gateway, reply.seq) is not None, reply
        self.replies.append(reply)

    async def run(self, messages: Sequence[tuple[str, SealedBatch]]) -> list[Reply]:
        before = len(self.replies)
        async with self.ingest.pipeline(self.send) as feed:
            for gateway, sealed in messages:
                await feed(batch_topic(gateway), sealed.to_bytes())
        return self.replies[before:]

    def stored_seqs(self, gateway: str) -> list[int]:
        return sorted(seq for seq, _, _ in self.store.chain_links(gateway))


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    with StoreThreads() as threads:
        h = Harness(tmp_path, threads)
        yield h
        h.store.close()


def _gateways(h: Harness, *names: str) -> list[SimGateway]:
    gws = [SimGateway(n, meters=("pv-01",)) for n in names]
    for gw in gws:
        h.registry.enrol(gw.enrolment(), at_ms=0)
    return gws


async def test_batches_are_committed_in_groups_and_answered_in_arrival_order(harness: Harness) -> None:
    a, b = _gateways(harness, "gw-a", "gw-b")
    messages = []
    for _ in range(20):
        messages += [("gw-a", a.next_batch(1)), ("gw-b", b.next_batch(1))]
    messages.insert(5, messages[2])  # a duplicate while the original may still be in flight
    replies = await harness.run(messages)
    assert [(r.gateway, r.seq) for r in replies] == [(g, s.header.seq) for g, s in messages]
    assert all(isinstance(r, Ack) for r in replies)
    assert [r.status for r in replies if isinstance(r, Ack)].count("duplicate") == 1
    assert harness.stored_seqs("gw-a") == harness.stored_seqs("gw-b") == list(range(1, 21))
    assert max(harness.store.groups) > 1 and sum(harness.store.groups) == 40
    assert harness.store.gaps("gw-a") == harness.store.gaps("gw-b") == []


async def test_a_failed_commit_is_never_acknowledged_and_resending_heals(harness: Harness) -> None:
    a, b = _gateways(harness, "gw-a", "gw-b")
    batches_a = [a.next_batch(1) for _ in range(12)]
    batches_b = [b.next_batch(1) for _ in range(12)]
    harness.store.fail_seqs = {("gw-a", 4)}
    messages = [
        m for pair in zip(batches_a, batches_b, strict=True) for m in (("gw-a", pair[0]), ("gw-b", pair[1]))
    ]
    messages.insert(9, ("gw-a", batches_a[3]))  # a duplicate of the batch whose commit fails
    replies = await harness.run(messages)

    acked = {(r.gateway, r.seq) for r in replies if isinstance(r, Ack)}
    refused = [r for r in replies if isinstance(r, Reject)]
    assert ("gw-a", 4) not in acked and refused
    assert {r.reason for r in refused} == {RejectReason.INTERNAL.value}
    for gateway in ("gw-a", "gw-b"):  # what is acknowledged is exactly what is stored
        assert {s for g, s in acked if g == gateway} == set(harness.stored_seqs(gateway))

    # The gateways resend what was refused, in their order: everything ends up stored once.
    again = [(g, s) for g, s in messages if (g, s.header.seq) not in acked]
    unique = list({(g, s.header.seq): (g, s) for g, s in again}.values())
    replies = await harness.run(unique)
    assert all(isinstance(r, Ack) for r in replies), replies
    assert harness.stored_seqs("gw-a") == harness.stored_seqs("gw-b") == list(range(1, 13))
    assert all(g.filled_ms is not None for g in harness.store.gaps("gw-a"))


async def test_abandoned_pipeline_forgets_what_it_had_not_committed(harness: Harness) -> None:
    [a] = _gateways(harness, "gw-a")
    batches = [a.next_batch(1) for _ in range(8)]
    harness.store.delay_s = 0.2
    harness.store.fail_seqs = {("gw-a", 1)}  # the commit under way when abandoned fails too
    with pytest.raises(ExceptionGroup):
        async with harness.ingest.pipeline(harness.send) as feed:
            for sealed in batches:
                await feed(batch_topic("gw-a"), sealed.to_bytes())
            raise ConnectionError("broker went away")  # before the slow commits finished
    await harness.drain_store_thread()  # the abandoned commits, if queued, have now run (and failed)
    assert harness.store.groups == []  # no commit succeeded...
    assert harness.stored_seqs("gw-a") == []  # ...and nothing was stored behind the pipeline's back
    harness.store.delay_s, harness.store.fail_seqs = 0.0, set()
    replies = await harness.run([("gw-a", s) for s in batches])  # the gateway resends all
    assert all(isinstance(r, Ack) for r in replies), replies
    assert harness.stored_seqs("gw-a") == list(range(1, 9))


async def test_a_key_rotation_is_committed_before_the_next_batch_is_checked(harness: Harness) -> None:
    [a] = _gateways(harness, "gw-a")
    new_key = generate_key()
    rotation = KeyRotationRecord(new_key.key_id, public_key_b64(new_key.public_key), effective_seq=3)
    b1 = a.next_batch(1)
    b2 = a.seal([*a.intervals(1), rotation])
    b3 = a.seal(a.intervals(1), key=new_key)  # signed by the key b2 announced, fed right after it
    replies = await harness.run([("gw-a", b1), ("gw-a", b2), ("gw-a", b3)])
    assert [(type(r).__name__, r.seq) for r in replies] == [("Ack", 1), ("Ack", 2), ("Ack", 3)]


async def test_a_batch_inexpressible_as_line_protocol_is_still_stored_and_acked(harness: Harness) -> None:
    [a] = _gateways(harness, "gw-a")
    odd = dataclasses.replace(a.intervals(1)[0], meter="pv-01\\")  # a tag value cannot end in "\"
    replies = await harness.run([("gw-a", a.seal([odd])), ("gw-a", a.next_batch(1))])
    assert [(type(r).__name__, r.seq) for r in replies] == [("Ack", 1), ("Ack", 2)]
    assert harness.stored_seqs("gw-a") == [1, 2]


async def test_a_refused_batch_resent_is_answered_every_time_and_kept_once(harness: Harness) -> None:
    stranger = SimGateway("gw-x", meters=("pv-01",))  # never enrolled
    batch = stranger.next_batch(1)
    replies = await harness.run([("gw-x", batch)] * 5)
    assert [(type(r).__name__, r.reason) for r in replies] == [("Reject", "not_enrolled")] * 5
    assert harness.ingest.stats.rejected["not_enrolled"] == 5
    [kept] = harness.store.rejections("gw-x")
    assert (kept.repeats, kept.data) == (5, batch.to_bytes())


async def test_refused_payloads_keep_a_prefix_and_a_hash_and_a_flood_is_only_counted(
    harness: Harness, tmp_path: Path
) -> None:
    """Issue 16 item 4: 4 distinct 7 MB refused payloads grew the store by 35 MB, 3,000 tiny
    ones added 3,000 rows. Now each keeps a 4 KiB prefix with the whole payload's size and
    hash, and past the per-source cap refusals are only counted, per reason."""
    harness.store.rejection_rows_per_source = 50
    big = [os.urandom(16) * (7_000_000 // 16) for _ in range(4)]  # distinct, 7 MB, not batches
    tiny = [b"garbage %d\n" % i for i in range(300)]
    async with harness.ingest.pipeline(harness.send) as feed:
        for payload in big + tiny:
            await feed(batch_topic("gw-x"), payload)
    kept = harness.store.rejections("gw-x")
    assert len(kept) == 50 and sum(r.repeats for r in kept) == 50
    assert [(len(r.data), r.size, r.data_sha256) for r in kept[:4]] == [
        (4096, 7_000_000 - 7_000_000 % 16, hashlib.sha256(p).hexdigest()) for p in big
    ]
    assert harness.store.rejection_overflow() == {("gw-x", "malformed"): 4 + 300 - 50}
    on_disk = _bytes_on_disk(tmp_path, "e.sqlite3*")
    assert on_disk < 2_000_000, on_disk  # not 28 MB


def _bytes_on_disk(directory: Path, pattern: str) -> int:
    return sum(f.stat().st_size for f in directory.glob(pattern))


async def test_deeply_nested_or_huge_payloads_are_refused_and_ingest_goes_on(harness: Harness) -> None:
    """JSON nested 100,000 deep raised RecursionError through the header parser, the
    internal-error path and the pipeline: the aggregator's ingest died. Each is a
    'malformed' refusal now, and the next genuine batch is stored."""
    [a] = _gateways(harness, "gw-a")
    deep = b"[" * 100_000
    signed_deep_record = seal_batch(
        [deep], key=a.key, gateway="gw-a", seq=1, prev=a.prev, created_ms=T0 * 1000
    )
    hostile = [deep, b'{"format":"puhui-batch/1"}\n' + deep + b"\n", b"9" * 5000 + b"\n\n\n"]
    async with harness.ingest.pipeline(harness.send) as feed:
        for payload in hostile:
            await feed(batch_topic("gw-a"), payload)
        await feed(batch_topic("gw-a"), signed_deep_record.to_bytes())
    replies = await harness.run([("gw-a", a.next_batch(1))])
    assert [(type(r).__name__, getattr(r, "reason", None)) for r in harness.replies[:4]] == [
        ("Reject", "malformed")
    ] * 4
    assert [(type(r).__name__, r.seq) for r in replies] == [("Ack", 1)]
