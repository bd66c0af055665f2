"""Interval builder: boundaries, counters, flags, and the no-energy-lost properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.contract import Invalid, Sample
from evidence.records import IntervalRecord, encode_record
from gateway.errors import IntervalError
from gateway.intervals import CONFIRM_READINGS, IntervalBuilder, SeriesSpec, energy_rate_limit

L = 900
T0 = 1_700_000_100 - 1_700_000_100 % L  # an interval boundary


def counter(**kw: object) -> SeriesSpec:
    base: dict[str, object] = dict(
        meter="m1",
        quantity="energy_import",
        unit="Wh",
        kind="counter",
        poll_period=60.0,
        stats_quantity="power",
        stats_unit="W",
    )
    base.update(kw)
    return SeriesSpec(**base)  # type: ignore[arg-type]


def builder(
    *specs: SeriesSpec, start: float = T0, future: float = 1e9, confirm_s: float | None = None
) -> tuple[IntervalBuilder, ManualClock]:
    """Tests feed samples without moving the clock, so the future limit is off by default."""
    clock = ManualClock(start)
    b = IntervalBuilder(specs or (counter(),), clock=clock, interval_s=L, grace_s=30.0, max_future_s=future,
                        confirm_s=confirm_s)  # fmt: skip
    return b, clock


def feed(b: IntervalBuilder, readings: list[tuple[float, float]], quantity: str = "energy_import") -> None:
    for t, v in readings:
        b.add(Sample("m1", quantity, v, t))


def test_full_interval_counter_and_power_stats() -> None:
    b, _ = builder()
    feed(b, [(T0 + 60 * i, 1000.0 + 10 * i) for i in range(16)])
    feed(b, [(T0 + 60 * i + 1, 40.0 + i) for i in range(15)], "power")
    [rec] = b.close_due(T0 + L + 30)
    assert (rec.start, rec.end) == (T0, T0 + L)
    assert rec.flags == ("first",)
    assert rec.counter_start == 1000.0 and rec.counter_end == 1140.0 and rec.delta == 140.0
    assert rec.counter_start_time_ms == T0 * 1000
    assert rec.samples == 15 and rec.expected == 15 and rec.coverage == 1.0
    assert rec.stats is not None and (rec.stats.min, rec.stats.avg, rec.stats.max) == (40.0, 47.0, 54.0)
    assert rec.stats.unit == "W"
    [nxt] = b.close_due(T0 + 2 * L + 30)
    assert nxt.counter_start == 1140.0 and nxt.counter_start_time_ms == (T0 + 14 * 60) * 1000
    assert nxt.counter_end_time_ms == (T0 + L) * 1000  # a reading at the boundary opens the next
    assert nxt.delta == 10.0 and nxt.samples == 1 and "gap" in nxt.flags and "first" not in nxt.flags
    encode_record(rec)


def test_grace_keeps_interval_open_then_late_is_counted_not_merged() -> None:
    b, _ = builder()
    feed(b, [(T0 + 10, 5.0)])
    assert b.close_due(T0 + L + 29) == []
    feed(b, [(T0 + L - 1, 6.0)])  # within grace: merged
    [rec] = b.close_due(T0 + L + 30)
    assert rec.counter_end == 6.0
    feed(b, [(T0 + L - 0.5, 6.5)])  # its interval is closed now
    assert b.counts.late == 1
    [nxt] = b.close_due(T0 + 2 * L + 30)
    assert "late" in nxt.flags and nxt.counter_start == 6.0


def test_empty_intervals_are_emitted_as_gaps_and_the_next_delta_spans_them() -> None:
    b, _ = builder()
    feed(b, [(T0 + 1, 100.0)])
    feed(b, [(T0 + 3 * L + 1, 130.0)])
    recs = b.close_due(T0 + 4 * L + 30)
    assert [r.samples for r in recs] == [1, 0, 0, 1]
    assert recs[1].counter_end is None and recs[1].delta is None and "gap" in recs[1].flags
    assert recs[1].counter_start == 100.0
    assert recs[3].delta == 30.0 and "gap" in recs[3].flags  # start bound is 3 intervals old


def test_no_reading_at_all_gives_gap_records_with_null_counters() -> None:
    b, _ = builder()
    [rec] = b.close_due(T0 + L + 30)
    assert rec.samples == 0 and rec.counter_start is None and rec.delta is None
    assert rec.flags == ("gap",)


def test_reset_excludes_the_jump() -> None:
    b, _ = builder(confirm_s=120)  # the new level holds from T0 + 120 to T0 + 240
    feed(b, [(T0 + 0, 5000.0), (T0 + 60, 5010.0), (T0 + 120, 3.0), (T0 + 180, 8.0), (T0 + 240, 8.0)])
    [rec] = b.close_due(T0 + L + 30)
    assert "reset" in rec.flags
    assert rec.delta == 10.0 + 5.0  # before the reset + after the new counter's first reading
    assert rec.counter_start == 5000.0 and rec.counter_end == 8.0


def test_rollover_is_corrected() -> None:
    b, _ = builder(counter(modulus=2.0**32))
    feed(b, [(T0, 2.0**32 - 20), (T0 + 60, 2.0**32 - 5), (T0 + 120, 7.0)])
    [rec] = b.close_due(T0 + L + 30)
    assert "rollover" in rec.flags and rec.delta == 27.0


def test_big_drop_with_modulus_is_a_reset_not_a_rollover() -> None:
    b, _ = builder(counter(modulus=2.0**32, max_rate=energy_rate_limit(10, "Wh")), confirm_s=120)
    feed(b, [(T0, 4.0e9), (T0 + 60, 1000.0), (T0 + 120, 1000.0), (T0 + 180, 1000.0)])
    [rec] = b.close_due(T0 + L + 30)
    assert "reset" in rec.flags and "rollover" not in rec.flags and rec.delta == 0.0


def test_per_session_counter_counts_new_session_from_zero() -> None:
    b, _ = builder(counter(per_session=True))
    feed(b, [(T0, 7000.0), (T0 + 60, 7100.0), (T0 + 120, 50.0), (T0 + 180, 80.0), (T0 + 240, 80.0)])
    [rec] = b.close_due(T0 + L + 30)
    assert rec.delta == 100.0 + 80.0 and "reset" not in rec.flags and "session" in rec.flags


def test_jitter_below_tolerance_does_not_reset() -> None:
    b, _ = builder(counter(reset_tolerance=0.5))
    feed(b, [(T0, 100.0), (T0 + 60, 99.8), (T0 + 120, 101.0)])
    [rec] = b.close_due(T0 + L + 30)
    assert rec.flags == ("first", "gap") and rec.delta == 1.0


def test_implausible_spike_rejected_and_confirmed_jump_becomes_reset() -> None:
    rate = energy_rate_limit(5, "Wh")  # about 4.2 Wh/s
    b, _ = builder(counter(max_rate=rate), confirm_s=120)
    feed(b, [(T0, 100.0), (T0 + 60, 150.0), (T0 + 120, 1e9), (T0 + 180, 200.0)])
    feed(b, [(T0 + 240, 90000.0), (T0 + 300, 90100.0), (T0 + 360, 90100.0)])
    [rec] = b.close_due(T0 + L + 30)
    assert {"invalid_value", "reset"} <= set(rec.flags)
    assert rec.delta == 50.0 + 50.0 + 100.0
    assert rec.samples == 4


def test_invalid_values_flagged_and_not_counted() -> None:
    b, _ = builder()
    feed(b, [(T0, 1.0), (T0 + 60, math.nan), (T0 + 120, -5.0)])
    b.add(Sample("m1", "energy_import", Invalid("not_implemented"), T0 + 180))
    [rec] = b.close_due(T0 + L + 30)
    assert "invalid_value" in rec.flags and rec.samples == 1 and b.counts.invalid == 3


def test_out_of_order_ignored_for_counter_used_for_gauge() -> None:
    gauge = SeriesSpec("m1", "flow_temperature", "degC", "gauge", poll_period=60.0)
    b, _ = builder(counter(), gauge)
    feed(b, [(T0 + 120, 10.0), (T0 + 60, 9.0), (T0 + 180, 11.0)])
    feed(b, [(T0 + 120, 50.0), (T0 + 60, 40.0)], "flow_temperature")
    feed(b, [(T0 + 120, 50.0)], "flow_temperature")  # exact duplicate
    recs = {r.quantity: r for r in b.close_due(T0 + L + 30)}
    c, g = recs["energy_import"], recs["flow_temperature"]
    assert "out_of_order" in c.flags and c.delta == 1.0 and c.counter_start == 10.0
    assert g.kind == "gauge" and g.delta is None and g.stats is not None
    assert (g.stats.min, g.stats.max, g.samples) == (40.0, 50.0, 2)
    assert b.counts.duplicates == 1


async def test_future_samples_are_rejected_as_clock_jump() -> None:
    b, clock = builder(future=60.0)
    feed(b, [(T0 + 10, 1.0), (T0 + 10_000, 999.0)])
    await clock.set(T0 + L + 30)
    [rec] = b.close_due()
    assert "clock_jump" in rec.flags and rec.counter_end == 1.0 and b.counts.future == 1


def test_first_partial_interval_expects_fewer_samples() -> None:
    b, _ = builder(start=T0 + 600)
    feed(b, [(T0 + 600 + 60 * i, float(i)) for i in range(5)])
    [rec] = b.close_due(T0 + L + 30)
    assert rec.expected == 5 and rec.samples == 5 and rec.flags == ("first",)


def test_unrouted_samples_are_counted_and_bad_setup_raises() -> None:
    b, _ = builder()
    b.add(Sample("m1", "voltage_l1", 230.0, T0))
    assert b.counts.unrouted == 1
    with pytest.raises(IntervalError):
        IntervalBuilder([counter()], clock=ManualClock(0), interval_s=7 * 60)
    with pytest.raises(IntervalError):
        IntervalBuilder([counter(), counter()], clock=ManualClock(0))


def _run(readings: list[tuple[float, float]], spec: SeriesSpec) -> list[IntervalRecord]:
    b, _ = builder(spec)
    feed(b, readings)
    return b.close_due(readings[-1][0] + 2 * L + 31)


# sample times on a millisecond grid (distinct after adding T0), up to six intervals
times = st.lists(st.integers(0, 6 * L * 1000), min_size=2, max_size=80, unique=True).map(
    lambda xs: [x / 1000 for x in xs]
)


@settings(max_examples=200, deadline=None)
@given(times=times, steps=st.lists(st.integers(0, 5000), min_size=80, max_size=80),
       first=st.integers(0, 10**9))  # fmt: skip
def test_sum_of_deltas_is_last_minus_first(times: list[float], steps: list[int], first: int) -> None:
    ts = sorted(T0 + t for t in times)
    values, v = [], float(first)
    for i, _ in enumerate(ts):
        v += steps[i]
        values.append(v)
    recs = _run(list(zip(ts, values, strict=True)), counter())
    assert sum(r.delta or 0.0 for r in recs) == values[-1] - values[0]
    assert all((r.delta or 0.0) >= 0 and 0.0 <= r.coverage <= 1.0 for r in recs)
    assert all(a.end == b.start for a, b in itertools.pairwise(recs))
    with_data = [r for r in recs if r.counter_end is not None]
    for a, b in itertools.pairwise(with_data):
        assert b.counter_start == a.counter_end


@settings(max_examples=200, deadline=None)
@given(times, st.lists(st.integers(0, 1000), min_size=80, max_size=80), st.integers(0, 2**32 - 1))
def test_rollover_is_flagged_and_no_energy_is_lost(times: list[float], steps: list[int], start: int) -> None:
    m = 2**32
    ts = sorted(T0 + t for t in times)
    true, visible = start, []
    for i, _ in enumerate(ts):
        true += steps[i] if i else 0
        visible.append(float(true % m))
    recs = _run(list(zip(ts, visible, strict=True)), counter(modulus=float(m)))
    assert sum(r.delta or 0.0 for r in recs) == true - start
    wrapped = any(visible[i] < visible[i - 1] for i in range(1, len(visible)))
    assert wrapped == any("rollover" in r.flags for r in recs)
    assert all((r.delta or 0.0) >= 0 for r in recs)


@settings(max_examples=200, deadline=None)
@given(times=times, steps=st.lists(st.integers(0, 1000), min_size=80, max_size=80),
       start=st.integers(10**6, 10**9), cut=st.integers(1, 79), new=st.integers(0, 500))  # fmt: skip
def test_reset_is_flagged_and_only_the_jump_is_excluded(
    times: list[float], steps: list[int], start: int, cut: int, new: int
) -> None:
    ts = sorted(T0 + t for t in times)
    cut = min(cut, len(ts) - 1)
    old = [float(start + sum(steps[1 : i + 1])) for i in range(cut)]
    replaced = [float(new + sum(steps[cut + 1 : j + 1])) for j in range(cut, len(ts))]
    recs = _run(list(zip(ts, old + replaced, strict=True)), counter(modulus=2.0**32))
    # a reset once the new level has held for CONFIRM_READINGS readings over an interval length
    confirmed = len(replaced) >= CONFIRM_READINGS and ts[-1] - ts[cut] >= L
    assert [r.flags.count("reset") for r in recs].count(1) == int(confirmed)
    assert all((r.delta or 0.0) >= 0 and 0 <= r.coverage <= 1 for r in recs)
    after = replaced[-1] - replaced[0] if confirmed else 0.0
    assert sum(r.delta or 0.0 for r in recs) == (old[-1] - old[0]) + after


# -- invalid readings never move a bound (issue 15, items 1 and 2) ---------------------------


def _total(recs: list[IntervalRecord]) -> float:
    return sum(r.delta or 0.0 for r in recs)


def test_an_absurd_burst_between_good_readings_is_dropped_and_they_carry_the_energy() -> None:
    """SDM630 with the ``absurd`` fault: 5138.35 kWh, 1e9, 1e9, 5143.99 kWh (a 10 kW heat
    pump, polled every 60 s). Two equal absurd readings continue "plausibly" from each
    other; they must not become a bound, nor the good reading after them a reset."""
    b, _ = builder(counter(unit="kWh", max_rate=energy_rate_limit(10, "kWh")))
    readings = [(T0, 5138.0), (T0 + 60, 1e9), (T0 + 120, 1e9), (T0 + 180, 5139.0), (T0 + 240, 1e9),
                (T0 + 300, 5140.0)]  # fmt: skip
    feed(b, readings)
    [rec] = b.close_due(T0 + L + 30)
    assert rec.delta == 2.0 and rec.counter_end == 5140.0 and rec.counter_end_time_ms == (T0 + 300) * 1000
    assert "reset" not in rec.flags and "invalid_value" in rec.flags
    assert rec.samples == 3 and b.counts.invalid == 3


def test_a_sunspec_not_implemented_zero_is_not_a_meter_replacement() -> None:
    """An acc32 energy register reads 0 (SunSpec's not-implemented marker, decoded as a real
    0) between 1903 Wh and 1905 Wh: not two resets keeping 320 of 1903 Wh."""
    b, _ = builder(counter(max_rate=energy_rate_limit(5, "Wh"), modulus=2.0**32))
    feed(b, [(T0 + 60 * i, 1900.0 + i) for i in range(4)])  # 1900 .. 1903
    feed(b, [(T0 + 240, 0.0), (T0 + 300, 1905.0), (T0 + 360, 0.0), (T0 + 420, 0.0), (T0 + 480, 1908.0)])
    [rec] = b.close_due(T0 + L + 30)
    assert rec.delta == 8.0 and "reset" not in rec.flags and "rollover" not in rec.flags


def test_a_short_glitch_across_a_boundary_is_spanned_by_the_next_good_reading() -> None:
    b, _ = builder(counter(max_rate=energy_rate_limit(5, "Wh")))
    feed(b, [(T0 + 600, 100.0), (T0 + 840, 0.0), (T0 + L + 60, 0.0), (T0 + L + 120, 130.0)])
    first, second = b.close_due(T0 + 2 * L + 30)
    assert first.counter_end == 100.0 and first.delta == 0.0 and "invalid_value" in first.flags
    assert second.counter_start == 100.0 and second.delta == 30.0 and "reset" not in second.flags


def test_a_meter_replaced_is_a_reset_once_the_new_level_holds() -> None:
    """The counter drops and stays down, rising plausibly from the new value: a reset,
    confirmed when the new level has held for CONFIRM_READINGS readings over an interval
    length; the jump (and only the jump) is excluded."""
    b, _ = builder(counter(max_rate=energy_rate_limit(5, "Wh")))
    old = [(T0 + 60 * i, 5000.0 + 10 * i) for i in range(10)]  # .. 5090 at T0 + 540
    new = [(T0 + 600 + 60 * i, 3.0 + 5 * i) for i in range(20)]  # 3 .. 98 at T0 + 1740
    feed(b, old + new)
    recs = b.close_due(T0 + 3 * L + 30)
    assert [r.flags.count("reset") for r in recs] == [0, 1, 0]
    assert recs[0].counter_end == 5090.0 and recs[0].delta == 90.0
    confirmed = recs[1]  # the new level held for 900 s at T0 + 1500
    assert confirmed.counter_start == 5090.0 and confirmed.counter_end == 98.0
    assert confirmed.delta == 98.0 - 3.0 and recs[2].counter_start == 98.0
    assert _total(recs) == 90.0 + 95.0


def test_a_rise_judged_against_receipt_times_close_together_is_not_a_jump() -> None:
    """An MQTT plug (2 kW, stamped on receipt) reporting every 10 s: one message is held up
    9.99 s and arrives 10 ms before the next. The rise between them is not impossible; no
    energy is excluded and no reading is flagged."""
    plug = counter(unit="Wh", poll_period=10.0, max_rate=energy_rate_limit(2, "Wh"), stats_quantity=None)
    b, _ = builder(plug)
    stamps = [T0 + 10.0 * i for i in range(60)]
    stamps[30] += 9.99  # delivered 10 ms before message 31
    feed(b, [(t, 100.0 + 5.0 * i) for i, t in enumerate(stamps)])  # 1.8 kW
    [rec] = b.close_due(T0 + L + 30)
    assert rec.delta == 5.0 * 59 and rec.flags == ("first", "gap")  # 60 of 90 messages


def test_a_burst_of_delayed_messages_loses_no_energy() -> None:
    """Messages taken every 10 s; the broker holds twelve of them for two minutes, then
    delivers them 1 ms apart (stamped on receipt)."""
    plug = counter(unit="Wh", poll_period=10.0, max_rate=energy_rate_limit(2, "Wh"), stats_quantity=None)
    b, _ = builder(plug)
    taken = [T0 + 10.0 * i for i in range(80)]
    stamps = [t if not 20 <= i < 32 else T0 + 320 + (i - 20) / 1000 for i, t in enumerate(taken)]
    feed(b, [(t, 100.0 + 5.0 * i) for i, t in enumerate(stamps)])
    [rec] = b.close_due(T0 + L + 30)
    assert rec.delta == 5.0 * 79 and not {"invalid_value", "reset"} & set(rec.flags)


def test_a_stuck_zero_on_a_new_counter_invents_nothing_when_the_counter_comes_back() -> None:
    """A new SunSpec inverter at 300 Wh reads 0 (its acc32 not-implemented marker) for 20
    minutes: longer than the confirmation time, so 0 is taken for a new meter (reset).
    The next good reading, 310 Wh, would be a plausible rise from 0 (crediting the 300 Wh
    again), but it continues the old track more closely: the reset is undone, and the
    intervals credit exactly 11 Wh."""
    b, _ = builder(counter(max_rate=energy_rate_limit(5, "Wh"), modulus=2.0**32))
    feed(b, [(T0 + 60, 300.0)] + [(T0 + 60 * k, 0.0) for k in range(2, 23)] + [(T0 + 1380, 310.0)])
    feed(b, [(T0 + 1440, 311.0)])
    recs = b.close_due(T0 + 2 * L + 30)
    assert _total(recs) == 311.0 - 300.0
    assert all(r.delta is not None and r.delta >= 0 for r in recs) and recs[-1].counter_end == 311.0


def test_a_stuck_absurd_value_is_undone_when_the_counter_comes_back() -> None:
    b, _ = builder(counter(unit="kWh", max_rate=energy_rate_limit(10, "kWh")))
    stuck = [(T0 + 60 * k, 1e9) for k in range(2, 40)]  # 38 minutes: taken for a meter replaced
    feed(b, [(T0 + 60, 5138.0), *stuck, (T0 + 2400, 5144.0), (T0 + 2460, 5144.5)])
    recs = b.close_due(T0 + 3 * L + 30)
    assert [r.flags.count("reset") for r in recs] == [0, 1, 1]  # taken at T0 + 1020, then undone
    assert _total(recs) == 6.5 and all((r.delta or 0.0) >= 0 for r in recs)


def test_a_new_meter_idle_at_zero_then_running_stays_a_reset() -> None:
    """A meter replaced by a new one that stays at 0 for an hour, then runs: its readings
    never continue the old track, so the reset stands and only its own energy counts."""
    b, _ = builder(counter(max_rate=energy_rate_limit(5, "Wh")))
    feed(b, [(T0 + 60, 5000.0)] + [(T0 + 60 * k, 0.0) for k in range(2, 62)])
    feed(b, [(T0 + 60 * k, 20.0 * (k - 61)) for k in range(62, 80)])  # 20 Wh a minute from 0
    recs = b.close_due(T0 + 6 * L + 30)
    assert [f for r in recs for f in r.flags].count("reset") == 1
    assert _total(recs) == 20.0 * 18


def test_a_used_meter_fitted_idle_then_running_is_not_taken_back_to_the_old_track() -> None:
    """A used meter 50 kWh above the old one, idle for two hours (by then 50 kWh is within
    reach of the old track at 3 x rated power), then running: it continues its own level,
    so its 50 kWh jump is never credited."""
    b, _ = builder(counter(unit="Wh", max_rate=energy_rate_limit(10, "Wh")))
    feed(b, [(T0 + 60, 5000.0)] + [(T0 + 60 * k, 55000.0) for k in range(2, 122)])
    feed(b, [(T0 + 60 * k, 55000.0 + 50.0 * (k - 121)) for k in range(122, 130)])
    recs = b.close_due(T0 + 10 * L + 30)
    assert [f for r in recs for f in r.flags].count("reset") == 1
    assert _total(recs) == 50.0 * 8


def test_the_rate_limit_covers_heat_meter_units() -> None:
    """Without a rate an absurd rise is a plausible one: every energy unit gets the limit."""
    per_s = {u: energy_rate_limit(3.6, u) for u in ("Wh", "kWh", "MWh", "MJ", "GJ", "m3")}
    assert per_s["Wh"] == pytest.approx(3.0) and per_s["kWh"] == pytest.approx(0.003)
    assert per_s["MJ"] == pytest.approx(3 * 3.6 * 3.6 / 3600) and per_s["GJ"] == pytest.approx(
        3 * 3.6 * 0.0036 / 3600
    )
    assert per_s["MWh"] == pytest.approx(3e-6) and per_s["m3"] is None
