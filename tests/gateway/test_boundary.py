"""Counter readings just after a boundary close the interval that ended (``boundary_s``)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.contract import Sample
from evidence.records import IntervalRecord
from gateway.errors import IntervalError
from gateway.intervals import IntervalBuilder, SeriesSpec

SPEC = SeriesSpec("m", "energy", "kWh", "counter", 300.0)


async def _run(boundary_s: float, latency: float) -> list[tuple[int, float | None, str]]:
    """Readings at every 300 s slot + ``latency``; the counter is t / 100 kWh."""
    clock = ManualClock(0.0)
    builder = IntervalBuilder([SPEC], clock=clock, interval_s=900, grace_s=30, boundary_s=boundary_s)
    out = []
    for slot in range(0, 3600 + 1, 300):
        t = slot + latency
        await clock.set(t)
        builder.add(Sample("m", "energy", t / 100, t))
        out += builder.close_due(t)
    return [(r.start, r.delta, ",".join(r.flags)) for r in out]


async def test_with_a_tolerance_each_delta_spans_its_own_interval() -> None:
    records = await _run(boundary_s=5.0, latency=0.25)
    # [900, 1800): from the reading at 900.25 to the one at 1800.25: 9 kWh, not shifted
    assert records[1:] == [(900, pytest.approx(9.0), ""), (1800, pytest.approx(9.0), "")]
    assert records[0][0] == 0 and "first" in records[0][2]


async def test_without_a_tolerance_the_boundary_reading_opens_the_next_interval() -> None:
    records = await _run(boundary_s=0.0, latency=0.25)
    # [900, 1800) ends with the reading at 1500.25 and starts with the one at 600.25
    assert records[1][:2] == (900, pytest.approx(9.0))
    assert records[0][1] == pytest.approx(6.0)  # first interval: 0.25 .. 600.25


async def test_a_reading_later_than_the_tolerance_belongs_to_the_new_interval() -> None:
    records = await _run(boundary_s=5.0, latency=6.0)
    assert records[0][1] == pytest.approx(6.0)  # the reading at 906 is not [0, 900)'s end


def test_the_tolerance_must_be_shorter_than_half_an_interval() -> None:
    with pytest.raises(IntervalError, match="boundary tolerance"):
        IntervalBuilder([SPEC], clock=ManualClock(0.0), interval_s=900, boundary_s=450)


async def _run_polled(latencies: list[float]) -> list[tuple[int, int, int, tuple[str, ...]]]:
    """Polled readings at every 300 s slot, answered ``latencies[k]`` later (the poller
    stamps the slot); the counter is t / 100 kWh at the answer's time."""
    clock = ManualClock(0.0)
    builder = IntervalBuilder([SPEC], clock=clock, interval_s=900, grace_s=90, boundary_s=5.0)
    out = []
    for k, slot in enumerate(range(0, 300 * len(latencies), 300)):
        t = slot + latencies[k]
        await clock.set(t)
        out += builder.close_due(t)  # the gateway's timer runs before the answer is in
        builder.add(Sample("m", "energy", t / 100, t, "modbus", slot=float(slot)))
    return [(r.start, r.samples, r.expected, r.flags) for r in out]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=80.0), min_size=16, max_size=40))
def test_polled_readings_close_their_interval_whatever_the_latency(latencies: list[float]) -> None:
    """Answers 0-80 s after their slot, wandering across boundary_s (5 s): every interval
    after the first holds exactly its three slots' readings; none is split into one sample
    too many and the next one too few (as routing by time would)."""
    records = asyncio.run(_run_polled(latencies))
    assert len(records) >= 4  # the first one is partial (it starts at the builder's start)
    assert all(samples == expected == 3 and flags == () for _, samples, expected, flags in records[1:])


async def test_polled_deltas_run_between_boundary_slot_readings() -> None:
    clock = ManualClock(0.0)
    builder = IntervalBuilder([SPEC], clock=clock, interval_s=900, grace_s=90, boundary_s=5.0)
    records = []
    for slot, latency in [
        (0, 1.0),
        (300, 2.0),
        (600, 3.0),
        (900, 40.0),
        (1200, 1.0),
        (1500, 1.0),
        (1800, 7.0),
    ]:
        await clock.set(slot + latency)
        builder.add(Sample("m", "energy", 0.0 + slot + latency, slot + latency, "modbus", slot=float(slot)))
        records += builder.close_due(slot + latency)
    await clock.set(1900.0)
    records += builder.close_due(1900.0)
    second = next(r for r in records if r.start == 900)
    assert second.counter_start_time_ms == 940_000 and second.counter_end_time_ms == 1_807_000
    assert second.delta == pytest.approx(1807.0 - 940.0)


def test_an_answer_after_the_grace_goes_by_its_time_not_late() -> None:
    """A boundary slot's answer that comes after its interval was emitted (latency 40 s >
    grace 30 s) is not lost as ``late``: it opens the next interval, as a reading without
    a slot would, and the deltas still add up to last reading - first reading."""

    async def run() -> list[IntervalRecord]:
        clock = ManualClock(0.0)
        builder = IntervalBuilder([SPEC], clock=clock, interval_s=900, grace_s=30, boundary_s=5.0)
        out: list[IntervalRecord] = []
        for slot in range(300, 3900, 300):
            t = slot + 40.0
            await clock.set(t)
            out += builder.close_due(t)  # the gateway's timer: due at end + grace, before the answer
            builder.add(Sample("m", "energy", t / 100, t, "modbus", slot=float(slot)))
        return out

    records = asyncio.run(run())
    assert len(records) == 4 and not any("late" in r.flags for r in records)
    last = records[-1].counter_end_time_ms
    assert last is not None
    assert sum(r.delta or 0.0 for r in records) == pytest.approx((last / 1000 - 340.0) / 100)


def test_the_first_partial_interval_expects_the_slots_it_will_get() -> None:
    """Started at 100 s: a polled counter's first interval gets the readings of slots 300,
    600 and 900 (the boundary one closes it): 3 expected, not 2 (which would make the
    aggregator call it excess_samples). Without the tolerance, slot 900 opens the next one."""

    async def run(boundary_s: float) -> IntervalRecord:
        clock = ManualClock(100.0)
        builder = IntervalBuilder([SPEC], clock=clock, interval_s=900, grace_s=90, boundary_s=boundary_s)
        for slot in (300, 600, 900, 1200):
            await clock.set(slot + 2.0)
            builder.add(Sample("m", "energy", slot / 100, slot + 2.0, "modbus", slot=float(slot)))
        return builder.close_due(clock.now())[0]

    with_tolerance = asyncio.run(run(5.0))
    assert (with_tolerance.samples, with_tolerance.expected) == (3, 3)
    without = asyncio.run(run(0.0))
    assert (without.samples, without.expected) == (2, 2)
