"""The demo's ground-truth check, as pure logic: true energy between a record's readings."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest

from aggregator.methodology.series import SeriesKey
from firmware_sim.meter import MWS_PER_WH, Meter
from firmware_sim.physics import LoadModel
from puhui.demo.truth import reading_truth

T0 = 1_768_150_800  # 2026-01-11T17:00:00Z, a 900 s boundary


@dataclass
class Rec:
    meter: str
    quantity: str
    start: int
    end: int
    counter_start_time_ms: int | None
    counter_end_time_ms: int | None


def setup() -> tuple[SimpleNamespace, SimpleNamespace, Meter]:
    meter = Meter(LoadModel(seed=3), start=T0 - 900, step_s=10, interval_s=900, log_steps=True)
    meter.advance_to(T0 + 4 * 900)
    run = SimpleNamespace(steps={("m1", "main"): meter.step_log()}, fleet_kinds={})
    keys = [SeriesKey("m1", "energy_import", "electricity_mwh")]
    comp = SimpleNamespace(
        series=SimpleNamespace(keys=keys, values=np.zeros((1, 4))),
        period=SimpleNamespace(start=T0),
        interval_s=900,
    )
    return run, comp, meter


def true_wh(meter: Meter, a: float, b: float) -> float:
    log = meter.step_log()
    assert log is not None
    return (log.at(b)[0] - log.at(a)[0]) / MWS_PER_WH


def test_each_cell_is_the_true_energy_between_its_own_readings() -> None:
    # Readings land late, and irregularly: 3 s, 410 s (a poll missed the boundary), 37 s.
    times = [T0 - 900 + 3, T0 + 410, T0 + 1800 + 37, T0 + 2700 + 2]
    run, comp, meter = setup()
    records = [
        Rec("m1", "energy_import", T0 + 900 * k, T0 + 900 * (k + 1), round(a * 1000), round(b * 1000))
        for k, (a, b) in enumerate(pairwise(times))
    ]
    used = np.array([[True, True, False, True]])
    rt = reading_truth(run, comp, records, used)  # type: ignore[arg-type]
    want = [true_wh(meter, a, b) * 1e-6 for a, b in pairwise(times)]
    assert rt.values[0, 0] == pytest.approx(want[0], rel=1e-12)
    assert rt.values[0, 1] == pytest.approx(want[1], rel=1e-12)
    assert rt.values[0, 2] == 0.0  # not credited: not looked at
    assert len(rt.unchecked) == 1 and rt.unchecked[0].startswith("m1/energy_import ")  # slot 3: no record
    assert want[1] > 0 and rt.values[0, 1] != pytest.approx(want[0])  # the cells differ
    assert list(rt.offsets) == pytest.approx([410 - 900, 1837 - 1800])


def test_a_credited_cell_without_reading_times_cannot_pass() -> None:
    run, comp, _ = setup()
    records = [Rec("m1", "energy_import", T0, T0 + 900, None, round((T0 + 903) * 1000))]
    rt = reading_truth(run, comp, records, np.array([[True, False, False, False]]))  # type: ignore[arg-type]
    assert len(rt.unchecked) == 1 and rt.values.sum() == 0.0
