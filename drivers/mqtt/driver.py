"""MQTT driver on aiomqtt: one broker connection serving several meters.

:class:`MqttSubscriber` subscribes (QoS 1) to every meter's topic filter (wildcards
allowed), routes each message to the meters whose filter matches it, maps JSON fields to
quantities with the simple paths of :class:`~drivers.mqtt.config.MqttField` and hands the
samples to a sink (e.g. ``IntervalBuilder.add_many``)::

    async with MqttSubscriber(connection, [("boiler-2", source)], builder.add_many, clock) as sub:
        await sub.wait_until(lambda health: health["boiler-2"].samples >= 3)

Per message and meter:

- Sample time: the payload's timestamp (:class:`~drivers.mqtt.config.MqttTimestamp`), or
  the clock's time of receipt when ``time`` is unset. A payload timestamp further than
  ``max_skew_s`` from ``clock.now()`` rejects the whole message (counted in ``skewed``); it
  is never moved. ISO 8601 times without an offset are in the configured ``tz`` (default
  UTC); in a zone with summer time, a time in the repeated autumn hour is read as its first
  occurrence (a message from the second one is then an hour off and rejected as skewed).
- Malformed payloads (not JSON, not an object, a missing path, a value that is not a
  number, NaN or infinity, an unreadable timestamp) are counted once per message in
  ``malformed`` and logged with the topic and the reasons; they never stop the driver.
  A problem with one field does not drop the other fields of the message. NaN and infinity
  still become samples carrying an :class:`~drivers.modbus.decode.Invalid` value (as a Modbus
  float NaN does), so the interval builder flags the interval; strings, booleans and
  missing fields give no sample.
  Payloads larger than :data:`MAX_PAYLOAD_BYTES` are refused unread, JSON nested deeper
  than the interpreter can parse is malformed, and an integer literal of any length is
  read as a float (one too large for a float is infinite): no payload can raise out of
  the subscriber and stop the gateway's other drivers.

Broker loss: reconnect with jittered exponential backoff in *wall* seconds (a broker is a
real server; simulated time must not stretch or shrink its retry pacing). With an explicit
``client_id`` the session is persistent (``clean_session=False``), so the broker keeps
QoS 1 messages published while the gateway was away (not across a broker restart without
persistence); without one, each connection gets a fresh random id and a clean session.

Overlapping filters: only filters not covered by another meter's filter are subscribed
(``a/#`` covers ``a/b``), so a message is delivered once and routed to every matching meter.
Two filters that only partly overlap (``a/+/c`` and ``a/b/+``) are both subscribed; a
broker may then deliver a message matching both twice (Mosquitto 2 delivers it once).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import math
import random
import re
import ssl
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from common.backoff import Backoff
from common.clock import Clock
from common.mqtt import run_reconnecting
from common.tls import SecretError, TlsSettings, client_context
from drivers.contract import Invalid, Sample
from drivers.errors import DriverError
from drivers.mqtt.config import MqttConnection, MqttField, MqttSource, MqttTimestamp

log = logging.getLogger(__name__)

SOURCE_PAYLOAD = "mqtt:payload"
SOURCE_RECEIPT = "mqtt:receipt"
QOS = 1
# A meter's reading is a few hundred bytes (Tasmota SENSOR about 300, a Shelly status a few
# KiB); parsing megabytes would stall the event loop every other driver runs on.
MAX_PAYLOAD_BYTES = 256 * 1024

Sink = Callable[[Sequence[Sample]], object]
PathStep = str | int
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[[0-9]+\])*)")
_INDEX = re.compile(r"\[([0-9]+)\]")


class MqttCredentialsError(DriverError):
    """The broker password file, or a TLS certificate or key, named in the config cannot be
    used (a config error)."""


class PayloadError(ValueError):
    """Why a value cannot be taken from a payload (the message names the path)."""


# -- payloads (pure) ------------------------------------------------------------------


def parse_path(path: str) -> tuple[PathStep, ...]:
    """``"ch[0].p"`` -> ``("ch", 0, "p")``. The config model has validated the syntax."""
    steps: list[PathStep] = []
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ValueError(f"{path!r} is not a JSON path like data.energy.import or ch[0].p")
        steps.append(match[1])
        steps.extend(int(i) for i in _INDEX.findall(match[2]))
    return tuple(steps)


def lookup(document: object, path: str) -> object:
    """The value at ``path`` in a decoded JSON document; :class:`PayloadError` if absent."""
    node = document
    for step in parse_path(path):
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise PayloadError(f"{path}: no item [{step}]")
        elif not isinstance(node, dict) or step not in node:
            raise PayloadError(f"{path}: no key {step!r}")
        node = node[step]  # type: ignore[index]
    return node


def number_at(document: object, path: str) -> float:
    """The number at ``path`` (may be NaN or infinite); :class:`PayloadError` if none."""
    value = lookup(document, path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{path}: {_describe(value)} is not a number")
    try:
        return float(value)
    except OverflowError:  # an int built elsewhere (decode_payload reads integers as floats)
        return math.copysign(math.inf, value)


def field_value(document: object, field: MqttField) -> float | Invalid:
    """The scaled value of ``field``; NaN/infinity (before or after scaling) come back as
    :class:`Invalid`."""
    raw = number_at(document, field.path)
    if math.isnan(raw):
        return Invalid("nan", field.path)
    value = raw * field.scale
    if math.isinf(value):
        return Invalid("infinite", field.path)
    return value


def timestamp_of(document: object, spec: MqttTimestamp) -> float:
    """POSIX seconds of the payload's timestamp; :class:`PayloadError` if unreadable."""
    if spec.format == "iso8601":
        text = lookup(document, spec.path)
        if not isinstance(text, str):
            raise PayloadError(f"{spec.path}: {_describe(text)} is not an ISO 8601 time")
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError as exc:
            raise PayloadError(f"{spec.path}: {text!r} is not an ISO 8601 time") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zoneinfo.ZoneInfo(spec.tz))  # cached by zoneinfo
        return parsed.timestamp()
    value = number_at(document, spec.path)
    if not math.isfinite(value):
        raise PayloadError(f"{spec.path}: timestamp {value} is not finite")
    return value / 1000.0 if spec.format == "epoch_ms" else value


def decode_payload(payload: bytes) -> dict[str, Any]:
    """The JSON object of a payload; :class:`PayloadError` if it is not one.

    Whatever the bytes, only :class:`PayloadError` comes out: a payload over
    :data:`MAX_PAYLOAD_BYTES` is not parsed; nesting too deep for the parser's recursion
    (``[`` x 100000) is caught; integer literals become floats, so a 5000-digit number is
    infinity, not the ``ValueError`` of Python's int-to-string digit limit.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{len(payload)} bytes, larger than a meter reading can be ({MAX_PAYLOAD_BYTES})")
    try:
        document = json.loads(payload, parse_int=float)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not JSON text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise PayloadError(f"not JSON ({exc})") from exc
    except RecursionError as exc:
        raise PayloadError("JSON nested too deeply to read") from exc
    if not isinstance(document, dict):
        raise PayloadError(f"not a JSON object but {_describe(document)}")
    return document


def _describe(value: object) -> str:
    text = json.dumps(value) if isinstance(value, str | bool) or value is None else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def filter_covers(wide: str, narrow: str) -> bool:
    """Whether every topic matching filter ``narrow`` also matches filter ``wide``."""
    w, n = wide.split("/"), narrow.split("/")
    for i, level in enumerate(w):
        if level == "#":
            return True
        if i >= len(n) or n[i] == "#" or (level != "+" and (level != n[i] or n[i] == "+")):
            return False
    return len(w) == len(n)


def subscription_filters(filters: Sequence[str]) -> list[str]:
    """The filters to subscribe: duplicates and filters covered by another one dropped."""
    unique = list(dict.fromkeys(filters))
    return [f for f in unique if not any(g != f and filter_covers(g, f) for g in unique)]


# -- health ---------------------------------------------------------------------------


@dataclass
class MqttHealth:
    """Counters and last outcome of one MQTT meter."""

    meter: str
    topic: str  # the meter's topic filter
    connected: bool = False  # its broker connection is up and subscribed
    messages: int = 0  # messages routed to this meter
    samples: int = 0  # samples handed to the sink (Invalid ones included)
    malformed: int = 0  # messages with at least one problem
    skewed: int = 0  # messages rejected: payload time beyond max_skew_s
    last_error: str | None = None
    last_message_at: float | None = None  # clock time of receipt


@dataclass(frozen=True)
class _Meter:
    id: str
    source: MqttSource
    health: MqttHealth


# -- the subscriber ---------------------------------------------------------------------


class MqttSubscriber:
    """Meters of one broker connection (async context manager owning a TaskGroup)."""

    def __init__(
        self,
        connection: MqttConnection,
        meters: Sequence[tuple[str, MqttSource]],
        sink: Sink,
        clock: Clock,
        *,
        client_id: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        reconnect_base_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        """``tls_context`` overrides the context built from ``connection.tls`` (the system's
        CAs when it is true); reconnect delays are wall seconds."""
        ids = [m for m, _ in meters]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"an MQTT subscriber needs distinct meter ids, got {ids}")
        self.connection = connection
        self.client_id = client_id
        self._meters = tuple(_Meter(m, s, MqttHealth(m, s.topic)) for m, s in meters)
        self.health: Mapping[str, MqttHealth] = {m.id: m.health for m in self._meters}
        self.filters = subscription_filters([m.source.topic for m in self._meters])
        self.connects = 0  # successful connections (1 + reconnects)
        self._sink = sink
        self._clock = clock
        self._tls_context = tls_context
        self._backoff = Backoff(reconnect_base_s, reconnect_max_s, rng=rng or random.Random())
        self._changed = asyncio.Condition()
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"mqtt:{self.connection.host}:{self.connection.port}"

    async def __aenter__(self) -> MqttSubscriber:
        options = self._client_options()  # reads the password file and TLS certificates
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        self._task = group.create_task(self._run(options), name=self.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._group is not None:
            await self._group.__aexit__(None, None, None)
        self._set_connected(False)

    async def wait_until(self, predicate: Callable[[Mapping[str, MqttHealth]], bool]) -> None:
        """Return once ``predicate(health)`` holds, re-checked after every message and
        connection change (wrap in ``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.health))

    # -- connection ---------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        conn = self.connection
        options: dict[str, Any] = {"identifier": self.client_id, "clean_session": self.client_id is None}
        if conn.username is not None:
            options["username"] = conn.username
            options["password"] = self._password()
        if conn.tls is not False:
            options["tls_context"] = self._tls_context or self._context(conn.tls)
        return options

    def _context(self, tls: TlsSettings | bool) -> ssl.SSLContext:
        settings = tls if isinstance(tls, TlsSettings) else TlsSettings()  # True: the system's CAs
        try:
            return client_context(settings, f"{self.name}: connection.tls")
        except SecretError as exc:
            raise MqttCredentialsError(str(exc)) from exc

    def _password(self) -> str | None:
        if self.connection.password_file is None:
            return None
        try:
            return Path(self.connection.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise MqttCredentialsError(
                f"{self.name}: cannot read password_file {self.connection.password_file!r} ({exc})"
            ) from exc

    async def _run(self, options: dict[str, Any]) -> None:
        def connect() -> aiomqtt.Client:
            return aiomqtt.Client(self.connection.host, self.connection.port, **options)

        await run_reconnecting(connect, self._session, backoff=self._backoff, name=self.name,
                               on_lost=self._connection_lost)  # fmt: skip

    async def _session(self, client: aiomqtt.Client) -> None:
        await self._subscribe(client)
        await self._receive(client)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        granted = await client.subscribe([(f, QOS) for f in self.filters])
        refused = [f for f, code in zip(self.filters, granted, strict=False) if _refused(code)]
        for m in self._meters:
            if any(filter_covers(f, m.source.topic) for f in refused):
                m.health.last_error = f"{self.name}: subscription to {m.source.topic!r} refused"
                log.warning("%s", m.health.last_error)
        self.connects += 1
        log.info("%s: connected, subscribed to %s", self.name, ", ".join(self.filters))
        await self._notify(connected=True)

    async def _connection_lost(self, error: aiomqtt.MqttError, delay: float) -> None:
        for m in self._meters:
            m.health.last_error = f"{self.name}: {error}"
        await self._notify(connected=False)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
            await self.handle(message.topic.value, bytes(raw))

    def _set_connected(self, connected: bool) -> None:
        for m in self._meters:
            m.health.connected = connected

    async def _notify(self, *, connected: bool | None = None) -> None:
        if connected is not None:
            self._set_connected(connected)
        async with self._changed:
            self._changed.notify_all()

    # -- messages -----------------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        """Route one message to the meters whose filter matches ``topic``."""
        received_on = aiomqtt.Topic(topic)
        meters = [m for m in self._meters if received_on.matches(m.source.topic)]
        if not meters:
            return
        received = self._clock.now()
        try:
            document: dict[str, Any] | PayloadError = decode_payload(payload)
        except PayloadError as exc:
            document = exc
        for m in meters:
            samples = self._samples(m, topic, document, received)
            if samples:
                m.health.samples += len(samples)
                self._sink(samples)
        await self._notify()

    def _samples(
        self, m: _Meter, topic: str, document: dict[str, Any] | PayloadError, received: float
    ) -> list[Sample]:
        health = m.health
        health.messages += 1
        health.last_message_at = received
        if isinstance(document, PayloadError):
            self._malformed(m, topic, [str(document)])
            return []
        try:
            t, source = self._time_of(m, topic, document, received)
        except PayloadError as exc:
            self._malformed(m, topic, [str(exc)])
            return []
        if t is None:
            return []
        samples, problems = [], []
        for quantity, field in m.source.fields.items():
            try:
                value = field_value(document, field)
            except PayloadError as exc:
                problems.append(str(exc))
                continue
            if isinstance(value, Invalid):
                problems.append(f"{field.path}: {value.reason}")
            samples.append(Sample(m.id, quantity, value, t, source))
        if problems:
            self._malformed(m, topic, problems)
        return samples

    def _time_of(
        self, m: _Meter, topic: str, document: dict[str, Any], received: float
    ) -> tuple[float | None, str]:
        spec = m.source.time
        if spec is None:
            return received, SOURCE_RECEIPT
        t = timestamp_of(document, spec)
        skew = t - received
        if abs(skew) > spec.max_skew_s:
            m.health.skewed += 1
            m.health.last_error = (
                f"{topic}: timestamp {spec.path}={t:.3f} is {skew:+.1f} s from the gateway clock "
                f"(limit {spec.max_skew_s:g} s); message rejected"
            )
            log.warning("meter %s: %s", m.id, m.health.last_error)
            return None, SOURCE_PAYLOAD
        return t, SOURCE_PAYLOAD

    @staticmethod
    def _malformed(m: _Meter, topic: str, problems: list[str]) -> None:
        m.health.malformed += 1
        m.health.last_error = f"{topic}: malformed payload: {'; '.join(problems)}"
        log.warning("meter %s: %s", m.id, m.health.last_error)


def _refused(code: object) -> bool:
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80
