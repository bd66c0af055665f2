"""Store-and-forward uplink over MQTT (aiomqtt): batches out, signed acks and rejects in.

Protocol (topics from :mod:`evidence.wire`)::

    gateway -> puhui/v1/<gw>/batch    the exact batch bytes from the outbox, QoS 1
    gateway <- puhui/v1/<gw>/ack      {seq, header_sha256, status stored|duplicate}, signed
    gateway <- puhui/v1/<gw>/reject   {seq, header_sha256, reason, detail}, signed

- Up to ``inflight`` batches are published and waiting for their ack at once, oldest
  first. A batch without an ack after ``resend_after_s`` is published again; on every new
  connection everything unacknowledged is sent again (the aggregator acks a duplicate).
- A batch leaves the outbox only on an ack that verifies with the configured aggregator
  key and names its exact ``(seq, header_sha256)``. Replies that do not verify, or name
  another gateway, are ignored, logged and counted (``forged_replies``); valid acks that
  match nothing in the outbox are counted (``unmatched_acks``).
- A reject counts only if it answers a batch in flight: its ``(seq, header_sha256)`` name
  the batch as published and its ``at_ms`` is later than any reject already taken for that
  seq. Anything else (garbage someone else published on our batch topic, a captured reject
  replayed) is ignored and counted (``unmatched_rejects``): it can neither pause nor hold.
- A reject is logged at ERROR with gateway, seq and reason and the batch is kept. Reasons
  that concern the gateway as a whole and can be fixed at the other end
  (``RejectReason.retry``: not enrolled, unknown key, internal error) pause all sending
  with backoff; the others hold back only that batch, with four times that backoff.
- The connection is retried with jittered exponential backoff; TLS (system or given CA),
  username + password file and client certificates are configurable.

Timing here is wall time (``loop.time()``): the broker and the network do not run on the
simulated clock. The injected clock only stamps events (acks, rejects, sends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from common.aio import publish
from common.clock import Clock
from common.mqtt import BrokerList, run_reconnecting, subscribe
from common.tls import SecretError, client_context
from evidence.errors import EvidenceError
from evidence.keys import PublicKey, key_id, load_public_key
from evidence.wire import Ack, Reject, RejectReason, ack_topic, batch_topic, decode_reply, reject_topic
from gateway.errors import UplinkSetupError
from gateway.evidence_config import UplinkSettings
from gateway.store import EvidenceStore

log = logging.getLogger(__name__)


def client_identifier(gateway: str) -> str:
    """A fresh MQTT client id per connection: ``puhui-gw-<id>-<random>``. A predictable id lets
    any client of the broker knock the gateway off by connecting with it (the broker closes
    the older session); the uplink's session is clean, so nothing depends on the id."""
    return f"puhui-gw-{gateway}-{secrets.token_hex(4)}"[-64:]


NON_RETRY_FACTOR = 4.0  # batch-specific rejects wait this much longer than gateway-wide ones


@dataclass
class UplinkCounts:
    """Since this process started; exported by the pipeline's status()."""

    published: int = 0
    resends: int = 0
    acks: int = 0
    rejects: int = 0
    forged_replies: int = 0
    unmatched_acks: int = 0
    unmatched_rejects: int = 0  # rejects that answer no batch in flight, or replayed: ignored
    connects: int = 0
    disconnects: int = 0


@dataclass
class _InFlight:
    header_sha256: str
    sent_at: float  # loop.time()


class Uplink:
    """Sends the outbox of one gateway; ``run()`` until cancelled."""

    def __init__(
        self,
        settings: UplinkSettings,
        store: EvidenceStore,
        *,
        gateway_id: str,
        clock: Clock,
        aggregator_key: PublicKey,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._s, self._store, self._gateway, self._clock = settings, store, gateway_id, clock
        self._aggregator_key = aggregator_key
        self._password, self._tls = password, tls_context
        rng = rng or random.Random()
        self._reconnect = settings.reconnect.backoff(rng)
        self._brokers = BrokerList.of(settings.host, settings.port, settings.failover)
        self._reject_backoff = settings.reject_backoff.backoff(rng)
        self._topics = (batch_topic(gateway_id), ack_topic(gateway_id), reject_topic(gateway_id))
        self._work = asyncio.Event()
        self._inflight: dict[int, _InFlight] = {}
        self._held: dict[int, float] = {}  # seq -> loop time before which it is not resent
        self._paused_until = 0.0
        self._reject_streak = 0
        self.counts = UplinkCounts()
        self.connected = False
        self.last_reject: str | None = None
        self.last_ack_at: float | None = None  # clock time

    @classmethod
    def from_settings(
        cls, settings: UplinkSettings, store: EvidenceStore, *, gateway_id: str, clock: Clock
    ) -> Uplink:
        """Read the aggregator key, password and TLS files named in ``settings``."""
        key_path = Path(settings.aggregator_public_key)
        try:
            aggregator_key = load_public_key(key_path.read_bytes())
        except (OSError, EvidenceError) as exc:
            raise UplinkSetupError(f"uplink.aggregator_public_key: {key_path}: {exc}") from exc
        password = None
        if settings.password_file is not None:
            try:
                password = Path(settings.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise UplinkSetupError(f"uplink.password_file: {exc}") from exc
        return cls(settings, store, gateway_id=gateway_id, clock=clock, aggregator_key=aggregator_key,
                   password=password, tls_context=_tls_context(settings))  # fmt: skip

    def wake(self) -> None:
        """A batch was sealed: send it if the window allows."""
        self._work.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- connection -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, send and receive; reconnect with backoff on every connection loss."""
        name = f"uplink {self._gateway} to {self._brokers}"
        await run_reconnecting(self._client, self._session, backoff=self._reconnect, name=name,
                               on_lost=self._connection_lost, brokers=self._brokers)  # fmt: skip

    async def _connection_lost(self, error: aiomqtt.MqttError, delay: float) -> None:
        if self.connected:
            self.counts.disconnects += 1
        self.connected = False

    def _client(self) -> aiomqtt.Client:
        s, broker = self._s, self._brokers.current
        return aiomqtt.Client(
            broker.host,
            broker.port,
            username=s.username,
            password=self._password,
            identifier=s.client_id or client_identifier(self._gateway),
            clean_session=True,
            keepalive=s.keepalive_s,
            tls_context=self._tls,
            max_inflight_messages=max(20, s.inflight),
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        _, acks, rejects = self._topics
        await subscribe(client, acks, qos=1)
        await subscribe(client, rejects, qos=1)
        self.connected = True
        self.counts.connects += 1
        self._inflight.clear()  # a new connection: resend everything not acknowledged
        log.info("uplink %s connected to %s", self._gateway, self._brokers.current)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._send_loop(client), name=f"uplink-send-{self._gateway}")
            group.create_task(self._receive_loop(client), name=f"uplink-receive-{self._gateway}")

    # -- sending -----------------------------------------------------------------------------

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._work.clear()
            now = loop.time()
            self._expire(now)
            if now >= self._paused_until:
                await self._publish_window(client, now)
            await self._wait_for_work(self._next_deadline(loop.time()))

    async def _publish_window(self, client: aiomqtt.Client, now: float) -> None:
        free = self._s.inflight - len(self._inflight)
        if free <= 0:
            return
        held = [seq for seq, until in self._held.items() if until > now]
        for seq, digest, data in self._store.next_to_send([*self._inflight, *held], free):
            if seq in self._held:
                del self._held[seq]
                self.counts.resends += 1
            self._inflight[seq] = _InFlight(digest, now)
            await publish(client, self._topics[0], data, qos=1)
            self.counts.published += 1
            self._store.mark_sent(seq, self._now_ms())

    def _expire(self, now: float) -> None:
        late = [seq for seq, f in self._inflight.items() if now - f.sent_at >= self._s.resend_after_s]
        for seq in late:
            del self._inflight[seq]
            self.counts.resends += 1
            log.info("uplink %s: no ack for seq %d after %.0f s; sending it again",
                     self._gateway, seq, self._s.resend_after_s)  # fmt: skip

    def _next_deadline(self, now: float) -> float | None:
        """The earliest future moment something becomes due: a resend, a held batch, the
        end of a pause (past ones are due already and wait for a free slot, i.e. an ack)."""
        times = [f.sent_at + self._s.resend_after_s for f in self._inflight.values()]
        times += [*self._held.values(), self._paused_until]
        future = [t for t in times if t > now]
        return min(future) if future else None

    async def _wait_for_work(self, deadline: float | None) -> None:
        if deadline is None:
            await self._work.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._work.wait()

    # -- receiving ---------------------------------------------------------------------------

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            self.on_reply(str(message.topic), data)

    def on_reply(self, topic: str, data: bytes) -> None:
        """Handle one message from the ack or reject topic."""
        try:
            reply = decode_reply(data, self._aggregator_key)
        except EvidenceError as exc:
            self._forged(topic, f"does not verify with aggregator key {key_id(self._aggregator_key)}: {exc}")
            return
        if reply.gateway != self._gateway or topic != self._topics[1 if isinstance(reply, Ack) else 2]:
            self._forged(topic, f"a {reply.type} for gateway {reply.gateway!r} on the wrong topic")
            return
        if isinstance(reply, Ack):
            self._on_ack(reply)
        else:
            self._on_reject(reply)
        self._work.set()

    def _forged(self, topic: str, why: str) -> None:
        self.counts.forged_replies += 1
        log.warning("uplink %s: ignored a reply on %s: %s", self._gateway, topic, why)

    def _on_ack(self, ack: Ack) -> None:
        flight = self._inflight.get(ack.seq)
        if ack.status in ("stored", "duplicate") and self._store.ack(
            ack.seq, ack.header_sha256, self._now_ms()
        ):
            self.counts.acks += 1
            self._inflight.pop(ack.seq, None)
            self._held.pop(ack.seq, None)
            self._reject_streak = 0
            self.last_ack_at = self._clock.now()
            return
        if flight is not None and flight.header_sha256 == ack.header_sha256:
            self._inflight.pop(ack.seq)
        self.counts.unmatched_acks += 1
        log.warning("uplink %s: ack %s for seq %d header %s… matches no batch in the outbox",
                    self._gateway, ack.status, ack.seq, ack.header_sha256[:16])  # fmt: skip

    def _answers_a_flight(self, reject: Reject) -> bool:
        """Whether ``reject`` answers a batch we have in flight, and is not a replay."""
        seq = reject.seq
        flight = None if seq is None else self._inflight.get(seq)
        if seq is None or flight is None or reject.header_sha256 != flight.header_sha256:
            return False
        taken = self._store.delivery(seq)  # the last reject taken for it, kept across restarts
        last = None if taken is None else taken["last_reject_ms"]
        return last is None or reject.at_ms > last

    def _on_reject(self, reject: Reject) -> None:
        if not self._answers_a_flight(reject):
            self.counts.unmatched_rejects += 1
            log.warning("uplink %s: ignored a reject (seq %s, %s) that answers no batch in flight",
                        self._gateway, reject.seq, reject.reason)  # fmt: skip
            return
        assert reject.seq is not None
        self.counts.rejects += 1
        reason = RejectReason(reject.reason)
        self.last_reject = f"seq {reject.seq}: {reason.value}: {reject.detail}"
        log.error("BATCH REJECTED by the aggregator: gateway %s seq %s reason %s: %s; kept for retry",
                  self._gateway, reject.seq, reason.value, reject.detail)  # fmt: skip
        now = asyncio.get_running_loop().time()
        self._inflight.pop(reject.seq, None)
        rejects = self._store.record_reject(
            reject.seq, reason.value, reject.at_ms
        )  # its own time: a replay is older
        if reason.retry:
            self._reject_streak += 1
            self._paused_until = now + self._reject_backoff.delay(self._reject_streak - 1)
        else:
            delay = NON_RETRY_FACTOR * self._reject_backoff.delay((rejects or 1) - 1)
            self._held[reject.seq] = now + delay

    def _now_ms(self) -> int:
        return round(self._clock.now() * 1000)


def _tls_context(settings: UplinkSettings) -> ssl.SSLContext | None:
    if settings.tls is None:
        return None
    try:
        return client_context(settings.tls, "uplink.tls")  # names the file; refuses a key others read
    except SecretError as exc:
        raise UplinkSetupError(str(exc)) from exc
