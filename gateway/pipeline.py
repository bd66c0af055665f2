"""The gateway's evidence pipeline: closed intervals in, acknowledged signed batches out.

::

    runtime --submit(records, builder snapshot)--> store's record log  (one synced frame)
    Sealer  --count or age-->  signed batch in store.batches          (one transaction)
    Uplink  --MQTT QoS 1-->  aggregator --signed ack-->  batch leaves the outbox

:class:`EvidencePipeline` is the one object the gateway runtime uses. It owns the state
state (:mod:`gateway.store`), the sealer timer and the uplink, as named tasks in a
``TaskGroup`` that it cancels and awaits on exit. Store calls run on the event loop: each
is one short write (one fsync), a few milliseconds on a Raspberry Pi's SD card, far below
a poll period; moving them to a thread would need locking for no gain there.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from common.clock import Clock
from evidence.keys import GatewayKey
from evidence.records import IntervalRecord, SessionRecord, encode_records
from evidence.wire import check_gateway_id
from gateway.clock_guard import ClockGuard
from gateway.errors import EvidenceStoreError
from gateway.evidence_config import EvidenceSettings, UplinkSettings
from gateway.sealer import Sealer
from gateway.store import EvidenceStore, read_builder_state
from gateway.uplink import Uplink

log = logging.getLogger(__name__)
StatusValue = float | int | str | None


class EvidencePipeline:
    """Durable sealing and store-and-forward of one gateway's interval records."""

    def __init__(
        self,
        settings: EvidenceSettings,
        uplink: UplinkSettings | None,
        *,
        gateway_id: str,
        key: GatewayKey,
        clock: Clock,
        clock_guard: ClockGuard | None = None,
    ) -> None:
        self._settings, self._uplink_settings = settings, uplink
        self._clock_guard = clock_guard  # the sealer seals only while it says time is good
        self._gateway, self._key, self._clock = check_gateway_id(gateway_id), key, clock
        self._store: EvidenceStore | None = None
        self._sealer: Sealer | None = None
        self._uplink: Uplink | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> EvidencePipeline:
        """Open the store, start the sealer timer and the uplink."""
        store = EvidenceStore.open(self._settings.state_dir, gateway_id=self._gateway)
        try:
            uplink = None
            if self._uplink_settings is not None:
                uplink = Uplink.from_settings(self._uplink_settings, store, gateway_id=self._gateway,
                                              clock=self._clock)  # fmt: skip
            self._sealer = Sealer(store, key=self._key, gateway_id=self._gateway, clock=self._clock,
                                  sealing=self._settings.sealing, outbox=self._settings.outbox,
                                  on_sealed=uplink.wake if uplink is not None else _nothing,
                                  clock_guard=self._clock_guard)  # fmt: skip
            group = asyncio.TaskGroup()
            await group.__aenter__()
        except BaseException:
            store.close()
            raise
        self._store, self._uplink, self._group = store, uplink, group
        self._tasks = [group.create_task(self._sealer.run(), name=f"evidence-sealer-{self._gateway}")]
        if uplink is not None:
            self._tasks.append(group.create_task(uplink.run(), name=f"evidence-uplink-{self._gateway}"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Seal nothing new; cancel and await the tasks; close the store."""
        for task in self._tasks:
            task.cancel()
        try:
            if self._group is not None:
                await self._group.__aexit__(exc_type, exc, tb)
        finally:
            if self._store is not None:
                self._store.close()
            self._store = self._sealer = self._uplink = self._group = None
            self._tasks = []

    # -- the runtime's calls ------------------------------------------------------------------

    def builder_state(self) -> dict[str, Any] | None:
        """The last persisted :meth:`IntervalBuilder.snapshot` (None on a fresh gateway)."""
        if self._store is not None:
            return self._store.builder_state()
        return read_builder_state(self._settings.state_dir)

    async def submit(
        self, records: Sequence[IntervalRecord | SessionRecord], builder_state: Mapping[str, Any]
    ) -> None:
        """Persist ``records`` and the builder snapshot taken after emitting them, in one
        committed transaction; seal at once if ``max_records`` are pending. Raises only if
        that transaction did not commit (the caller then submits the records again)."""
        store, sealer = self._running()
        encoded = encode_records(records)
        store.add_pending(encoded, builder_state, round(self._clock.now() * 1000))
        if records:
            self._seal_now(store, sealer)
            sealer.wake()

    def _seal_now(self, store: EvidenceStore, sealer: Sealer) -> None:
        # The records are committed: a failed seal must not fail the submit (they would be
        # submitted, and sealed, twice). They stay pending; the sealer's task retries. A
        # storage failure comes as EvidenceStoreError (the store translates it).
        try:
            if store.pending_count() >= self._settings.sealing.max_records:
                sealer.seal_due()
        except (sqlite3.Error, EvidenceStoreError) as exc:
            log.error("gateway %s: sealing at submit failed (%s); the records stay pending in %s",
                      self._gateway, exc, self._settings.state_dir)  # fmt: skip

    def status(self) -> dict[str, StatusValue]:
        """Outbox depth and bytes, pending records, oldest unacknowledged age, last ack,
        counters of acks, rejects, forged replies and drops, connection state."""
        store, sealer = self._running()
        st = store.stats()
        now = self._clock.now()
        up = self._uplink
        out: dict[str, StatusValue] = {
            "outbox_depth_batches": st.depth,
            "outbox_bytes": st.bytes,
            "pending_records": st.pending,
            "oldest_unacked_age_s": None
            if st.oldest_created_ms is None
            else now - st.oldest_created_ms / 1000,
            "last_seq": st.last_seq,
            "last_ack_seq": st.last_ack_seq,
            "last_ack_at": None if st.last_ack_ms is None else st.last_ack_ms / 1000,
            "acked_total": st.acked,
            "dropped_batches": st.dropped_batches,
            "dropped_intervals": st.dropped_intervals,
            "sealed_batches": sealer.sealed,
            "uplink": "disabled" if up is None else ("connected" if up.connected else "disconnected"),
            "connected": int(up is not None and up.connected),
            "inflight": 0 if up is None else up.inflight,
            "last_reject": None if up is None else up.last_reject,
            "key_id": self._key.key_id,
        }
        counts = vars(up.counts) if up is not None else {}
        for name in (
            "published",
            "resends",
            "acks",
            "rejects",
            "forged_replies",
            "unmatched_acks",
            "unmatched_rejects",
            "connects",
        ):
            out[name] = counts.get(name, 0)
        return out

    def _running(self) -> tuple[EvidenceStore, Sealer]:
        if self._store is None or self._sealer is None:
            raise RuntimeError("EvidencePipeline is not running: use 'async with pipeline:'")
        return self._store, self._sealer


def _nothing() -> None:
    return None
