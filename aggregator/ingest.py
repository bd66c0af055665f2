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
8. one durable transaction in the store; only then the signed ack (``stored``).

Every refusal is answered on the gateway's reject topic, counted by reason, logged with
the gateway id and sequence number, and kept in the store. Nothing that happens to one
message stops the loop.

The MQTT side (:meth:`BatchIngest.serve`) uses a shared subscription so several
aggregators can share the load. The broker's PUBACK is sent on receipt (aiomqtt has no
manual acknowledgement); what a gateway waits for is our signed ack, sent after the
commit, so a crash in between makes the gateway resend and the batch deduplicate.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from aggregator.config import AggregatorConfig
from aggregator.errors import KeyRejected, StoreConflict, StoreError
from aggregator.influx_writer import batch_line, interval_lines, lines_bytes
from aggregator.plausibility import CounterState, check_intervals
from aggregator.records import Interval, decode_records
from aggregator.registry import GatewayRegistry
from aggregator.store import AcceptedBatch, EvidenceStore, IntervalRow, Rejection
from evidence.batch import BatchHeader, SealedBatch, header_hash, parse_batch, parse_header, verify_batch
from evidence.chain import ChainTracker, ChainVerdict
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
from puhui.aio import publish
from puhui.clock import Clock

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


class _Refused(Exception):
    """Internal: stop processing this message with a reject reply."""

    def __init__(self, reason: RejectReason, detail: str, header: BatchHeader | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.header = reason, detail, header


class BatchIngest:
    """Verifies, checks and stores batches; answers with signed replies."""

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        store: EvidenceStore,
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
        self.stats = IngestStats()

    # -- one message -------------------------------------------------------------------

    async def process(self, topic: str, payload: bytes) -> tuple[str, Reply] | None:
        """Handle one message; the reply and its topic (None when the topic names no gateway)."""
        self.stats.received += 1
        now_ms = int(self._clock.now() * 1000)
        try:
            gateway = gateway_from_topic(topic)
        except MalformedMessage as exc:
            await self._refuse(None, _Refused(RejectReason.MALFORMED, str(exc)), payload, now_ms)
            return None
        try:
            reply: Reply = await self._accept(gateway, payload, now_ms)
        except _Refused as refused:
            reply = await self._refuse(gateway, refused, payload, now_ms)
        finally:
            self._on_progress()
        return (ack_topic(gateway) if isinstance(reply, Ack) else reject_topic(gateway)), reply

    async def _refuse(self, gateway: str | None, r: _Refused, payload: bytes, now_ms: int) -> Reject:
        h = r.header
        seq = h.seq if h is not None else _best_effort_seq(payload)
        digest = header_hash(payload.split(b"\n", 1)[0]) if h is not None else None
        self.stats.rejected[r.reason.value] += 1
        level = logging.ERROR if r.reason is RejectReason.FORK else logging.WARNING
        alarm = "ALARM: " if r.reason is RejectReason.FORK else ""
        log.log(
            level, "%sgateway %s batch #%s rejected: %s: %s", alarm, gateway, seq, r.reason.value, r.detail
        )
        kept = (
            payload[: self._config.limits.kept_rejected_bytes]
            if r.reason is RejectReason.TOO_LARGE
            else payload
        )
        rejection = Rejection(gateway, seq, digest, r.reason.value, r.detail, now_ms, kept)
        try:
            await self._run_db(self._store.record_rejection, rejection)
        except StoreError as exc:
            log.error("gateway %s batch #%s: rejection not recorded: %s", gateway, seq, exc)
        return Reject(gateway or "", seq, digest, r.reason.value, r.detail[:500], now_ms)

    async def _accept(self, gateway: str, payload: bytes, now_ms: int) -> Ack:
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
        step = await self._chain_step(h, digest)
        if step.verdict is ChainVerdict.DUPLICATE:
            self.stats.duplicates += 1
            log.info("gateway %s batch #%s: duplicate, acknowledged again", gateway, h.seq)
            return Ack(gateway, h.seq, digest, "duplicate", now_ms)
        if step.verdict is ChainVerdict.FORK:
            raise _Refused(RejectReason.FORK, f"{h.label}: {step.reason}", h)
        accepted, records = self._prepare(sealed, digest, step.verdict.value, step.missing, now_ms)
        return await self._commit(accepted, records, h, digest, now_ms)

    def _prepare(
        self, sealed: SealedBatch, digest: str, verdict: str, missing: tuple[int, ...], now_ms: int
    ) -> tuple[AcceptedBatch, list[Interval]]:
        h = sealed.header
        try:
            intervals, drops, rotations = decode_records(sealed)
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
        )
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
        )  # fmt: skip
        return accepted, records

    async def _commit(
        self, accepted: AcceptedBatch, records: list[Interval], h: BatchHeader, digest: str, now_ms: int
    ) -> Ack:
        try:
            batch_id: int = await self._run_db(self._store.store_batch, accepted)
        except StoreConflict:
            # Another aggregator stored this seq meanwhile: the chain decides what we saw.
            self._chains.pop(h.gateway, None)
            self._counters.pop(h.gateway, None)
            step = await self._chain_step(h, digest)
            if step.verdict is ChainVerdict.DUPLICATE:
                self.stats.duplicates += 1
                return Ack(h.gateway, h.seq, digest, "duplicate", now_ms)
            raise _Refused(
                RejectReason.FORK, f"{h.label}: another batch was stored for this seq", h
            ) from None
        except StoreError as exc:
            raise _Refused(RejectReason.INTERNAL, f"{h.label}: evidence store failed: {exc}", h) from exc
        self._after_commit(accepted, records, h, digest, batch_id)
        return Ack(h.gateway, h.seq, digest, "stored", now_ms)

    def _after_commit(
        self, a: AcceptedBatch, records: list[Interval], h: BatchHeader, digest: str, batch_id: int
    ) -> None:
        self._chains[h.gateway].observe(h, digest)
        self._counter_state(h.gateway).update(a.counters)
        if a.new_key is not None:
            self._registry.added(a.new_key)
            log.warning("gateway %s: key %s announced, valid from seq %s", h.gateway, a.new_key.key_id,
                        a.new_key.valid_from_seq)  # fmt: skip
        s = self.stats
        s.stored += 1
        s.intervals += len(a.intervals)
        implausible = sum(1 for r in a.intervals if r.issues)
        s.implausible += implausible
        if a.verdict == ChainVerdict.GAP.value:
            s.gaps += 1
            log.warning("gateway %s batch #%s: gap, missing %s", h.gateway, h.seq, list(a.missing))
        elif a.verdict == ChainVerdict.REORDER.value:
            s.reorders += 1
        self._on_stored(batch_id, self._lines(a, records, h, implausible))

    def _lines(
        self, a: AcceptedBatch, records: list[Interval], h: BatchHeader, implausible: int
    ) -> bytes:
        """The batch's line protocol, from the dicts already decoded (the writer's fast path)."""
        m = self._config.influx.measurement
        lines = interval_lines(
            m, a.gateway, a.seq, a.verdict,
            ((row.index, r, row.issues) for row, r in zip(a.intervals, records, strict=True)),
        )  # fmt: skip
        lines.append(batch_line(self._config.influx.batch_measurement, h, a.verdict, implausible))
        return lines_bytes(lines)

    async def _chain_step(self, h: BatchHeader, digest: str) -> Any:
        tracker = self._chains.get(h.gateway)
        if tracker is None:
            tracker = self._chains[h.gateway] = await self._load_chain(h.gateway)
        step = tracker.check(h, digest)
        if step.verdict is ChainVerdict.GAP:  # maybe stored meanwhile by another aggregator
            tracker = self._chains[h.gateway] = await self._load_chain(h.gateway)
            step = tracker.check(h, digest)
        return step

    async def _load_chain(self, gateway: str) -> ChainTracker:
        tracker = ChainTracker()
        for seq, digest, prev in await self._run_db(self._store.chain_links, gateway):
            tracker.observe(BatchHeader(gateway, "", seq, prev, 0, 0, ""), digest)
        return tracker

    def _counter_state(self, gateway: str) -> CounterState:
        state = self._counters.get(gateway)
        if state is None:
            state = self._counters[gateway] = self._store.counter_state(gateway)
        return state

    # -- MQTT ----------------------------------------------------------------------------

    async def serve(self, on_connected: Callable[[], None] = lambda: None) -> None:
        """Subscribe and process batches forever, reconnecting with jittered backoff."""
        mqtt = self._config.mqtt
        delay = mqtt.reconnect_initial_s
        while True:
            try:
                async with aiomqtt.Client(
                    mqtt.host, mqtt.port, identifier=mqtt.client_id, username=mqtt.username,
                    password=mqtt.password, keepalive=mqtt.keepalive_s,
                ) as client:  # fmt: skip
                    await client.subscribe(batch_subscription(mqtt.share_group), qos=1)
                    log.info("ingest: subscribed to %s on %s:%s", batch_subscription(mqtt.share_group),
                             mqtt.host, mqtt.port)  # fmt: skip
                    delay = mqtt.reconnect_initial_s
                    on_connected()
                    async for message in client.messages:
                        await self._handle(client, str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "ingest: MQTT %s:%s: %s; reconnecting in %.1f s", mqtt.host, mqtt.port, exc, delay
                )
                await self._clock.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, mqtt.reconnect_max_s)

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else str(payload).encode()
        try:
            answer = await self.process(topic, data)
        except Exception:  # the loop's supervisor: count, answer, go on (the bug is logged)
            log.exception("ingest: internal error on %s (batch #%s)", topic, _best_effort_seq(data))
            self.stats.rejected[RejectReason.INTERNAL.value] += 1
            answer = self._internal_error(topic, data)
        if answer is not None:
            reply_topic, reply = answer
            await publish(client, reply_topic, encode_reply(reply, self._key), qos=1)

    def _internal_error(self, topic: str, data: bytes) -> tuple[str, Reply] | None:
        try:
            gateway = gateway_from_topic(topic)
        except MalformedMessage:
            return None
        now_ms = int(self._clock.now() * 1000)
        reject = Reject(
            gateway, _best_effort_seq(data), None, RejectReason.INTERNAL.value, "internal error", now_ms
        )
        return reject_topic(gateway), reject


def _best_effort_seq(payload: bytes) -> int | None:
    """The sequence number of a batch that failed to parse, when its header still parses."""
    try:
        return parse_header(payload.split(b"\n", 1)[0]).seq
    except EvidenceError:
        return None
