"""Properties of the interval chain: nothing invented, nothing lost (issue 15, items 1-3).

- Readings: any interleaving of invalid, NaN, absurd, zero (SunSpec's acc32 marker),
  negative, duplicate, late and out-of-order readings with the good ones of a true
  monotone counter, stamped on receipt after a varying delay (bursts included), credits
  exactly the energy between the first and the last good reading; a glitch never becomes
  a bound. A glitch stuck past the confirmation time is taken for a meter replaced and
  undone when the counter returns: the energy is still exact. With a genuine meter
  replacement in the data, exactly one reset is flagged and only the jump is excluded.
- Submits: for any sequence of failed submits and restarts (restored from the state the
  sink last persisted), every closed interval ends in the sink exactly once, and one whose
  readings the restart lost says ``gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.contract import Invalid, Sample
from evidence.records import IntervalRecord
from gateway.intervals import CONFIRM_READINGS, IntervalBuilder, SeriesSpec, energy_rate_limit
from gateway.runtime import IntervalHandover

L = 900
T0 = 1_700_000_100 - 1_700_000_100 % L
P = 60.0  # expected period between readings
RATED_KW = 10.0
TRUE_WH_PER_S = RATED_KW * 1000 / 3600  # the true counter never runs faster than the nameplate


def spec(modulus: float | None) -> SeriesSpec:
    return SeriesSpec("m1", "energy_import", "Wh", "counter", P, modulus=modulus,
                      max_rate=energy_rate_limit(RATED_KW, "Wh"))  # fmt: skip


# -- readings ----------------------------------------------------------------------------------

GLITCHES: list[float | Invalid] = [
    math.nan,
    math.inf,
    Invalid("not_implemented"),
    1e12,  # firmware_sim's absurd energy
    4294967294.0,  # a saturated uint32
    0.0,  # SunSpec acc32 not implemented, decoded as a real 0
    -5.0,
]


@dataclass(frozen=True)
class Reading:
    value: float | Invalid
    stamp: float  # Sample.time: the receipt time (or an old one, re-delivered)
    good: bool


@st.composite
def good_readings(draw: st.DrawFn, n_min: int = 2, low: int = 100) -> list[tuple[float, float, float]]:
    """(taken, stamp, value): a true counter from ``low`` Wh or more, read every ~P s with
    gaps (downtime), stamped on receipt after a delay of up to 2 P; delivery keeps the
    order they were taken in."""
    n = draw(st.integers(n_min, 60))
    value = float(draw(st.integers(low, 10**6)))
    taken = stamp = float(T0 + draw(st.integers(0, L - 1)))
    out = [(taken, stamp, value)]
    for _ in range(n - 1):
        gap = draw(st.sampled_from([P, P, P, 1.0, 5.0, 30.0, 2 * P, 700.0, 2 * L]))
        taken += gap
        value += draw(st.integers(0, math.floor(TRUE_WH_PER_S * gap)))
        delay = draw(st.sampled_from([0.0, 0.0, 0.5, 10.0, 59.0, 2 * P]))
        stamp = max(taken + delay, stamp + 0.01)
        out.append((taken, stamp, value))
    return out


@st.composite
def with_faults(draw: st.DrawFn, goods: list[tuple[float, float, float]]) -> list[Reading]:
    """The good readings in order, with glitches between them (a short burst: within half an
    interval after a good one) and old readings delivered again (duplicates, out of order,
    late)."""
    out: list[Reading] = []
    for i, (_, stamp, value) in enumerate(goods):
        out.append(Reading(value, stamp, True))
        if i + 1 == len(goods):
            break
        room = min(goods[i + 1][1] - stamp, L / 2)
        burst = draw(st.lists(st.sampled_from(GLITCHES), max_size=3))
        out += [Reading(v, stamp + room * (k + 1) / (len(burst) + 1), False) for k, v in enumerate(burst)]
        if draw(st.integers(0, 4)) == 0:  # an old reading delivered again
            _, old_stamp, old_value = goods[draw(st.integers(0, i))]
            out.append(Reading(old_value, old_stamp, False))
    return out


def build(readings: Sequence[Reading], series: SeriesSpec) -> list[IntervalRecord]:
    """Deliver the readings in order to a builder whose clock follows the receipt times,
    closing intervals as a running gateway would; then close everything."""
    clock = ManualClock(readings[0].stamp)
    builder = IntervalBuilder([series], clock=clock, interval_s=L, grace_s=30.0, max_future_s=1e9)
    now, records = readings[0].stamp, []
    for r in readings:
        now = max(now, r.stamp)
        builder.add(Sample("m1", "energy_import", r.value, r.stamp, "mqtt:receipt"))
        records += builder.close_due(now)
    return records + builder.close_due(now + 3 * L)


def check_chain(records: Sequence[IntervalRecord], goods: set[float]) -> None:
    assert all(a.end == b.start for a, b in itertools.pairwise(records))
    assert all((r.delta or 0.0) >= 0 for r in records)
    bounds = {v for r in records for v in (r.counter_start, r.counter_end) if v is not None}
    assert bounds <= goods, bounds - goods  # a glitch is never a bound


@settings(max_examples=300, deadline=None)
@given(data=st.data(), modulus=st.sampled_from([None, 2.0**32]))
def test_glitches_neither_add_nor_remove_energy(data: st.DataObject, modulus: float | None) -> None:
    goods = data.draw(good_readings())
    readings = data.draw(with_faults(goods))
    records = build(readings, spec(modulus))
    check_chain(records, {v for _, _, v in goods})
    assert sum(r.delta or 0.0 for r in records) == goods[-1][2] - goods[0][2]
    assert not any({"reset", "rollover", "session"} & set(r.flags) for r in records)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    modulus=st.sampled_from([None, 2.0**32]),
    stuck=st.sampled_from([0.0, 1e12, 4294967294.0]),
    minutes=st.integers(1, 45),
)
def test_a_glitch_stuck_past_the_confirmation_time_is_undone_when_the_counter_returns(
    data: st.DataObject, modulus: float | None, stuck: float, minutes: int
) -> None:
    """A device that reads 0 or an absurd value at every poll for up to 45 minutes (three
    confirmation times): once it lasts a confirmation time it is taken for a meter replaced
    (reset), and the counter's return to its old track undoes that; either way the energy
    is exactly last good - first good, small counters included."""
    goods = data.draw(good_readings())
    cut = data.draw(st.integers(0, len(goods) - 2))
    gap = 60.0 * (minutes + 1)
    gained = data.draw(st.integers(0, math.floor(TRUE_WH_PER_S * gap)))
    after = [(t + gap, stamp + gap, v + gained) for t, stamp, v in goods[cut + 1 :]]
    readings = [Reading(v, stamp, True) for _, stamp, v in goods[: cut + 1]]
    readings += [Reading(stuck, goods[cut][1] + 60.0 * k, False) for k in range(1, minutes + 1)]
    readings += [Reading(v, stamp, True) for _, stamp, v in after]
    records = build(readings, spec(modulus))
    check_chain(records, {v for _, _, v in goods[: cut + 1] + after} | {stuck})
    assert sum(r.delta or 0.0 for r in records) == after[-1][2] - goods[0][2]
    assert [r.counter_end for r in records if r.counter_end is not None][-1] == after[-1][2]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), new=st.integers(0, 500))
def test_a_meter_replaced_among_glitches_excludes_only_the_jump(data: st.DataObject, new: int) -> None:
    """The old meter's good readings, then a new meter's (at least CONFIRM_READINGS over
    more than an interval, each followed by at most one glitch: the new level is what
    most held readings say); exactly one reset, and only the jump is not credited. (The
    old meter reads more than the new one reaches in the confirmation time, else the
    new readings would continue the old ones plausibly.)"""
    old = data.draw(good_readings(low=10**5))
    after = data.draw(good_readings(n_min=CONFIRM_READINGS + 1).filter(lambda g: g[-1][1] - g[0][1] > L))
    shift = old[-1][1] + 600 - after[0][1]  # replaced in ten minutes
    base = after[0][2] - new
    fresh = [(t + shift, s + shift, v - base) for t, s, v in after]
    readings = data.draw(with_faults(old))
    for i, (_, stamp, value) in enumerate(fresh):
        readings.append(Reading(value, stamp, True))
        if i + 1 < len(fresh) and data.draw(st.booleans()):
            glitch = data.draw(st.sampled_from(GLITCHES))
            readings.append(Reading(glitch, (stamp + fresh[i + 1][1]) / 2, False))
    records = build(readings, spec(None))
    check_chain(records, {v for _, _, v in old + fresh})
    assert [f for r in records for f in r.flags].count("reset") == 1
    credited = sum(r.delta or 0.0 for r in records)
    assert credited == (old[-1][2] - old[0][2]) + (fresh[-1][2] - fresh[0][2])


# -- submits -------------------------------------------------------------------------------------


@dataclass
class FlakySink:
    """Stores records and state together, or (when the schedule says so) raises and stores
    nothing, like a transaction that did not commit."""

    failures: list[bool]
    records: list[IntervalRecord] = field(default_factory=list)
    state: Mapping[str, Any] | None = None
    calls: int = 0

    def builder_state(self) -> Mapping[str, Any] | None:
        return self.state

    async def submit(self, records: Sequence[IntervalRecord], builder_state: Mapping[str, Any]) -> None:
        self.calls += 1
        if self.failures and self.failures.pop(0):
            raise sqlite3.OperationalError("database or disk is full")
        self.records.extend(records)
        self.state = builder_state


SPECS = [spec(None), SeriesSpec("m1", "flow_temperature", "degC", "gauge", P)]


def energy(t: float) -> float:
    return float(1000 + 2 * round(t - T0))


async def run_with_failures(sink: FlakySink, plan: list[tuple[int, bool]]) -> dict[int, int]:
    """Eight intervals of readings every P s. ``plan`` per interval: readings missed at its
    start (the gateway down) and whether it restarts after the interval's close. A failed
    close stops the gateway (it submits once more at shutdown, which may fail too) and it
    restarts from what the sink holds (its first submit may fail too). Returns the
    readings fed per interval start."""
    clock = ManualClock(T0 + 5)
    fed: dict[int, int] = {}

    async def start() -> IntervalHandover:
        while True:  # a start whose first submit fails ends that process: start again
            handover = IntervalHandover(IntervalBuilder(SPECS, clock=clock, interval_s=L, grace_s=30.0), sink)
            try:
                await handover.resume()
                return handover
            except sqlite3.OperationalError:
                continue

    handover = await start()
    for k, (down, restart) in enumerate(plan):
        for t in (T0 + k * L + 35 + P * j for j in range(down, 15)):
            await clock.set(t)
            handover.builder.add_many([Sample("m1", "energy_import", energy(t), t),
                                       Sample("m1", "flow_temperature", 40.0, t)])  # fmt: skip
            fed[T0 + k * L] = fed.get(T0 + k * L, 0) + 1
        await clock.set(T0 + (k + 1) * L + 30)
        try:
            await handover.close_due()
        except sqlite3.OperationalError:
            restart = True
        if restart:
            with contextlib.suppress(sqlite3.OperationalError):  # then the process ends
                await handover.persist()  # the shutdown submit
            handover = await start()
    sink.failures.clear()
    await (await start()).close_due()  # a last, successful start
    return fed


@settings(max_examples=200, deadline=None)
@given(
    failures=st.lists(st.booleans(), max_size=30),
    plan=st.lists(st.tuples(st.integers(0, 15), st.booleans()), min_size=8, max_size=8),
)
def test_every_closed_interval_ends_in_the_sink_once_whatever_fails(
    failures: list[bool], plan: list[tuple[int, bool]]
) -> None:
    sink = FlakySink(list(failures))
    fed = asyncio.run(run_with_failures(sink, plan))
    for quantity in ("energy_import", "flow_temperature"):
        starts = [r.start for r in sink.records if r.quantity == quantity]
        assert starts == [T0 + k * L for k in range(8)], (quantity, starts)  # each once, none skipped
    counters = [r for r in sink.records if r.quantity == "energy_import"]
    for r in counters:
        if r.samples < fed.get(r.start, 0) or r.samples < r.expected:
            assert "gap" in r.flags, r  # readings lost with a restart are declared
    with_bounds = [r for r in counters if r.counter_end is not None]
    first, last = with_bounds[0].counter_start, with_bounds[-1].counter_end
    assert first is not None and last is not None
    assert sum(r.delta or 0.0 for r in counters) == last - first  # the energy across every restart
    assert not any({"reset", "invalid_value"} & set(r.flags) for r in counters)
