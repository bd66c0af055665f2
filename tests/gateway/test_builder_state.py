"""IntervalBuilder.snapshot()/restore(): a restart neither loses energy nor repeats an interval."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.contract import Sample
from evidence.records import IntervalRecord
from gateway.errors import IntervalError
from gateway.intervals import IntervalBuilder, SeriesSpec, energy_rate_limit

L = 900
T0 = 1_700_000_100 - 1_700_000_100 % L


def specs() -> list[SeriesSpec]:
    return [
        SeriesSpec("m1", "energy_import", "Wh", "counter", 60.0, stats_quantity="power", stats_unit="W"),
        SeriesSpec("m1", "flow_temperature", "degC", "gauge", 60.0),
    ]


def new_builder(now: float, series: list[SeriesSpec] | None = None, interval_s: int = L) -> IntervalBuilder:
    clock = ManualClock(now)
    return IntervalBuilder(
        series or specs(), clock=clock, interval_s=interval_s, grace_s=30.0, max_future_s=1e9
    )


def energy(t: float) -> float:
    return 1000.0 + 0.5 * (t - T0)  # 1.8 kW, in Wh


def samples(t_from: float, t_to: float) -> list[Sample]:
    out = []
    t = t_from
    while t < t_to:
        out += [Sample("m1", "energy_import", energy(t), t), Sample("m1", "power", 1800.0 + t % 7, t + 1),
                Sample("m1", "flow_temperature", 40.0 + t % 11, t + 2)]  # fmt: skip
        t += 60
    return out


def through_json(state: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
    return loaded


def run(b: IntervalBuilder, events: list[tuple[float, Sample | None]]) -> list[IntervalRecord]:
    """Feed samples and close calls (None) in time order, as a running gateway would."""
    out: list[IntervalRecord] = []
    for t, sample in events:
        if sample is None:
            out += b.close_due(t)
        else:
            b.add(sample)
    return out


def timeline(t_from: float, t_to: float) -> list[tuple[float, Sample | None]]:
    events: list[tuple[float, Sample | None]] = [(s.time, s) for s in samples(t_from, t_to)]
    events += [(float(T0 + k * L + 30), None) for k in range(1, int((t_to - T0) // L) + 1)]
    return sorted(events, key=lambda e: (e[0], e[1] is None))


def test_fresh_snapshot_is_json_without_infinities() -> None:
    b = new_builder(T0 + 5)
    state = through_json(b.snapshot())
    assert state["version"] == 1 and state["interval_s"] == L
    names = {(s["meter"], s["quantity"]) for s in state["series"]}
    assert names == {("m1", "energy_import"), ("m1", "flow_temperature")}


@settings(max_examples=40, deadline=None)
@given(split=st.integers(min_value=1, max_value=7), offset=st.integers(min_value=0, max_value=L - 1))
def test_restore_continues_exactly_like_an_uninterrupted_builder(split: int, offset: int) -> None:
    events = timeline(T0, T0 + 8 * L)
    reference = run(new_builder(T0), events)
    stop = T0 + split * L + offset  # somewhere inside interval `split`
    first = new_builder(T0)
    before = run(first, [e for e in events if e[0] < stop])
    state = through_json(first.snapshot())
    second = new_builder(stop)  # same config, built later: its own origin and first interval
    second.restore(state)
    after = run(second, [e for e in events if e[0] >= stop])
    assert before + after == reference
    assert len(reference) == 16


def test_restart_after_downtime_counts_the_energy_and_flags_gap_not_first() -> None:
    first = new_builder(T0)
    first.add_many(samples(T0, T0 + 2 * L + 300))  # readings until 5 minutes into interval 2
    emitted = first.close_due(T0 + 2 * L + 30)
    last_reading = max(s.time for s in samples(T0, T0 + 2 * L + 300) if s.quantity == "energy_import")
    state = through_json(first.snapshot())

    restart = T0 + 5 * L + 120  # down for about three intervals
    second = new_builder(restart)
    second.restore(state)
    second.add_many(samples(restart, T0 + 7 * L))
    later = second.close_due(T0 + 7 * L + 30)

    counters = [r for r in emitted + later if r.quantity == "energy_import"]
    assert [r.start for r in counters] == [T0 + k * L for k in range(7)]  # none skipped, none twice
    assert [r.start for r in later if r.quantity == "flow_temperature"] == [T0 + k * L for k in range(2, 7)]
    by_start = {r.start: r for r in counters}
    stopped_in = by_start[T0 + 2 * L]  # the interval the gateway stopped in: partial
    assert stopped_in.counter_end_time_ms == last_reading * 1000 and "gap" in stopped_in.flags
    assert [by_start[T0 + k * L].samples for k in (3, 4)] == [0, 0]
    resumed = by_start[T0 + 5 * L]
    assert resumed.counter_start == energy(last_reading)  # the last reading before the stop
    assert "gap" in resumed.flags and "first" not in resumed.flags
    assert [r.flags for r in counters].count(("first",)) == 1
    total = sum(r.delta or 0.0 for r in counters)
    assert total == pytest.approx(counters[-1].counter_end - counters[0].counter_start)  # type: ignore[operator]


def test_changed_interval_length_keeps_counter_continuity_only() -> None:
    first = new_builder(T0)
    first.add_many(samples(T0, T0 + L))
    first.close_due(T0 + L + 30)
    state = through_json(first.snapshot())
    second = new_builder(T0 + L + 60, interval_s=300)
    second.restore(state)
    second.add_many(samples(T0 + L + 60, T0 + L + 600))
    [rec] = [r for r in second.close_due(T0 + L + 600 + 30) if r.quantity == "energy_import"][:1]
    assert rec.counter_start == energy(T0 + L - 60) and "first" not in rec.flags
    assert rec.delta == energy(T0 + L + 240) - energy(T0 + L - 60)  # nothing lost across the change


def test_series_added_or_removed_between_runs() -> None:
    first = new_builder(T0)
    first.add_many(samples(T0, T0 + L))
    first.close_due(T0 + L + 30)
    state = through_json(first.snapshot())
    extra = SeriesSpec("m2", "energy_import", "Wh", "counter", 60.0)
    second = new_builder(T0 + L + 40, [specs()[0], extra])  # gauge removed, m2 added
    second.restore(state)
    second.add_many([Sample("m2", "energy_import", 5.0, T0 + L + 50), *samples(T0 + L + 40, T0 + 2 * L)])
    recs = {r.meter: r for r in second.close_due(T0 + 2 * L + 30)}
    assert recs["m2"].flags == ("first", "gap")
    assert recs["m1"].counter_start == energy(T0 + L - 60) and "first" not in recs["m1"].flags


MALFORMED = [
    {},
    {"version": 2},
    {"version": 1, "interval_s": L, "series": [{"meter": "m1"}]},
    {"version": 1, "interval_s": L, "series": None},
]


@pytest.mark.parametrize("state", MALFORMED)
def test_malformed_snapshot_is_an_error(state: dict[str, Any]) -> None:
    with pytest.raises(IntervalError):
        new_builder(T0).restore(state)


def test_held_readings_survive_a_restart() -> None:
    """A reading held as implausible when the gateway stops is still held after the
    restart: a glitch is dropped by the next plausible reading, a new level goes on
    towards its confirmation (here: the meter was replaced while the gateway was down)."""
    spec = SeriesSpec("m1", "energy_import", "Wh", "counter", 60.0, max_rate=energy_rate_limit(5, "Wh"))
    first = new_builder(T0, [spec])
    first.add_many([Sample("m1", "energy_import", v, t) for v, t in [(5000.0, T0 + 60), (0.0, T0 + 120)]])
    state = through_json(first.snapshot())
    assert [h["first"] for h in state["series"][0]["held"]] == [[0.0, T0 + 120]]

    glitch = new_builder(T0 + 180, [spec])
    glitch.restore(state)
    glitch.add(Sample("m1", "energy_import", 5005.0, T0 + 180))
    [rec] = glitch.close_due(T0 + L + 30)
    assert rec.delta == 5.0 and "reset" not in rec.flags and "invalid_value" in rec.flags

    replaced = new_builder(T0 + 180, [spec])
    replaced.restore(state)
    replaced.add_many([Sample("m1", "energy_import", 3.0 * k, T0 + 120 + 60 * k) for k in range(1, 20)])
    recs = replaced.close_due(T0 + 2 * L + 30)
    assert [r.flags.count("reset") for r in recs] == [0, 1]  # held from T0 + 120 to T0 + 1020
    assert sum(r.delta or 0.0 for r in recs) == 3.0 * 19  # the new meter from its first reading (0)


def test_a_snapshot_with_a_pending_rise_from_before_held_levels_restores() -> None:
    spec = SeriesSpec("m1", "energy_import", "Wh", "counter", 60.0, max_rate=energy_rate_limit(5, "Wh"))
    first = new_builder(T0, [spec])
    first.add(Sample("m1", "energy_import", 100.0, T0 + 60))
    state = through_json(first.snapshot())
    item = state["series"][0]
    del item["held"], item["held_n"]
    item["pending"] = [1e9, T0 + 120]  # the field a builder before the held levels wrote
    second = new_builder(T0 + 180, [spec])
    second.restore(state)
    second.add(Sample("m1", "energy_import", 110.0, T0 + 180))
    [rec] = second.close_due(T0 + L + 30)
    assert rec.counter_end == 110.0 and rec.delta == 10.0
