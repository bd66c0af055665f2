"""Plausibility checks (pure) and the msgspec decoder's agreement with evidence.decode_record."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.config import LimitSettings, PlausibilitySettings
from aggregator.plausibility import check_intervals
from aggregator.records import IntervalDoc, decode_interval
from aggregator.view import MeterInfo
from evidence import IntervalRecord, Stats, decode_record, encode_record
from evidence.errors import MalformedRecord
from evidence.records import FLAGS

METERS = {"m": MeterInfo("gw", "m", "pv", 4.0, "1")}  # 4 kW x 0.25 h x 1.2 = 1.2 kWh allowed


def _obj(start: int = 0, c0: float = 10.0, delta: float = 1.0, **kw: Any) -> dict[str, Any]:
    base = IntervalRecord(
        "m",
        "energy_import",
        "kWh",
        start,
        start + 900,
        "counter",
        c0,
        start * 1000,
        c0 + delta,
        (start + 899) * 1000,
        delta,
        Stats("kW", 1.0, 2.0, 3.0),
        90,
        90,
    )
    obj = json.loads(encode_record(base))
    obj.update(kw)
    return obj


def _rec(start: int = 0, c0: float = 10.0, delta: float = 1.0, **kw: Any) -> IntervalDoc:
    return msgspec.convert(_obj(start, c0, delta, **kw), IntervalDoc)


def _check(
    records: list[IntervalDoc], state: Any = None, created_ms: int = 2_000_000
) -> list[tuple[str, ...]]:
    issues, _ = check_intervals(
        records,
        meters=METERS,
        state=state or {},
        created_ms=created_ms,
        now_ms=created_ms,
        settings=PlausibilitySettings(),
        limits=LimitSettings(),
    )
    return issues


def test_each_issue() -> None:
    assert _check([_rec()]) == [()]
    at_limit = 4.0 * 1.2  # rated power x nameplate factor, exactly: allowed
    assert _check(
        [_rec(delta=at_limit * 0.25, stats={"unit": "kW", "min": 1.0, "avg": 2.0, "max": at_limit})]
    ) == [()]
    assert _check([_rec(delta=2.0)]) == [("energy_above_nameplate",)]
    assert _check([_rec(stats={"unit": "W", "min": 1.0, "avg": 2.0, "max": 9000.0})]) == [
        ("power_above_nameplate",)
    ]
    assert _check([_rec(stats={"unit": "kW", "min": 3.0, "avg": 2.0, "max": 3.0})]) == [
        ("stats_inconsistent",)
    ]
    assert _check([_rec(counter_end=10.5)]) == [("delta_mismatch",)]
    assert _check([_rec(counter_end=9.0, delta=-1.0)]) == [("counter_decrease", "negative_delta")]
    assert _check([_rec(samples=10)]) == [("low_coverage",)]
    assert _check([_rec(samples=91)]) == [("excess_samples",)]
    assert _check([_rec(start=5000)], created_ms=5_000_000) == [("timestamp_skew",)]
    assert _check([_rec(meter="other")]) == [("unknown_meter",)]
    issues, _ = check_intervals(
        [_rec()],
        meters=METERS,
        state={},
        created_ms=10**13,
        now_ms=0,
        settings=PlausibilitySettings(),
        limits=LimitSettings(),
    )
    assert issues == [("batch_time_ahead",)]


def test_counters_are_monotonic_across_batches_unless_flagged() -> None:
    issues, state = check_intervals(
        [_rec(0, 10.0), _rec(900, 11.0)],
        meters=METERS,
        state={},
        created_ms=2_000_000,
        now_ms=2_000_000,
        settings=PlausibilitySettings(),
        limits=LimitSettings(),
    )
    assert issues == [(), ()] and state == {("m", "energy_import"): (1800, 12.0)}
    later = 10_000_000
    assert _check([_rec(1800, 5.0)], state, later) == [("counter_decrease",)]
    assert _check([_rec(1800, 5.0, flags=["reset"])], state, later) == [()]
    assert _check([_rec(1800, 12.0)], state, later) == [()]
    # Not across a hole: the intervals between (with their reset or new session) come later.
    assert _check([_rec(9000, 5.0)], state, later) == [()]


def test_a_new_charging_session_flagged_by_the_gateway_is_not_a_decrease() -> None:
    """A per-session counter (ABB Terra) restarts at 0: the gateway counts the new session
    from 0 and flags ``session``; without the flag the same drop is implausible."""
    restart = {"counter_start": 11.0, "counter_end": 0.4, "delta": 0.4}
    assert _check([_rec(**restart)]) == [("counter_decrease",)]
    assert _check([_rec(**restart, flags=["session"])]) == [()]


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
values = st.one_of(st.none(), finite, st.integers(-10, 10), st.text(max_size=3), st.booleans(), st.just([]))


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(
        [
            "meter",
            "start",
            "end",
            "kind",
            "counter_start",
            "counter_end_time_ms",
            "delta",
            "samples",
            "expected",
            "flags",
            "stats",
            "unit",
        ]
    ),
    value=st.one_of(values, st.lists(st.sampled_from([*sorted(FLAGS), "bogus"]), max_size=3)),
)
def test_fast_decoder_accepts_exactly_what_decode_record_accepts(key: str, value: Any) -> None:
    obj = _obj()
    obj[key] = value
    raw = json.dumps(obj, separators=(",", ":")).encode()
    try:
        record = decode_record(raw)
    except MalformedRecord:
        assert decode_interval(raw) is None
        return
    doc = decode_interval(raw)
    if doc is not None:  # None: the fallback (decode_record) takes it, which is allowed
        assert isinstance(record, IntervalRecord)
        assert msgspec.to_builtins(doc) | {"flags": sorted(doc.flags)} == record.to_json()


def test_fast_decoder_takes_the_common_case_and_refers_the_rest() -> None:
    raw = json.dumps(_obj(), separators=(",", ":")).encode()
    assert decode_interval(raw) == _rec()
    no_type = _obj()
    del no_type["type"]
    extra = _obj(note="x")
    for refused in (
        json.dumps(no_type).encode(),
        json.dumps(extra).encode(),
        raw.replace(b'"counter_start":10.0', b'"counter_start":NaN'),
        raw.replace(b'"counter_start":10.0', b'"counter_start":1e999'),
        raw.replace(b'"meter":"m"', b'"meter":"\\ud800"'),
        raw.replace(b'"end":900', b'"end":0'),
        raw.replace(b'"delta":1.0', b'"delta":true'),
    ):
        assert decode_interval(refused) is None, refused


near = st.floats(min_value=-2.0, max_value=4.0, allow_nan=False)


@settings(max_examples=500, deadline=None)
@given(
    delta=st.none() | near,
    c0=st.none() | st.floats(9.0, 11.0),
    c1=st.none() | st.floats(9.0, 13.0),
    stats=st.none() | st.tuples(st.sampled_from(["kW", "W", "degC"]), near, near, st.floats(0, 6000)),
    samples=st.integers(0, 100),
    expected=st.integers(0, 100),
    flags=st.lists(st.sampled_from(["reset", "rollover", "gap"]), max_size=2),
    kind=st.sampled_from(["counter", "gauge"]),
    unit=st.sampled_from(["kWh", "Wh", "m3"]),
    t1=st.none() | st.integers(-1000, 2_000_000),
)
def test_the_fast_clean_path_agrees_with_the_checks(
    delta: Any, c0: Any, c1: Any, stats: Any, samples: int, expected: int, flags: list[str],
    kind: str, unit: str, t1: Any,
) -> None:  # fmt: skip
    from aggregator.plausibility import _check_counter, _check_coverage, _check_stats, _check_times, _clean

    st_obj = None if stats is None else {"unit": stats[0], "min": stats[1], "avg": stats[2], "max": stats[3]}
    obj = _obj()
    obj.update(
        delta=delta if kind == "counter" else None, counter_start=c0, counter_end=c1, stats=st_obj,
        samples=samples, expected=expected, flags=flags, kind=kind, unit=unit, counter_end_time_ms=t1,
    )  # fmt: skip
    r = msgspec.convert(obj, IntervalDoc)
    found: list[str] = []
    meter, plaus, latest = METERS["m"], PlausibilitySettings(), 1_000_000.0
    _check_times(r, latest, found)
    _check_coverage(r, plaus, found)
    _check_stats(r, meter, plaus, found)
    if r.kind == "counter":
        _check_counter(r, meter, plaus, found)
    assert _clean(r, meter, latest, plaus) == (not found), found
