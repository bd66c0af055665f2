"""Sealing pending interval records into signed, hash-chained batches; the outbox cap.

A batch is sealed when ``max_records`` records are pending, or when the oldest pending
record is ``max_age_s`` old (clock seconds), whichever comes first. Each seal is one store
transaction: read the oldest pending records, sign a batch with the next sequence number
and the previous header's hash, insert it (its header and signature, and where its records
are in the record log), mark those records sealed, advance the chain head.

**Outbox cap.** If inserting the new batch would exceed ``cap_bytes`` or ``cap_batches``,
batches are dropped in the order the policy names until the rest fits:

- ``drop_oldest``: the oldest unacknowledged data batches first (the new one last);
- ``drop_newest``: the new batch first, then the newest kept ones.

In the same transaction a ``drop`` record is sealed as the next batch: it names every
dropped batch (seq, header hash) and every interval in them (meter, quantity, start, end),
and the cap counts it too. A drop batch still in the outbox when the next drop happens is
superseded: dropped as well, its named batches and intervals carried into the new record,
so the outbox holds at most one drop batch and the newest drop record always names
everything dropped since the last acknowledged one. (A superseded drop batch that was
already in flight may still arrive; the aggregator then reads the same names twice.)
Never silent: each drop is logged at ERROR and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.clock import Clock
from evidence.batch import SealedBatch, parse_batch, seal_batch
from evidence.keys import GatewayKey
from evidence.records import (
    DroppedBatch,
    DropRecord,
    IntervalRecord,
    IntervalRef,
    coalesce_refs,
    decode_record,
    encode_record,
)
from gateway.clock_guard import ClockGuard
from gateway.evidence_config import OutboxSettings, SealingSettings
from gateway.store import EvidenceStore, StoredBatch

log = logging.getLogger(__name__)
DROP_REASON = "outbox_cap"
CLOCK_RECHECK_S = 10.0  # while the clock is not good, look again this often (clock seconds)


@dataclass(eq=False)
class _Candidate:
    """A batch the cap may drop: stored in the outbox, or the one being sealed."""

    seq: int
    header_sha256: str
    size: int
    stored: bool
    intervals: tuple[IntervalRef, ...] | None = None


class Sealer:
    """Seals pending records of one gateway; ``run()`` is the timer for ``max_age_s``."""

    def __init__(
        self,
        store: EvidenceStore,
        *,
        key: GatewayKey,
        gateway_id: str,
        clock: Clock,
        sealing: SealingSettings,
        outbox: OutboxSettings,
        on_sealed: Callable[[], None] = lambda: None,
        clock_guard: ClockGuard | None = None,
    ) -> None:
        self._store, self._key, self._gateway = store, key, gateway_id
        self._guard = clock_guard  # None: the clock is trusted
        self._clock, self._sealing, self._outbox = clock, sealing, outbox
        self._on_sealed = on_sealed
        self._wake = asyncio.Event()
        self.sealed = 0  # batches sealed by this process (drop batches included)
        self.drops = 0  # drop records sealed by this process

    # -- sealing ------------------------------------------------------------------------

    def seal_due(self) -> int:
        """Seal every batch that is due now; returns how many were sealed. Seals nothing while
        the clock guard says time is not good (the batch's creation time would be wrong)."""
        if self._guard is not None and not self._guard.ok():
            return 0
        now_ms = round(self._clock.now() * 1000)
        max_age_ms = round(self._sealing.max_age_s * 1000)
        sealed = 0
        while True:
            count = self._store.pending_count()
            if count == 0:
                break
            if count < self._sealing.max_records:
                oldest = self._store.oldest_pending_ms()
                if oldest is None or now_ms - oldest < max_age_ms:
                    break
            self._seal_one(now_ms)
            sealed += 1
        if sealed:
            self._on_sealed()
        return sealed

    def wake(self) -> None:
        """Records were added: re-check the count and the age deadline."""
        self._wake.set()

    def _seal_one(self, now_ms: int) -> None:
        store = self._store
        with store.transaction():
            rows = store.pending(self._sealing.max_records)
            seq, prev = store.chain_head()
            batch = seal_batch([r for _, r in rows], key=self._key, gateway=self._gateway,
                               seq=seq + 1, prev=prev, created_ms=now_ms)  # fmt: skip
            data = batch.to_bytes()
            depth, size = store.usage()
            head = batch
            if self._fits(depth + 1, size + len(data)):
                store.insert_batch(batch, data, "data", first_record=rows[0][0])
            else:
                head = self._drop_for(batch, data, rows[0][0])
            store.mark_sealed_through(rows[-1][0])
            store.set_chain_head(head.header.seq, head.header_sha256)
        self.sealed += 1 if head is batch else 2
        log.debug("sealed %s (%d records, %d bytes)", batch.header.label, batch.header.count, len(data))

    def _fits(self, batches: int, size: int) -> bool:
        cap = self._outbox
        return (cap.cap_batches is None or batches <= cap.cap_batches) and (
            cap.cap_bytes is None or size <= cap.cap_bytes
        )

    # -- the outbox cap -------------------------------------------------------------------

    def _drop_for(self, new: SealedBatch, new_data: bytes, first_record: int) -> SealedBatch:
        """Drop batches per the policy until the rest and the drop batch fit; inside the
        seal transaction (``new`` holds the pending records from ``first_record`` on).
        Returns the drop batch (the new chain head)."""
        store = self._store
        olds = [_Candidate(b.seq, b.header_sha256, b.size, True) for b in store.outbox("data")]
        fresh = _Candidate(new.header.seq, new.header_sha256, len(new_data), False,
                           _interval_refs(new.records))  # fmt: skip
        order = [*olds, fresh] if self._outbox.policy == "drop_oldest" else [fresh, *reversed(olds)]
        superseded = store.outbox("drop")
        carried_batches, carried_intervals = self._carried(superseded)
        victims: list[_Candidate] = []
        drop_batch, drop_data = new, b""
        for candidate in order:
            victims.append(candidate)
            if candidate.intervals is None:
                candidate.intervals = _interval_refs(parse_batch(store.batch_data(candidate.seq)).records)
            record = self._drop_record(victims, carried_batches, carried_intervals, len(superseded))
            drop_batch = self._seal_record(record, new)
            drop_data = drop_batch.to_bytes()
            kept = [c for c in [*olds, fresh] if c not in victims]
            if self._fits(len(kept) + 1, sum(c.size for c in kept) + len(drop_data)):
                break
        else:
            log.error("outbox cap %s is smaller than a single drop record; keeping it anyway", self._outbox)
        if fresh not in victims:
            store.insert_batch(new, new_data, "data", first_record=first_record)
        store.delete_batches([c.seq for c in victims if c.stored] + [b.seq for b in superseded])
        store.insert_batch(drop_batch, drop_data, "drop")
        intervals = sum(len(c.intervals or ()) for c in victims)
        store.count_drop(len(victims), intervals)
        self.drops += 1
        log.error(
            "OUTBOX CAP REACHED on gateway %s (%s): dropped %d batch(es) seq %s holding %d intervals; "
            "signed drop record sealed as seq %d",
            self._gateway, self._outbox.policy, len(victims), sorted(c.seq for c in victims), intervals,
            drop_batch.header.seq,
        )  # fmt: skip
        return drop_batch

    def _seal_record(self, record: DropRecord, after: SealedBatch) -> SealedBatch:
        h = after.header
        return seal_batch([encode_record(record)], key=self._key, gateway=self._gateway, seq=h.seq + 1,
                          prev=after.header_sha256, created_ms=h.created_ms)  # fmt: skip

    def _carried(self, superseded: Iterable[StoredBatch]) -> tuple[list[DroppedBatch], list[IntervalRef]]:
        """Batches and intervals named by drop batches about to be superseded, plus those."""
        batches: list[DroppedBatch] = []
        intervals: list[IntervalRef] = []
        for stored in superseded:
            batches.append(DroppedBatch(stored.seq, stored.header_sha256))
            for line in parse_batch(self._store.batch_data(stored.seq)).records:
                record = decode_record(line)
                if isinstance(record, DropRecord):
                    batches += record.batches
                    intervals += record.intervals
        return batches, intervals

    def _drop_record(
        self,
        victims: list[_Candidate],
        carried_batches: list[DroppedBatch],
        carried_intervals: list[IntervalRef],
        superseded: int,
    ) -> DropRecord:
        named = carried_batches + [DroppedBatch(c.seq, c.header_sha256) for c in victims]
        # Runs per meter quantity: the record grows with the series, not with the outage.
        intervals = coalesce_refs([*carried_intervals, *(ref for c in victims for ref in c.intervals or ())])
        cap = self._outbox
        detail = (
            f"outbox cap reached (cap_bytes={cap.cap_bytes}, cap_batches={cap.cap_batches}): "
            f"{len(victims)} batch(es) dropped now"
            + (f", {superseded} earlier drop record(s) superseded and carried over" if superseded else "")
        )
        return DropRecord(DROP_REASON, cap.policy, tuple(sorted(named, key=lambda b: b.seq)),
                          intervals, detail)  # fmt: skip

    # -- the age timer --------------------------------------------------------------------

    async def run(self) -> None:
        """Seal whatever is due, then sleep until the oldest pending record is due or
        :meth:`wake` is called; forever (cancel to stop)."""
        while True:
            self._wake.clear()
            self.seal_due()
            oldest = self._store.oldest_pending_ms()
            deadline = None if oldest is None else oldest / 1000 + self._sealing.max_age_s
            if self._held_back():
                deadline = self._clock.now() + CLOCK_RECHECK_S
            await self._sleep(deadline)

    def _held_back(self) -> bool:
        state = self._guard.state if self._guard is not None else None
        return state is not None and not state.ok

    async def _sleep(self, deadline: float | None) -> None:
        alarm = None
        if deadline is not None:
            alarm = asyncio.create_task(self._alarm(deadline), name=f"evidence-seal-alarm-{self._gateway}")
        try:
            await self._wake.wait()
        finally:
            if alarm is not None:
                alarm.cancel()
                await asyncio.wait([alarm])

    async def _alarm(self, deadline: float) -> None:
        await self._clock.sleep_until(deadline)
        self._wake.set()


def _interval_refs(records: Iterable[bytes]) -> tuple[IntervalRef, ...]:
    refs = []
    for line in records:
        record = decode_record(line)
        if isinstance(record, IntervalRecord):
            refs.append(IntervalRef(record.meter, record.quantity, record.start, record.end))
    return tuple(refs)
