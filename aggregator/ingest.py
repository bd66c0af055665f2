"""Ingest: batches from MQTT, verified, checked, stored, then acknowledged.

Per batch (:meth:`BatchIngest.process`), in this order, stopping at the first refusal:

1. size limit (``too_large``); topic names a gateway, header names the same (``malformed``);
2. framing (``malformed``);
3. the key valid for this gateway, sequence number and creation time
   (``not_enrolled``, ``unknown_key``, ``revoked_key``; see :mod:`aggregator.registry`);
4. signature (``bad_signature``), record count (``malformed``), Merkle root
   (``merkle_mismatch``);
5. the hash chain: ``duplicate`` is acknowledged again and stored nothing; ``fork`` is
   refused and alarmed (logged at ERROR, kept in ``rejections``); ``gap`` is stored and the
   missing sequence numbers recorded; ``reorder`` is stored and closes its gap;
6. record decoding (``malformed``) and a key rotation's consistency;
7. plausibility per interval (:mod:`aggregator.plausibility`): issues are stored with the
   interval, never a reason to refuse the batch;
8. one durable transaction in the store (shared with the batches that waited meanwhile:
   group commit, see :class:`BatchIngest`); only then the signed ack (``stored``).
   With several aggregators (PostgreSQL), a batch whose predecessor is not stored yet is held
   back by the store and tried again with the next groups, unanswered, for up to
   ``ingest.reorder_wait_s``: seq n+1 that reached this aggregator before n reached another
   is stored (and acknowledged) after n, never recorded as a gap. Past the wait it is stored
   as a gap (the predecessor may be lost), which the predecessor fills if it comes.

Every refusal is answered on the gateway's reject topic, counted by reason, logged with
the gateway id and sequence number, and kept in the store. Nothing that happens to one
message stops the loop.

The MQTT side (:meth:`BatchIngest.serve`, through :meth:`BatchIngest.pipeline`) uses a
shared subscription so several aggregators can share the load, in a persistent session
(fixed ``mqtt.client_id``, ``clean_session=False``, QoS 1): batches published while the
aggregator is down wait at the broker and arrive at its restart. The broker's PUBACK is sent
on receipt (aiomqtt has no manual acknowledgement); what a gateway waits for is our signed
ack, sent after the commit, so a crash in between makes the gateway resend and the batch
deduplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from aggregator.config import AggregatorConfig
from aggregator.errors import KeyRejected, StoreConflict, StoreError
from aggregator.influx import LineProtocolError
from aggregator.influx_writer import batch_line, interval_lines, lines_bytes
from aggregator.plausibility import CounterState, check_intervals, clock_jumped
from aggregator.records import Interval, decode_all_records
from aggregator.registry import GatewayRegistry
from aggregator.store import AcceptedBatch, IngestStore, IntervalRow, Rejection
from aggregator.store.protocols import ChainSessionStore
from aggregator.store.rows import ChainSessionRow, Held
from common.aio import publish
from common.backoff import Backoff
from common.clock import Clock
from common.mqtt import BrokerList, run_reconnecting, subscribe
from common.tls import client_context, read_secret
from evidence.batch import BatchHeader, SealedBatch, header_hash, parse_batch, parse_header, verify_batch
from evidence.chain import ChainStep, ChainTracker, ChainVerdict
from evidence.errors import (
    BadSignature,
    CountMismatch,
    EvidenceError,
    KeyMismatch,
    MalformedMessage,
    MalformedRecord,
    RootMismatch,
)
from evidence.keys import GatewayKey
from evidence.records import SessionRecord
from evidence.wire import (
    Ack,
    Reject,
    RejectReason,
    Reply,
    ack_topic,
    batch_subscription,
    encode_reply,
    gateway_from_topic,
    reject_topic,
)

log = logging.getLogger(__name__)
RunDb = Callable[..., Awaitable[Any]]

_VERIFY_ERRORS: list[tuple[type[EvidenceError], RejectReason]] = [
    (BadSignature, RejectReason.BAD_SIGNATURE),
    (KeyMismatch, RejectReason.KEY_MISMATCH),
    (RootMismatch, RejectReason.MERKLE_MISMATCH),
    (CountMismatch, RejectReason.MALFORMED),
]


@dataclass
class IngestStats:
    """Counters of what ingest did (also logged)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    gaps: int = 0
    reorders: int = 0
    intervals: int = 0
    implausible: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    held: int = 0  # times a batch waited for its predecessor (stored by another aggregator)


class _Refused(Exception):
    """Internal: stop processing this message with a reject reply."""

    def __init__(self, reason: RejectReason, detail: str, header: BatchHeader | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.header = reason, detail, header


@dataclass(eq=False)
class _Staged:
    """One message between staging and its answer (see :meth:`BatchIngest.pipeline`)."""

    gateway: str | None  # None: the topic names no gateway (recorded, not answered)
    gen: int  # the gateway's generation when staged; stale if it moved before the answer
    reply: Reply | None = None  # decided at staging: a refusal or a duplicate's ack
    rejection: Rejection | None = None  # recorded in the store with the group
    accepted: AcceptedBatch | None = None  # to store; answered after the group's commit
    lines: bytes = b""  # its InfluxDB line protocol, built while staging
    header: BatchHeader | None = None
    answer: tuple[str, Reply] | None = None  # the reply and its topic, once decided
    hold_until: float | None = None  # loop time: until then the store may hold it back (order)
    in_order: bool = False  # stored with the store's order check: it decided what was missing
    done: asyncio.Event = field(default_factory=asyncio.Event)


Feed = Callable[[str, bytes], Awaitable[None]]
_RETRY_HELD_S = 0.02  # held batches are tried again this often (or with the next group)
Send = Callable[[str, Reply], Awaitable[None]]


class BatchIngest:
    """Verifies, checks and stores batches; answers with signed replies.

    Two ways in: :meth:`process` takes one message from start to answer (one transaction
    per batch); :meth:`pipeline` (what :meth:`serve` uses) stages message N+1 while the
    store commits the batches before it, and commits the batches waiting at that moment in
    one transaction (group commit: one fsync for the group). Either way a batch is
    acknowledged only after the transaction holding it is durable.

    **Optimistic state.** Staging checks a batch against the chain and counter state
    *including* batches staged before it but not yet committed, and applies its own effect
    at once, so the next batch of the same gateway is checked as if it were stored. If a
    commit fails, that gateway's state is dropped (reloaded from the store when next
    needed) and its generation moves: every answer staged under the old generation that
    depended on the lost batch (a later batch, a duplicate's ack) is turned into an
    ``internal`` reject instead, so the gateway resends it and nothing is acknowledged that
    is not stored. A batch that announces a new key is a barrier: the next message is staged
    only after its commit, since it may be signed by that key.
    """

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        store: IngestStore,
        registry: GatewayRegistry,
        key: GatewayKey,
        clock: Clock,
        run_db: RunDb,
        on_stored: Callable[[int, bytes], None] = lambda batch_id, lines: None,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._key = key
        self._clock = clock
        self._run_db = run_db
        self._on_stored = on_stored
        self._on_progress = on_progress
        self._chains: dict[str, ChainTracker] = {}
        self._counters: dict[str, CounterState] = {}
        self._created: dict[str, tuple[int, int]] = {}  # gateway -> (seq, created_ms) last staged
        self._gen: Counter[str] = Counter()
        self._inflight: Counter[str] = Counter()  # staged, not yet answered, per gateway
        wait = config.ingest.reorder_wait_s
        self._reorder_wait_s = wait if wait is not None else (10.0 if config.store.postgres else 0.0)
        self._held: set[tuple[str, int]] = set()  # (gateway, seq) held back by the store, unanswered
        self.stats = IngestStats()

    # -- the two ways in ---------------------------------------------------------------

    async def process(self, topic: str, payload: bytes) -> tuple[str, Reply] | None:
        """Handle one message alone: stage, commit, answer. The reply and its topic (None when
        the topic names no gateway). Not for use while a :meth:`pipeline` is open."""
        item = await self._stage_safely(topic, payload)
        held = await self._commit_group([item])
        while held:
            await asyncio.sleep(_RETRY_HELD_S)
            held = await self._commit_group(held)
        return item.answer

    @contextlib.asynccontextmanager
    async def pipeline(self, send: Send) -> AsyncIterator[Feed]:
        """Stage messages as they come; commit them in groups; answer each through ``send``.

        ``await feed(topic, payload)`` returns once the message is staged (or waits while
        ``ingest.queue_batches`` are waiting for the store: backpressure). Answers go out in
        arrival order, each after the commit of its group. Leaving the block normally waits
        for every answer; leaving it by an error or a cancellation abandons the unanswered
        ones (never acknowledged, so their gateways resend) and drops the optimistic state.
        """
        settings = self._config.ingest
        queue: asyncio.Queue[_Staged] = asyncio.Queue(settings.queue_batches)

        held: list[_Staged] = []  # taken from the queue, held back by the store: tried again
        none_held = asyncio.Event()
        none_held.set()

        async def commit_forever() -> None:
            nonlocal held
            while True:
                items: list[_Staged] = []
                if held:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_RETRY_HELD_S):
                            items.append(await queue.get())
                else:
                    items.append(await queue.get())
                while len(items) < settings.max_group_batches and not queue.empty():
                    items.append(queue.get_nowait())
                fresh, group = len(items), items + held  # new first: a predecessor may be among them
                held = await self._commit_group(group)
                none_held.clear() if held else none_held.set()
                for item in group:
                    if item.answer is not None and item.done.is_set():
                        await send(*item.answer)
                for _ in range(fresh):
                    queue.task_done()

        async def feed(topic: str, payload: bytes) -> None:
            item = await self._stage_safely(topic, payload)
            await queue.put(item)
            if item.accepted is not None and item.accepted.new_key is not None:
                await item.done.wait()
            else:
                await asyncio.sleep(0)  # staging is CPU: let the committer and the writer move

        finished = False
        try:
            async with asyncio.TaskGroup() as tg:
                committer = tg.create_task(commit_forever(), name="aggregator-commit")
                try:
                    yield feed
                    await queue.join()
                    await none_held.wait()
                    finished = True
                finally:
                    committer.cancel()
        finally:
            if not finished:
                self._forget_all()

    # -- staging -----------------------------------------------------------------------

    async def _stage_safely(self, topic: str, payload: bytes) -> _Staged:
        """:meth:`_stage`, with a bug answered as an ``internal`` reject (and logged)."""
        try:
            return await self._stage(topic, payload)
        except Exception:  # the loop's supervisor: count, answer, go on (the bug is logged)
            log.exception("ingest: internal error on %s (batch #%s)", topic, _best_effort_seq(payload))
            try:
                gateway: str | None = gateway_from_topic(topic)
            except MalformedMessage:
                gateway = None
            item = _Staged(gateway, self._gen[gateway or ""])
            seq = _best_effort_seq(payload)
            digest = header_hash(payload.split(b"\n", 1)[0]) if seq is not None else None
            item.reply = self._internal_reject(gateway, seq, digest)
            return item

    def _internal_reject(self, gateway: str | None, seq: int | None, digest: str | None) -> Reject | None:
        """The answer to a message a bug stopped (counted; None when no gateway can be told),
        naming the batch where known (a gateway takes only a reject bound to a batch it sent)."""
        self.stats.rejected[RejectReason.INTERNAL.value] += 1
        if gateway is None:
            return None
        now_ms = int(self._clock.now() * 1000)
        return Reject(gateway, seq, digest, RejectReason.INTERNAL.value, "internal error", now_ms)

    async def _stage(self, topic: str, payload: bytes) -> _Staged:
        self.stats.received += 1
        now_ms = int(self._clock.now() * 1000)
        try:
            gateway = gateway_from_topic(topic)
        except MalformedMessage as exc:
            return self._refusal(None, _Refused(RejectReason.MALFORMED, str(exc)), payload, now_ms)
        item = _Staged(gateway, self._gen[gateway])
        try:
            await self._check(item, payload, now_ms)
        except _Refused as refused:
            return self._refusal(gateway, refused, payload, now_ms)
        return item

    def _refusal(self, gateway: str | None, r: _Refused, payload: bytes, now_ms: int) -> _Staged:
        h = r.header
        seq = h.seq if h is not None else _best_effort_seq(payload)
        digest = header_hash(payload.split(b"\n", 1)[0]) if seq is not None else None
        self.stats.rejected[r.reason.value] += 1
        level = logging.ERROR if r.reason is RejectReason.FORK else logging.WARNING
        alarm = "ALARM: " if r.reason is RejectReason.FORK else ""
        log.log(
            level, "%sgateway %s batch #%s rejected: %s: %s", alarm, gateway, seq, r.reason.value, r.detail
        )
        kept = payload[: self._config.limits.kept_rejected_bytes]  # a prefix and the whole's hash
        item = _Staged(gateway, self._gen[gateway or ""])
        item.rejection = Rejection(
            gateway, seq, digest, r.reason.value, r.detail, now_ms, kept,
            size=len(payload), data_sha256=hashlib.sha256(payload).hexdigest(),
        )  # fmt: skip
        if gateway is not None:
            item.reply = Reject(gateway, seq, digest, r.reason.value, r.detail[:500], now_ms)
        return item

    async def _check(self, item: _Staged, payload: bytes, now_ms: int) -> None:
        """Verify and check a batch; on acceptance apply its effect to the optimistic state."""
        gateway = item.gateway
        assert gateway is not None
        if len(payload) > self._config.limits.max_batch_bytes:
            raise _Refused(
                RejectReason.TOO_LARGE, f"{len(payload)} bytes > {self._config.limits.max_batch_bytes}"
            )
        try:
            sealed = parse_batch(payload)
        except EvidenceError as exc:
            raise _Refused(RejectReason.MALFORMED, str(exc)) from exc
        h = sealed.header
        if h.gateway != gateway:
            raise _Refused(RejectReason.MALFORMED, f"{h.label} arrived on the topic of {gateway}", h)
        try:
            key = self._registry.key_for(h)
        except KeyRejected as exc:
            raise _Refused(exc.reason, str(exc), h) from exc
        try:
            verified = verify_batch(sealed, key)
        except EvidenceError as exc:
            reason = next((r for t, r in _VERIFY_ERRORS if isinstance(exc, t)), RejectReason.MALFORMED)
            raise _Refused(reason, str(exc), h) from exc
        digest = verified.sealed.header_sha256
        tracker, step = await self._chain_step(h, digest)
        item.header = h
        if step.verdict is ChainVerdict.DUPLICATE:
            self.stats.duplicates += 1
            log.info("gateway %s batch #%s: duplicate, acknowledged again", gateway, h.seq)
            item.reply = Ack(gateway, h.seq, digest, "duplicate", now_ms)
            return
        if step.verdict is ChainVerdict.FORK:
            raise _Refused(RejectReason.FORK, f"{h.label}: {step.reason}", h)
        previous = await self._previous_created(h) if step.verdict is ChainVerdict.APPEND else None
        item.accepted, records = self._prepare(
            sealed, digest, step.verdict.value, step.missing, now_ms, previous
        )
        if self._reorder_wait_s > 0 and h.seq > 1:
            item.hold_until = asyncio.get_running_loop().time() + self._reorder_wait_s
        try:
            item.lines = self._lines(item.accepted, records, h)
        except LineProtocolError as exc:  # stored all the same; the InfluxDB writer parks it
            log.error("%s: cannot be written to InfluxDB: %s", h.label, exc)
        tracker.observe(h, digest)
        self._created[gateway] = (h.seq, h.created_ms)
        self._counter_state(gateway).update(item.accepted.counters)
        self._inflight[gateway] += 1

    def _prepare(
        self,
        sealed: SealedBatch,
        digest: str,
        verdict: str,
        missing: tuple[int, ...],
        now_ms: int,
        previous_created_ms: int | None = None,
    ) -> tuple[AcceptedBatch, list[Interval]]:
        h = sealed.header
        try:
            intervals, drops, rotations, sessions = decode_all_records(sealed)
            new_keys = [
                k for r in rotations if (k := self._registry.rotation_entry(h, r, now_ms)) is not None
            ]
        except MalformedRecord as exc:
            raise _Refused(RejectReason.MALFORMED, str(exc), h) from exc
        if len(new_keys) > 1:
            raise _Refused(RejectReason.MALFORMED, f"{h.label}: more than one key rotation", h)
        records = [r for _, r in intervals]
        issues, moved = check_intervals(
            records,
            meters=self._registry.meters(h.gateway),
            state=self._counter_state(h.gateway),
            created_ms=h.created_ms,
            now_ms=now_ms,
            settings=self._config.plausibility,
            limits=self._config.limits,
            previous_created_ms=previous_created_ms,
        )
        if clock_jumped(previous_created_ms, h.created_ms, self._config.limits):
            log.warning("gateway %s batch #%s: clock jumped: created %+d ms from batch #%s",
                        h.gateway, h.seq, h.created_ms - (previous_created_ms or 0), h.seq - 1)  # fmt: skip
        rows = [
            IntervalRow(i, r.meter, r.quantity, r.start, r.end, found)
            for (i, r), found in zip(intervals, issues, strict=True)
        ]
        accepted = AcceptedBatch(
            gateway=h.gateway, seq=h.seq, header_sha256=digest, prev=h.prev, key_id=h.key_id,
            root=h.root, created_ms=h.created_ms, received_ms=now_ms, count=h.count,
            verdict=verdict, data=sealed.to_bytes(), intervals=rows, missing=missing,
            counters=moved, new_key=new_keys[0] if new_keys else None,
            dropped_seqs=[b.seq for d in drops for b in d.batches],
            chain_sessions=self._chain_sessions(h, sessions),
        )  # fmt: skip
        return accepted, records

    def _chain_sessions(
        self, h: BatchHeader, sessions: list[tuple[int, SessionRecord]]
    ) -> list[ChainSessionRow]:
        """Rows for the batch's OCPP session records, if the store keeps them; otherwise the
        records are kept in the batch bytes only, and the log says so for every such batch."""
        if not sessions:
            return []
        if not isinstance(self._store, ChainSessionStore):
            log.warning("%s: %d OCPP session record(s) kept in the batch bytes only: this evidence store "
                        "(%s) does not index chain sessions yet (docs/ocpp.md)", h.label, len(sessions),
                        type(self._store).__name__)  # fmt: skip
            return []
        return [
            ChainSessionRow(i, r.charger, r.connector, r.meter, r.transaction_id, r.start_time_ms,
                            r.stop_time_ms, r.energy_wh, r.assurance, r.flags)
            for i, r in sessions
        ]  # fmt: skip

    # -- committing and answering ------------------------------------------------------

    async def _commit_group(self, items: list[_Staged]) -> list[_Staged]:
        """Store the group's batches and rejections in one transaction, then decide each answer.
        The batches the store held back (predecessor not stored yet), unanswered, to try again."""
        live = [i for i in items if i.accepted is not None and i.gen == self._gen[i.gateway or ""]]
        rejections = [i.rejection for i in items if i.rejection is not None]
        now = asyncio.get_running_loop().time()
        hold = [n for n, i in enumerate(live) if i.hold_until is not None and now < i.hold_until]
        for n, i in enumerate(live):
            i.in_order = n in hold
        results: list[int | StoreError | Held | None]
        try:
            if live or rejections:
                accepted = [i.accepted for i in live]
                if hold:
                    stored = await self._run_db(self._store.store_group, accepted, rejections, hold=hold)
                else:
                    stored = await self._run_db(self._store.store_group, accepted, rejections)
                results = list(stored)
            else:
                results = []
        except StoreError as exc:
            log.error("ingest: evidence store failed for %d batches: %s", len(live), exc)
            for i in items:
                if i.accepted is not None and i.gateway is not None:
                    self._forget(i.gateway)
            results = [exc] * len(live)
        outcome = dict(zip(map(id, live), results, strict=True))
        waiting: list[_Staged] = []
        for item in items:
            result = outcome.get(id(item))
            key = (item.gateway or "", item.header.seq if item.header is not None else -1)
            if isinstance(result, Held):
                self.stats.held += 1
                self._held.add(key)
                item.lines = b""  # its verdict may change when stored: the writer reads the store's
                waiting.append(item)
                continue
            if item.accepted is not None:
                self._held.discard(key)
            elif isinstance(item.reply, Ack) and key in self._held:
                waiting.append(item)  # a duplicate of a held batch: acknowledged once that is stored
                continue
            try:
                reply = await self._answer(item, result)
            except Exception:  # a bug: answer it, keep going (state reloads from the store)
                log.exception("ingest: internal error answering gateway %s", item.gateway)
                self._forget_all()
                digest = item.accepted.header_sha256 if item.accepted is not None else None
                reply = self._internal_reject(item.gateway, item.header.seq if item.header else None, digest)
            if reply is not None and item.gateway is not None:
                topic = ack_topic(item.gateway) if isinstance(reply, Ack) else reject_topic(item.gateway)
                item.answer = (topic, reply)
            item.done.set()
        self._on_progress()
        return waiting

    async def _answer(self, item: _Staged, result: int | StoreError | None) -> Reply | None:
        gateway, h, a = item.gateway, item.header, item.accepted
        now_ms = int(self._clock.now() * 1000)
        if a is None:
            if isinstance(item.reply, Ack) and gateway is not None and item.gen != self._gen[gateway]:
                # A duplicate of a batch that was staged, not stored, when its commit failed.
                return await self._late_refusal(item, "not acknowledged: an earlier batch of this gateway"
                                                " failed to store; resend", now_ms)  # fmt: skip
            return item.reply
        assert gateway is not None and h is not None
        self._inflight[gateway] = max(0, self._inflight[gateway] - 1)  # 0 after a _forget_all
        if isinstance(result, int):
            self._after_commit(a, item.lines, h, result, item.in_order)
            return Ack(gateway, h.seq, a.header_sha256, "stored", now_ms)
        if isinstance(result, StoreConflict):
            # Another aggregator stored this seq meanwhile: the chain decides what we saw.
            self._forget(gateway)
            _, step = await self._chain_step(h, a.header_sha256)
            if step.verdict is ChainVerdict.DUPLICATE:
                self.stats.duplicates += 1
                return Ack(gateway, h.seq, a.header_sha256, "duplicate", now_ms)
            return await self._late_refusal(
                item, "another batch was stored for this seq", now_ms, RejectReason.FORK
            )
        if isinstance(result, StoreError):
            return await self._late_refusal(item, f"evidence store failed: {result}", now_ms)
        return await self._late_refusal(
            item, "not stored: an earlier batch of this gateway failed to store; resend", now_ms
        )

    async def _late_refusal(
        self, item: _Staged, detail: str, now_ms: int, reason: RejectReason = RejectReason.INTERNAL
    ) -> Reject:
        """A refusal decided after the commit: logged, counted and recorded on its own."""
        h = item.header
        assert item.gateway is not None and h is not None
        data = b"" if item.accepted is None else item.accepted.data
        refused = self._refusal(item.gateway, _Refused(reason, f"{h.label}: {detail}", h), data, now_ms)
        assert refused.rejection is not None and isinstance(refused.reply, Reject)
        try:
            await self._run_db(self._store.record_rejection, refused.rejection)
        except StoreError as exc:
            log.error("gateway %s batch #%s: rejection not recorded: %s", item.gateway, h.seq, exc)
        return refused.reply

    def _after_commit(
        self, a: AcceptedBatch, lines: bytes, h: BatchHeader, batch_id: int, in_order: bool = False
    ) -> None:
        if a.new_key is not None:
            self._registry.added(a.new_key)
            log.warning("gateway %s: key %s announced, valid from seq %s", h.gateway, a.new_key.key_id,
                        a.new_key.valid_from_seq)  # fmt: skip
        s = self.stats
        s.stored += 1
        s.intervals += len(a.intervals)
        implausible = sum(1 for r in a.intervals if r.issues)
        s.implausible += implausible
        if a.verdict == ChainVerdict.GAP.value and in_order:  # its predecessor was stored first
            log.debug("gateway %s batch #%s: stored after its predecessor (missing at staging: %s)",
                      h.gateway, h.seq, list(a.missing))  # fmt: skip
        elif a.verdict == ChainVerdict.GAP.value:
            s.gaps += 1
            log.warning("gateway %s batch #%s: gap, missing %s", h.gateway, h.seq, list(a.missing))
        elif a.verdict == ChainVerdict.REORDER.value:
            s.reorders += 1
        self._on_stored(batch_id, lines)  # none (held, or no line protocol): a wake-up for the writer

    def _lines(self, a: AcceptedBatch, records: list[Interval], h: BatchHeader) -> bytes:
        """The batch's line protocol, from the records already decoded (the writer's fast path)."""
        implausible = sum(1 for row in a.intervals if row.issues)
        m = self._config.influx.measurement
        lines = interval_lines(
            m, a.gateway, a.seq,
            ((row.index, r, row.issues) for row, r in zip(a.intervals, records, strict=True)),
        )  # fmt: skip
        lines.append(batch_line(self._config.influx.batch_measurement, h, a.verdict, implausible))
        return lines_bytes(lines)

    # -- chain and counter state -------------------------------------------------------

    async def _chain_step(self, h: BatchHeader, digest: str) -> tuple[ChainTracker, ChainStep]:
        gateway = h.gateway
        tracker = self._chains.get(gateway)
        if tracker is None:
            tracker = self._chains[gateway] = await self._load_chain(gateway)
        step = tracker.check(h, digest)
        if step.verdict is ChainVerdict.GAP and not self._inflight[gateway]:
            # Maybe stored meanwhile by another aggregator. (With batches of this gateway in
            # flight, the store is behind our own state: keep it; the store does not record
            # a gap for a seq it holds.)
            tracker = self._chains[gateway] = await self._load_chain(gateway)
            step = tracker.check(h, digest)
        return tracker, step

    async def _load_chain(self, gateway: str) -> ChainTracker:
        tracker = ChainTracker()
        for seq, digest, prev in await self._run_db(self._store.chain_links, gateway):
            tracker.observe(BatchHeader(gateway, "", seq, prev, 0, 0, ""), digest)
        return tracker

    async def _previous_created(self, h: BatchHeader) -> int | None:
        """created_ms of the batch before ``h`` in the chain (staged or stored), if known."""
        last = self._created.get(h.gateway)
        if last is not None and last[0] == h.seq - 1:
            return last[1]
        created: int | None = await self._run_db(self._store.batch_created_ms, h.gateway, h.seq - 1)
        return created

    def _counter_state(self, gateway: str) -> CounterState:
        state = self._counters.get(gateway)
        if state is None:
            state = self._counters[gateway] = self._store.counter_state(gateway)
        return state

    def _forget(self, gateway: str) -> None:
        """Drop a gateway's optimistic state; answers staged on it become stale."""
        self._gen[gateway] += 1
        self._chains.pop(gateway, None)
        self._counters.pop(gateway, None)
        self._created.pop(gateway, None)

    def _forget_all(self) -> None:
        for gateway in set(self._chains) | set(self._counters) | set(self._inflight):
            self._forget(gateway)
        self._inflight.clear()

    # -- MQTT ----------------------------------------------------------------------------

    async def serve(self, on_connected: Callable[[], None] = lambda: None) -> None:
        """Subscribe and process batches forever, reconnecting with jittered backoff (on the
        injected clock). The session is persistent: what the broker queued for
        ``mqtt.client_id`` while we were away arrives first."""
        mqtt = self._config.mqtt
        tls = None if mqtt.tls is None else client_context(mqtt.tls, "mqtt.tls")
        password = None if mqtt.password is None else read_secret(mqtt.password, "mqtt.password")

        brokers = BrokerList.of(mqtt.host, mqtt.port, mqtt.failover)

        def connect() -> aiomqtt.Client:
            return aiomqtt.Client(
                brokers.current.host, brokers.current.port, identifier=mqtt.client_id,
                clean_session=False, tls_context=tls, username=mqtt.username, password=password,
                keepalive=mqtt.keepalive_s,
            )  # fmt: skip

        await run_reconnecting(
            connect, lambda client: self._session(client, on_connected),
            backoff=Backoff(mqtt.reconnect_initial_s, mqtt.reconnect_max_s),
            name=f"ingest: MQTT {brokers}", sleep=self._clock.sleep, brokers=brokers,
        )  # fmt: skip

    async def _session(self, client: aiomqtt.Client, on_connected: Callable[[], None]) -> None:
        async def send(topic: str, reply: Reply) -> None:
            await publish(client, topic, encode_reply(reply, self._key), qos=1)

        mqtt = self._config.mqtt
        await subscribe(client, batch_subscription(mqtt.share_group), qos=1)
        log.info("ingest: subscribed to %s on %s:%s as %s", batch_subscription(mqtt.share_group),
                 mqtt.host, mqtt.port, mqtt.client_id)  # fmt: skip
        on_connected()
        async with self.pipeline(send) as feed:
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                await feed(str(message.topic), data)


def _best_effort_seq(payload: bytes) -> int | None:
    """The sequence number of a batch that failed to parse, when its header still parses."""
    try:
        return parse_header(payload.split(b"\n", 1)[0]).seq
    except EvidenceError:
        return None
