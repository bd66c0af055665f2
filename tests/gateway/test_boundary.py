"""Counter readings just after a boundary close the interval that ended (``boundary_s``)."""

from __future__ import annotations

import pytest

from gateway.errors import IntervalError
from gateway.intervals import IntervalBuilder, SeriesSpec
from gateway.sample import Sample
from puhui.clock import ManualClock

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
