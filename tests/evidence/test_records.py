"""Records: canonical bytes, round trips, and errors that name the field."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evidence.errors import MalformedRecord
from evidence.records import (
    FLAGS,
    DroppedBatch,
    DropRecord,
    IntervalRecord,
    IntervalRef,
    KeyRotationRecord,
    Stats,
    decode_record,
    encode_record,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
opt_finite = st.none() | finite
names = st.text(min_size=1, max_size=20)
stats = st.builds(Stats, unit=names, min=finite, avg=finite, max=finite)


@st.composite
def interval_records(draw: st.DrawFn) -> IntervalRecord:
    start = draw(st.integers(min_value=0, max_value=2**40))
    kind = draw(st.sampled_from(["counter", "gauge"]))
    return IntervalRecord(
        meter=draw(names),
        quantity=draw(names),
        unit=draw(names),
        start=start,
        end=start + draw(st.integers(min_value=1, max_value=3600)),
        kind=kind,
        counter_start=draw(opt_finite),
        counter_start_time_ms=draw(st.none() | st.integers(0, 2**50)),
        counter_end=draw(opt_finite),
        counter_end_time_ms=draw(st.none() | st.integers(0, 2**50)),
        delta=draw(opt_finite) if kind == "counter" else None,
        stats=draw(st.none() | stats),
        samples=draw(st.integers(0, 10_000)),
        expected=draw(st.integers(0, 10_000)),
        flags=tuple(sorted(draw(st.sets(st.sampled_from(sorted(FLAGS)))))),
    )


@given(interval_records())
def test_interval_round_trip_and_template_equals_json_encoder(rec: IntervalRecord) -> None:
    data = encode_record(rec)
    assert decode_record(data) == rec
    # The fast template must give exactly the compact JSON encoding.
    assert data == json.dumps(rec.to_json(), separators=(",", ":")).encode()
    assert b"\n" not in data  # a newline would break the batch framing
    assert data.isascii()


def test_interval_bytes_are_stable() -> None:
    rec = IntervalRecord("m1", "energy_import", "kWh", 0, 900, counter_start=1.0, counter_end=1.5, delta=0.5)
    assert encode_record(rec) == (
        b'{"type":"interval","meter":"m1","quantity":"energy_import","unit":"kWh","start":0,'
        b'"end":900,"kind":"counter","counter_start":1.0,"counter_start_time_ms":null,'
        b'"counter_end":1.5,"counter_end_time_ms":null,"delta":0.5,"stats":null,"samples":0,'
        b'"expected":0,"flags":[]}'
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_naming_the_record(bad: float) -> None:
    rec = IntervalRecord("m1", "energy_import", "kWh", 0, 900, delta=bad)
    with pytest.raises(MalformedRecord, match="m1/energy_import@0"):
        encode_record(rec)


def test_other_record_types_round_trip() -> None:
    drop = DropRecord(
        "outbox_cap", "drop_oldest", (DroppedBatch(7, "ab" * 32),),
        (IntervalRef("m1", "energy_import", 0, 900),), "cap 100 MB reached",
    )  # fmt: skip
    rot = KeyRotationRecord("00" * 16, "TUZr", 42)
    for rec in (drop, rot):
        assert decode_record(encode_record(rec)) == rec


def _interval_json(**changes: object) -> bytes:
    obj = IntervalRecord("m1", "energy_import", "kWh", 0, 900).to_json()
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"type":"reading"}', "record type 'reading'"),
        (_interval_json(start="0"), r"interval\.start: expected an integer"),
        (_interval_json(delta="1.5"), r"interval\.delta: expected a finite number"),
        (_interval_json(flags=["gap", "fixed"]), r"interval\.flags: unknown flags \['fixed'\]"),
        (_interval_json(end=0), "end 0 is not after start 0"),
        (_interval_json(kind="rate"), r"interval\.kind: expected 'counter' or 'gauge'"),
        (_interval_json(extra=1), r"unknown keys \['extra'\]"),
        (_interval_json(stats={"unit": "W", "min": 1}), r"interval\.stats: unknown keys \[\], missing keys"),
        (_interval_json(kind="gauge", delta=1.0), "a gauge has no delta"),
    ],
)
def test_malformed_records_name_the_field(data: bytes, message: str) -> None:
    with pytest.raises(MalformedRecord, match=message):
        decode_record(data)


def test_coverage() -> None:
    assert IntervalRecord("m", "q", "u", 0, 1, samples=45, expected=90).coverage == 0.5
    assert IntervalRecord("m", "q", "u", 0, 1, samples=95, expected=90).coverage == 1.0
    assert IntervalRecord("m", "q", "u", 0, 1, samples=0, expected=0).coverage == 0.0
