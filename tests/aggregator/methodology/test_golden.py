"""Golden cases, computed by hand from the reference formulas (arithmetic written out).

Every case is a period of 40 fifteen-minute intervals sealed into real signed batches. The
data contain a gap, an implausible interval, a counter reset and a rejected reading: four
intervals earn nothing, so completeness is 36/40 = 0.9, exactly the shipped threshold.
One more gap puts the period below the threshold: then nothing is credited at all.
"""

from __future__ import annotations

import math

import pytest

from aggregator.methodology import (
    Period,
    PerSessionCounter,
    Subject,
    Unit,
    compute,
    issue_statement,
    load_parameter_set,
    parse_parameter_set,
)
from aggregator.methodology.params import PARAMS_DIR
from aggregator.view import MeterInfo
from evidence import generate_key

from .evidence_fixture import T0, SealedEvidence, counter_records

N = 40
PERIOD = Period(T0, T0 + N * 900)
GAP, IMPLAUSIBLE, RESET, INVALID = 3, 7, 11, 15
FLAGS = {RESET: ("reset",), INVALID: ("invalid_value",)}


def deltas(value: float, *, gaps: tuple[int, ...] = (GAP,)) -> list[float | None]:
    return [None if i in gaps else value for i in range(N)]


def params(name: str):  # type: ignore[no-untyped-def]
    return load_parameter_set(PARAMS_DIR / f"{name}.yaml")


def pv_source(gaps: tuple[int, ...] = (GAP,)) -> SealedEvidence:
    src = SealedEvidence()
    src.enrol(MeterInfo("gw-pv", "house-01-grid", "pv", 6.5, "1.0"))
    recs = counter_records("house-01-grid", "energy_export", deltas(1.25, gaps=gaps), flags=FLAGS)
    recs += counter_records("house-01-grid", "energy_import", deltas(0.5), first_value=50.0)
    src.seal(
        "gw-pv",
        recs,
        issues={("house-01-grid", "energy_export", T0 + IMPLAUSIBLE * 900): ("energy_above_nameplate",)},
    )
    return src


def test_pv_export_golden() -> None:
    comp = compute(
        pv_source(), params("pv-export-mee"), Subject.of_meters("gw-pv", ["house-01-grid"]), PERIOD
    )
    r = comp.result
    # 40 intervals - gap - implausible - reset - invalid_value = 36 credited, 1.25 kWh each.
    eg_mwh = 36 * 1.25 / 1000  # 0.045 MWh exported (import is never credited)
    ef = 0.5306  # MEE/NBS national average 2023, tCO2/MWh (meter names no region)
    be = eg_mwh * ef  # 0.023877 tCO2e
    assert r.completeness[0] == 36 / 40
    assert math.isclose(r.totals["energy_mwh"][0], eg_mwh, rel_tol=1e-12)
    assert r.totals_be_pe_le == pytest.approx((be, 0.0, 0.0), rel=1e-12)
    assert r.er == pytest.approx(be, rel=1e-12)
    assert r.used == 36
    assert r.excluded == {
        "flag:gap": 1,
        "implausible:energy_above_nameplate": 1,
        "flag:reset": 1,
        "flag:invalid_value": 1,
    }


def test_pv_shanghai_credits_generation_at_042() -> None:
    src = SealedEvidence()
    src.enrol(MeterInfo("gw-pv", "house-01-inverter", "pv", 6.5, "1.0", region="hebei"))
    src.seal("gw-pv", counter_records("house-01-inverter", "energy_generated", deltas(2000.0), unit="Wh"))
    comp = compute(src, params("pv-shanghai"), Subject.of_meters("gw-pv", ["house-01-inverter"]), PERIOD)
    eg_mwh = 39 * 2000 / 1e6  # 39 intervals (one gap) of 2 kWh = 0.078 MWh
    be = eg_mwh * 0.42  # Shanghai programme 0.42 kgCO2/kWh = 0.42 tCO2/MWh, whatever the region
    assert comp.result.er == pytest.approx(be, rel=1e-12)


def test_pv_below_completeness_is_not_credited() -> None:
    src = pv_source(gaps=(GAP, 20))
    comp = compute(src, params("pv-export-mee"), Subject.of_meters("gw-pv", ["house-01-grid"]), PERIOD)
    r = comp.result
    assert r.completeness[0] == 35 / 40  # 0.875 < 0.9
    assert not r.credited[0] and r.er == 0.0 and r.used == 0
    assert r.excluded["period_below_completeness"] == 35
    body = issue_statement(comp, generate_key(), created_ms=0).body
    assert body["completeness"]["units_below_threshold"] == ["house-01-grid"]
    assert body["evidence"]["series"][0]["credited_runs"] == []


def ev_source(quantity: str = "energy_delivered", gaps: tuple[int, ...] = (GAP,)) -> SealedEvidence:
    src = SealedEvidence()
    src.enrol(MeterInfo("gw-ev", "alfen-1", "ev_charging", 22.0, "1.0"))
    recs = counter_records("alfen-1", quantity, deltas(2000.0, gaps=gaps), unit="Wh", flags=FLAGS)
    src.seal("gw-ev", recs, issues={("alfen-1", quantity, T0 + IMPLAUSIBLE * 900): ("counter_decrease",)})
    return src


def test_ev_golden() -> None:
    comp = compute(ev_source(), params("ev-charging-jjj"), Subject.of_meters("gw-ev", ["alfen-1"]), PERIOD)
    e_kwh = 36 * 2000 / 1000  # 72 kWh charged in credited intervals
    km = e_kwh / 0.15  # EC_ev 15 kWh/100 km -> 480 km
    improvement = 0.99 ** (2025 - 2024)  # AMS-III.C factor, one year after the base year
    be = km * 0.07 * 2.37 / 1000 * improvement  # SFC 7 L/100 km, petrol 2.37 kgCO2/L
    pe = e_kwh / 1000 * 0.6361  # North China grid 2023, tCO2/MWh, no grid loss
    assert (be, pe) == pytest.approx((0.07883568, 0.0457992), rel=1e-12)  # the numbers, by hand
    assert comp.result.totals_be_pe_le == pytest.approx((be, pe, 0.0), rel=1e-12)
    assert comp.result.er == pytest.approx(be - pe, rel=1e-12)
    assert comp.result.excluded == {
        "flag:gap": 1,
        "implausible:counter_decrease": 1,
        "flag:reset": 1,
        "flag:invalid_value": 1,
    }


def test_ev_below_completeness() -> None:
    comp = compute(
        ev_source(gaps=(GAP, 30)), params("ev-charging-jjj"), Subject.of_meters("gw-ev", ["alfen-1"]), PERIOD
    )
    assert comp.result.completeness[0] == 35 / 40 and comp.result.er == 0.0


def test_ev_per_session_counter_refused_or_converted() -> None:
    src = ev_source("session_energy")
    subject = Subject.of_meters("gw-ev", ["alfen-1"])
    with pytest.raises(PerSessionCounter, match="alfen-1: session_energy is a per-session counter"):
        compute(src, params("ev-charging-jjj"), subject, PERIOD)
    text = (
        (PARAMS_DIR / "ev-charging-jjj.yaml").read_bytes().replace(b"counters: refuse", b"counters: convert")
    )
    comp = compute(src, parse_parameter_set(text), subject, PERIOD)
    assert comp.result.totals["energy_mwh"][0] == pytest.approx(36 * 2000 / 1e6, rel=1e-12)


def heating_source(gaps: tuple[int, ...] = (GAP,)) -> SealedEvidence:
    src = SealedEvidence()
    src.enrol(
        MeterInfo("gw-heat", "hp-01-elec", "clean_heating", 12.0, "1.0"),
        MeterInfo("gw-heat", "hp-01-heat", "clean_heating", 12.0, "2.0"),
        MeterInfo("gw-heat", "boiler-01", "clean_heating", 9.0, "1.0"),
    )
    elec = counter_records(
        "hp-01-elec", "energy_import", deltas(2.0, gaps=()), flags={RESET: ("reset",)}
    )  # 2 kWh per interval
    heat = counter_records(
        "hp-01-heat", "heat_energy", deltas(6000.0, gaps=gaps), unit="Wh", flags={INVALID: ("invalid_value",)}
    )  # 6 kWh of heat per interval: COP 3
    boiler = counter_records("boiler-01", "energy_import", deltas(2.0, gaps=()))
    issue = {("hp-01-elec", "energy_import", T0 + IMPLAUSIBLE * 900): ("energy_above_nameplate",)}
    src.seal("gw-heat", elec + heat + boiler, issues=issue)
    return src


HOUSE = Unit("hp-01", ("hp-01-elec", "hp-01-heat"))


def test_heating_heat_metered_golden() -> None:
    comp = compute(heating_source(), params("clean-heating-hebei"), Subject("gw-heat", (HOUSE,)), PERIOD)
    r = comp.result
    # Slots 3 (heat gap), 7 (elec implausible), 11 (elec reset), 15 (heat invalid) earn nothing
    # for the house: its partner interval in each of those slots is excluded with them.
    q_gj = 36 * 6.0 * 0.0036  # 216 kWh of heat = 0.7776 GJ
    be = q_gj / 0.75 * (94.6 / 1000)  # eta_BL 0.75, IPCC other bituminous 94.6 tCO2/TJ
    e_mwh = 36 * 2.0 / 1000  # 0.072 MWh
    pe = e_mwh * 0.6516  # Hebei 2023 average, tCO2/MWh
    assert (be, pe) == pytest.approx((0.09808128, 0.0469152), rel=1e-12)
    assert r.totals_be_pe_le == pytest.approx((be, pe, 0.0), rel=1e-12)
    assert r.er == pytest.approx(be - pe, rel=1e-12)
    assert not r.estimated[0]
    assert r.excluded == {
        "flag:gap": 1,
        "flag:invalid_value": 1,
        "flag:reset": 1,
        "implausible:energy_above_nameplate": 1,
        "partner_interval_excluded": 4,
    }
    assert r.used == 72  # 36 slots x 2 series


def test_heating_estimated_from_cop_floors_at_zero() -> None:
    comp = compute(
        heating_source(), params("clean-heating-hebei"), Subject.of_meters("gw-heat", ["boiler-01"]), PERIOD
    )
    r = comp.result
    e_kwh = 40 * 2.0  # all 40 intervals credited
    q_gj = e_kwh * 0.95 * 0.0036  # conservative COP 0.95 -> 0.2736 GJ, flagged estimated
    be = q_gj / 0.75 * 0.0946  # 0.03451008 t
    pe = e_kwh / 1000 * 0.6516  # 0.052128 t
    assert r.totals_be_pe_le == pytest.approx((be, pe, 0.0), rel=1e-12)
    assert be - pe < 0 and r.er == 0.0  # never negative for a period
    body = issue_statement(comp, generate_key(), created_ms=0).body
    assert body["result"]["er_floored_at_zero"] and body["result"]["estimated_activity"]


def test_heating_cop_out_of_range_is_excluded() -> None:
    src = SealedEvidence()
    src.enrol(
        MeterInfo("gw", "e", "clean_heating", 12.0, "1.0"), MeterInfo("gw", "h", "clean_heating", 12.0, "1.0")
    )
    heat = [6.0] * N
    heat[5] = 20.0  # COP 10 > 6
    heat[6] = 1.0  # COP 0.5 < 0.9
    src.seal(
        "gw", counter_records("e", "energy_import", [2.0] * N) + counter_records("h", "heat_energy", heat)
    )
    comp = compute(src, params("clean-heating-hebei"), Subject("gw", (Unit("u", ("e", "h")),)), PERIOD)
    assert comp.result.excluded == {"cop_out_of_range": 4}  # both series in both slots
    assert comp.result.completeness[0] == 38 / 40


def test_heating_below_completeness() -> None:
    comp = compute(
        heating_source(gaps=(GAP, 33)), params("clean-heating-hebei"), Subject("gw-heat", (HOUSE,)), PERIOD
    )
    assert comp.result.completeness[0] == 35 / 40 and comp.result.er == 0.0
