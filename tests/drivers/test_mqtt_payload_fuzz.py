"""MQTT payloads that are not what a meter sends: only ``PayloadError`` from decoding, and
the subscriber counts every message (as malformed, skewed, or samples) and never raises.

Issue 15 item 4: ``[`` x 100000 raised RecursionError out of ``decode_payload``, a 5000-digit
integer the int-to-string ValueError, a 400-digit one an OverflowError when read as a float;
each killed the subscriber's task and with it the gateway, Modbus polling included.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.contract import Invalid, Sample
from drivers.mqtt.config import MqttConnection, MqttField, MqttSource, MqttTimestamp
from drivers.mqtt.driver import MAX_PAYLOAD_BYTES, MqttSubscriber, PayloadError, decode_payload

NOW = 1_736_899_200.0
TOPIC = "site/meter"
FIELDS = {
    "energy": MqttField(path="e", unit="kWh", kind="counter", scale=0.001),
    "power": MqttField(path="d.p[0]", unit="W"),
}
ISO = MqttTimestamp(path="t", format="iso8601", tz="Asia/Shanghai")
SOURCES = [
    ("receipt", MqttSource(topic=TOPIC, fields=FIELDS)),
    ("epoch", MqttSource(topic="site/+", fields=FIELDS, time=MqttTimestamp(path="ts", format="epoch_ms"))),
    ("iso", MqttSource(topic="#", fields=FIELDS, time=ISO)),
]

HOSTILE = [
    b"[" * 100_000,
    b'{"e": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"e": ' + b"9" * 5000 + b"}",  # over Python's 4300-digit int limit
    b'{"e": 1' + b"0" * 400 + b', "d": {"p": [-1' + b"0" * 400 + b"]}}",  # too large for a float
    b'{"e": 1e400, "d": {"p": [NaN]}, "ts": 1e400, "t": "9999-12-31T23:59:59"}',
    b"\xff\xfe\x00",
    b'{"e": "\\ud800", "t": "\\ud800"}',
    b" " * (MAX_PAYLOAD_BYTES + 1),
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["2025-01-15T08:00:00", "2025-01-15T00:00:00Z", "0001-01-01T00:00:00", "yesterday"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["e", "d", "p", "ts", "t", "x"]), inner, max_size=4),
    ),
    max_leaves=12,
)
_documents = st.fixed_dictionaries(
    {},
    optional={
        "e": _json,
        "d": st.one_of(_json, st.fixed_dictionaries({"p": st.lists(_scalars, max_size=2)})),
        "ts": st.one_of(_scalars, st.just(NOW * 1000)),
        "t": _json,
    },
)


def _text(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


_payloads = st.one_of(
    _documents.map(_text),
    _json.map(_text),
    st.binary(max_size=64),
    st.sampled_from(HOSTILE),
    st.tuples(_documents.map(_text), st.integers(0, 40), st.binary(min_size=1, max_size=3)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]  # a few bytes spliced into good JSON
    ),
)


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_payloads_decode_or_raise_payload_error_only(payload: bytes) -> None:
    try:
        document = decode_payload(payload)
    except PayloadError as exc:
        assert str(exc)
        return
    assert isinstance(document, dict)


def test_integer_literals_of_any_length_are_numbers() -> None:
    assert decode_payload(b'{"e": ' + b"9" * 5000 + b"}") == {"e": math.inf}
    assert decode_payload(b'{"e": -' + b"9" * 400 + b"}") == {"e": -math.inf}
    assert decode_payload(b'{"e": 12345678901234567}') == {"e": 12345678901234567.0}


@given(payload=_payloads)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decode_payload_raises_only_payload_error(payload: bytes) -> None:
    try:
        document = decode_payload(payload)
    except PayloadError as exc:
        assert str(exc)
        return
    assert isinstance(document, dict)


@given(payloads=st.lists(_payloads, min_size=1, max_size=4))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_message_is_counted_and_none_stops_the_subscriber(payloads: list[bytes]) -> None:
    asyncio.run(_handle_all(payloads))


async def _handle_all(payloads: list[bytes]) -> None:
    samples: list[Sample] = []
    connection = MqttConnection(host="127.0.0.1")
    sub = MqttSubscriber(connection, SOURCES, samples.extend, ManualClock(NOW))
    for payload in payloads:
        before = {m: (h.samples, h.malformed, h.skewed) for m, h in sub.health.items()}
        await sub.handle(TOPIC, payload)  # raises nothing, whatever the payload
        for meter, health in sub.health.items():
            samples_before, malformed_before, skewed_before = before[meter]
            rejected = (health.malformed - malformed_before) + (health.skewed - skewed_before)
            assert rejected in (0, 1), health
            assert health.samples > samples_before or rejected == 1, (payload[:80], health)
    for h in sub.health.values():
        assert h.messages == len(payloads)
    for s in samples:
        assert isinstance(s.value, Invalid) or math.isfinite(s.value)
        assert math.isfinite(s.time)
