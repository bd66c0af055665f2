"""Physics and exact integration: fast tier, no I/O."""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.meter import MWS_PER_WH, Meter
from firmware_sim.physics import (
    EvModel,
    HeatingModel,
    LoadModel,
    PvHouseModel,
    PvModel,
    clear_sky_poa,
    heat_pump_cop,
    outdoor_temperature,
)
from firmware_sim.physics.sample import PowerModel

JAN15 = datetime.datetime(2025, 1, 15, tzinfo=datetime.UTC).timestamp()
JUN21 = datetime.datetime(2025, 6, 21, tzinfo=datetime.UTC).timestamp()
WEEK = 7 * 86400
ZJK = (40.77, 114.88)


def models(seed: int) -> dict[str, PowerModel]:
    pv = PvModel(6.5, *ZJK, seed=seed)
    return {
        "pv": pv,
        "heat_pump": HeatingModel(seed=seed),
        "boiler_heat": HeatingModel(heater="electric_boiler", output="heat", seed=seed),
        "ev": EvModel(22.0, arrivals_per_day=5, seed=seed),
        "load": LoadModel(seed=seed),
        "pv_house": PvHouseModel(pv, LoadModel(seed=seed)),
    }


@pytest.mark.parametrize("name", list(models(0)))
def test_counter_is_the_integral_of_reported_power_over_a_week(name: str) -> None:
    model = models(7)[name]
    meter = Meter(model, start=JAN15, step_s=10, interval_s=900, initial_wh=1234.5)
    integral_mws = 0
    last_counter = meter.counter_mws()
    t = JAN15
    while t < JAN15 + WEEK:
        p_mw = round(meter.sample.power_w * 1000)  # the power a device reports now
        integral_mws += max(p_mw, 0) * 10
        t += 10
        meter.advance_to(t)
        assert meter.counter_mws() >= last_counter  # monotonic
        last_counter = meter.counter_mws()
    assert meter.forward_mws == integral_mws
    assert meter.counter_mws() == round(1234.5 * MWS_PER_WH) + integral_mws
    truth = meter.ground_truth()
    assert len(truth.intervals) == WEEK // 900
    assert sum(i.forward_mws for i in truth.intervals) == integral_mws
    for a, b in zip(truth.intervals, truth.intervals[1:], strict=False):
        assert a.end == b.start and a.counter_end_wh == b.counter_start_wh
    for i in truth.intervals:
        assert i.counter_end_wh - i.counter_start_wh == pytest.approx(i.forward_wh, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=1, max_value=40_000), min_size=1, max_size=30),
    seed=st.integers(0, 2**32),
)
def test_chunking_does_not_change_anything(chunks: list[int], seed: int) -> None:
    """Advancing in odd chunks gives exactly what one big advance gives (determinism)."""
    a = Meter(EvModel(11.0, 6.0, seed=seed), start=JAN15, step_s=10, interval_s=900)
    b = Meter(EvModel(11.0, 6.0, seed=seed), start=JAN15, step_s=10, interval_s=900)
    t = JAN15
    for c in chunks:
        t += c
        a.advance_to(t)
    b.advance_to(t)
    assert a.ground_truth() == b.ground_truth()


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    def run(seed: int) -> list[int]:
        m = Meter(models(seed)["pv_house"], start=JUN21, step_s=60, interval_s=900)
        m.advance_to(JUN21 + 86400)
        return [i.forward_mws - i.reverse_mws for i in m.ground_truth().intervals]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_pv_is_zero_at_night_and_peaks_plausibly() -> None:
    pv = PvModel(10.0, *ZJK, cloudiness=0.0)
    # 00:00 local = 16:00 UTC of the previous day; local noon = 04:00 UTC.
    assert pv.power_w(JUN21 - 8 * 3600) == 0.0
    assert pv.power_w(JUN21 + 16 * 3600) == 0.0
    day = [pv.power_w(JUN21 + s) for s in range(0, 86400, 300)]
    assert 0.6 * 10_000 < max(day) <= 1.0 * 10_000
    winter = max(pv.power_w(JAN15 + s) for s in range(0, 86400, 300))
    assert 0.3 * 10_000 < winter < max(day) * 1.1
    assert clear_sky_poa(JUN21 + 4 * 3600, *ZJK, 30) > 800


def test_clouds_only_reduce_output() -> None:
    clear = PvModel(5.0, *ZJK, cloudiness=0.0)
    cloudy = PvModel(5.0, *ZJK, cloudiness=1.0, seed=9)
    for s in range(0, 86400, 600):
        assert 0.0 <= cloudy.power_w(JUN21 + s) <= clear.power_w(JUN21 + s)


def test_zhangjiakou_winter_is_cold_and_summer_warm() -> None:
    jan = [outdoor_temperature(JAN15 + h * 3600, 1) for h in range(24 * 30)]
    jul = [outdoor_temperature(JUN21 + 25 * 86400 + h * 3600, 1) for h in range(24 * 30)]
    assert -16 < sum(jan) / len(jan) < -4
    assert min(jan) > -35 and max(jan) < 10
    assert 18 < sum(jul) / len(jul) < 30


def test_heat_pump_cop_range_and_energy_balance() -> None:
    assert heat_pump_cop(7.0) == pytest.approx(3.32)
    assert heat_pump_cop(-7.0) == pytest.approx(2.48)
    assert all(1.5 <= heat_pump_cop(t) <= 5.0 for t in range(-40, 40))
    elec = HeatingModel(seed=5)
    heat = HeatingModel(seed=5, output="heat")
    for s in range(0, 86400, 3600):
        e, h = elec.sample(JAN15 + s, 10), heat.sample(JAN15 + s, 10)
        assert e.outdoor_c is not None
        assert h.power_w == pytest.approx(e.power_w * heat_pump_cop(e.outdoor_c))
        assert h.flow_c is not None and h.return_c is not None and h.flow_c > h.return_c
        assert h.flow_m3h is not None and h.flow_m3h > 0


def test_ev_sessions_respect_the_power_limit_and_depart() -> None:
    ev = EvModel(11.0, arrivals_per_day=8, seed=2)
    samples = [ev.sample(JAN15 + k * 10, 10) for k in range(3 * 8640)]
    assert max(s.power_w for s in samples) <= 11_000
    states = {s.ev_state for s in samples}
    assert states == {"A", "B1", "C2"}
    sessions = {s.session for s in samples}
    assert len(sessions) > 5


def test_reset_and_rollover_keep_true_energy() -> None:
    m = Meter(LoadModel(seed=1), start=JAN15, step_s=10, interval_s=900, modulus_wh=2.0**32)
    m.advance_to(JAN15 + 3600)
    before = m.forward_mws
    m.reset()
    assert m.counter_wh() == 0.0
    m.advance_to(JAN15 + 7200)
    m.rollover(margin_wh=10.0)
    m.advance_to(JAN15 + 3 * 3600)
    truth = m.ground_truth()
    assert truth.forward_mws > before
    events = [e for i in truth.intervals for e in i.events]
    assert [e.split("@")[0] for e in events] == ["reset", "rollover"]
    assert truth.counter_wh < 2.0**32 and not math.isnan(truth.counter_wh)
    wrapped = [i for i in truth.intervals if i.counter_end_wh < i.counter_start_wh]
    assert len(wrapped) == 2  # one at the reset, one when it wrapped past 2**32 Wh


@settings(max_examples=25, deadline=None)
@given(
    reads=st.lists(st.floats(min_value=0, max_value=86_400, allow_nan=False), min_size=1, max_size=40),
    seed=st.integers(0, 2**32),
)
def test_step_log_gives_what_a_counter_read_at_any_time_shows(reads: list[float], seed: int) -> None:
    """Truth between any two reading times: the step log at time t is exactly the energy
    in the visible counter of a meter read at t (no resets here, so counter = base + true)."""
    start = JAN15 + 3  # off the step grid: the log starts at the step in progress
    m = Meter(models(seed % 1000)["pv_house"], start=start, step_s=10, interval_s=900,
              initial_wh=5.0, log_steps=True)  # fmt: skip
    base = round(5.0 * MWS_PER_WH)
    seen = []
    for t in sorted(start + r for r in reads):
        m.advance_to(t)
        seen.append((t, m.counter_mws() - base, m.reverse_counter_mws()))
    log = m.step_log()
    assert log is not None and log.t0 == math.floor(start / 10) * 10
    for t, fwd, rev in seen:
        assert log.at(t) == (fwd, rev)
    with pytest.raises(ValueError, match="outside the step log"):
        log.at(start - 20)
    assert Meter(LoadModel(seed=1), start=JAN15, step_s=10, interval_s=900).step_log() is None
