"""Golden cases for the 2.0.0 parameter sets (issue 23), computed by hand from the formulas.

The evidence is test_golden.py's: 40 fifteen-minute intervals from 2025-06-21 08:00 China
time, four of them excluded (gap, implausible, reset, invalid reading), so 36 are credited.
What changes with 2.0.0: China's default fuel and coal factors, line losses on consumed
electricity, the conservative grid factor among the region's candidates, the programme's
regions, calibration dates, the meter class's maximum permissible error (MPE) and the cap
from a household's recorded coal use.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace

import pytest

from aggregator.methodology import (
    IneligibleSubject,
    Period,
    Subject,
    Unit,
    compute,
    issue_statement,
    load_parameter_set,
    verify_statement,
)
from aggregator.methodology.baseline import HistoricalUse
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.statements import sign_statement
from aggregator.view import MeterInfo
from evidence import generate_key

from .evidence_fixture import T0, SealedEvidence, counter_records
from .test_golden import FLAGS, GAP, IMPLAUSIBLE, INVALID, PERIOD, RESET, deltas

VALID = dt.date(2030, 12, 31)  # calibration valid through the whole test period
KEY = generate_key()


def v2(name: str):  # type: ignore[no-untyped-def]
    return load_parameter_set(PARAMS_DIR / f"{name}-2.0.0.yaml")


def v1(name: str):  # type: ignore[no-untyped-def]
    return load_parameter_set(PARAMS_DIR / f"{name}.yaml")


def ev_source(
    region: str | None = "beijing", calibrated: dt.date | None = VALID, cls: str = "B"
) -> SealedEvidence:
    src = SealedEvidence()
    src.enrol(MeterInfo("gw-ev", "alfen-1", "ev_charging", 22.0, cls, region, calibrated))
    recs = counter_records("alfen-1", "energy_delivered", deltas(2000.0), unit="Wh", flags=FLAGS)
    src.seal(
        "gw-ev", recs, issues={("alfen-1", "energy_delivered", T0 + IMPLAUSIBLE * 900): ("counter_decrease",)}
    )
    return src


EV = Subject.of_meters("gw-ev", ["alfen-1"])


def test_ev_beijing_charger_is_credited_with_the_conservative_grid_factor() -> None:
    comp = compute(ev_source(), v2("ev-charging-jjj"), EV, PERIOD)
    e_mwh = 36 * 2000 / 1e6  # 0.072 MWh charged in credited intervals
    e_be = e_mwh * (1 - 0.01)  # class B MPE 1 %: BE takes the low end, 0.07128 MWh
    km = e_be * 1000 / 0.15  # EC_ev 15 kWh/100 km -> 475.2 km
    be = km * 0.06 * 2.106 / 1000 * 0.99  # SFC 6 L/100 km, petrol 2.106 kgCO2/L, 0.99^(2025-2024)
    e_pe = e_mwh * (1 + 0.01)  # PE takes the high end, 0.07272 MWh
    pe = e_pe / (1 - 0.06) * 0.6361  # 6 % line loss; max(Beijing 0.5554, North China 0.6361, national 0.5306)
    assert (be, pe) == pytest.approx((0.05944580928, 0.04920977872), rel=1e-10)  # the numbers, by hand
    assert comp.result.totals_be_pe_le == pytest.approx((be, pe, 0.0), rel=1e-12)
    assert comp.result.er == pytest.approx(be - pe, rel=1e-12)  # 0.0102360 tCO2e
    body = issue_statement(comp, KEY, created_ms=0).body
    grid = body["units"][0]["grid_factor"]
    assert (grid["value"], grid["region"]) == (0.6361, "north_china")
    assert grid["candidates"] == {"beijing": 0.5554, "north_china": 0.6361, "national": 0.5306}
    assert grid["rule"].startswith("largest candidate: electricity the project consumes")
    assert body["units"][0]["activity_at_mpe"] == {
        "for_be": {"energy_mwh": pytest.approx(e_be)},
        "for_pe": {"energy_mwh": pytest.approx(e_pe)},
    }
    assert body["meters"][0] | {"mpe": 0.01, "calibrated_until": "2030-12-31"} == body["meters"][0]
    assert body["parameters"]["method"]["transmission_loss"]["value"] == 0.06


def test_ev_beijing_charger_under_1_0_0_took_beijings_smaller_factor() -> None:
    comp = compute(ev_source(cls="1.0"), v1("ev-charging-jjj"), EV, PERIOD)
    assert comp.grid[0].value == 0.5554  # the meter's region won: the fault issue 23 names
    assert comp.result.pe[0] == pytest.approx(0.072 * 0.5554, rel=1e-12)  # no loss, no MPE


@pytest.mark.parametrize(
    ("region", "why"),
    [("shanghai", "alfen-1 (region 'shanghai')"), (None, "alfen-1 (its enrolment names no region)")],
)
def test_a_charger_outside_the_programmes_regions_is_refused(region: str | None, why: str) -> None:
    with pytest.raises(IneligibleSubject) as err:
        compute(ev_source(region=region), v2("ev-charging-jjj"), EV, PERIOD)
    assert str(err.value).startswith(
        f"ev-charging-jjj 2.0.0: {why} outside the programme's regions beijing (110000), hebei (130000) ("
    )


def test_a_charger_with_an_expired_calibration_is_refused() -> None:
    last_day = dt.date(2025, 6, 20)  # valid through 2025-06-20 24:00 China time = the period's start
    with pytest.raises(IneligibleSubject) as err:
        compute(ev_source(calibrated=last_day), v2("ev-charging-jjj"), EV, PERIOD)
    assert "alfen-1: calibration valid until 2025-06-20 (China time), before the period starts" in str(
        err.value
    )
    with pytest.raises(IneligibleSubject, match="alfen-1: its enrolment names no calibration date"):
        compute(ev_source(calibrated=None), v2("ev-charging-jjj"), EV, PERIOD)
    with pytest.raises(
        IneligibleSubject, match=re.escape("alfen-1 (class '1.0'): no maximum permissible error")
    ):
        compute(ev_source(cls="1.0"), v2("ev-charging-jjj"), EV, PERIOD)


def test_readings_after_the_calibration_date_earn_nothing() -> None:
    # 96 intervals from 08:00 China time: the calibration (valid through 2025-06-21, China time)
    # ends at 2025-06-22 00:00 +08:00 = T0 + 16 h, after interval 63.
    src = SealedEvidence()
    src.enrol(MeterInfo("gw-ev", "alfen-1", "ev_charging", 22.0, "B", "hebei", dt.date(2025, 6, 21)))
    src.seal("gw-ev", counter_records("alfen-1", "energy_delivered", [500.0] * 96, unit="Wh"))
    comp = compute(src, v2("ev-charging-jjj"), EV, Period(T0, T0 + 96 * 900))
    assert comp.result.excluded == {"calibration_expired": 32, "period_below_completeness": 64}
    assert comp.result.completeness[0] == 64 / 96 and comp.result.er == 0.0  # below 0.9: nothing credited
    assert (
        comp.series.status[0, 63] == 0
        and comp.series.reasons[comp.series.status[0, 64]] == "calibration_expired"
    )


def pv_source(quantity: str, region: str | None, cls: str = "1", delta: float = 1.25) -> SealedEvidence:
    src = SealedEvidence()
    src.enrol(MeterInfo("gw-pv", "house-01-grid", "pv", 6.5, cls, region, VALID))
    recs = counter_records("house-01-grid", quantity, deltas(delta), flags=FLAGS)
    src.seal(
        "gw-pv",
        recs,
        issues={("house-01-grid", quantity, T0 + IMPLAUSIBLE * 900): ("energy_above_nameplate",)},
    )
    return src


PV = Subject.of_meters("gw-pv", ["house-01-grid"])


def test_pv_export_hebei_takes_the_smallest_factor_and_the_low_end_of_the_meter() -> None:
    comp = compute(pv_source("energy_export", "hebei"), v2("pv-export-mee"), PV, PERIOD)
    eg = 36 * 1.25 / 1000 * (1 - 0.01)  # 0.045 MWh exported, class 1 MPE 1 % -> 0.04455 MWh
    be = eg * 0.5306  # min(Hebei 0.6516, North China 0.6361, national 0.5306): displaced electricity
    assert be == pytest.approx(0.02363823, rel=1e-10)
    assert comp.result.totals_be_pe_le == pytest.approx((be, 0.0, 0.0), rel=1e-12)
    assert comp.grid[0].rule is not None and comp.grid[0].rule.startswith("smallest candidate")
    old = compute(pv_source("energy_export", "hebei", cls="1.0"), v1("pv-export-mee"), PV, PERIOD)
    assert old.result.er == pytest.approx(0.045 * 0.6516, rel=1e-12)  # 1.0.0: the meter's region won


def test_pv_export_refuses_a_province_without_its_own_factor() -> None:
    with pytest.raises(
        IneligibleSubject, match=r"house-01-grid \(region 'sichuan'\) outside the programme's regions"
    ):
        compute(pv_source("energy_export", "sichuan"), v2("pv-export-mee"), PV, PERIOD)


def test_pv_shanghai_credits_generation_in_shanghai_only() -> None:
    comp = compute(pv_source("energy_generated", "shanghai", delta=2.0), v2("pv-shanghai"), PV, PERIOD)
    be = 36 * 2.0 / 1000 * (1 - 0.01) * 0.42  # 0.072 MWh generated, class 1, the programme's 0.42
    assert be == pytest.approx(0.0299376, rel=1e-10)
    assert comp.result.er == pytest.approx(be, rel=1e-12)
    with pytest.raises(
        IneligibleSubject, match=r"pv-shanghai 2.0.0: house-01-grid \(region 'hebei'\) outside"
    ):
        compute(pv_source("energy_generated", "hebei"), v2("pv-shanghai"), PV, PERIOD)
    old = compute(pv_source("energy_generated", "hebei", cls="1.0", delta=2.0), v1("pv-shanghai"), PV, PERIOD)
    assert old.result.er == pytest.approx(0.072 * 0.42, rel=1e-12)  # 1.0.0 credited a Hebei meter


def test_pv_guangdong_uses_the_superseded_2019_margin_in_guangdong_only() -> None:
    comp = compute(pv_source("energy_export", "guangdong"), v2("pv-guangdong-2019cm"), PV, PERIOD)
    cm = 0.75 * 0.8042 + 0.25 * 0.2135  # South grid 2019: OM 0.8042, BM 0.2135, Tool 07 solar weights
    be = 36 * 1.25 / 1000 * (1 - 0.01) * cm  # 0.04455 MWh x 0.656525
    assert be == pytest.approx(0.02924818875, rel=1e-10)
    assert comp.result.er == pytest.approx(be, rel=1e-12)
    assert comp.grid[0].series == "regional_2019_cm_superseded" and "SUPERSEDED" in comp.grid[0].source
    with pytest.raises(IneligibleSubject, match=r"house-01-grid \(region 'hebei'\) outside"):
        compute(pv_source("energy_export", "hebei"), v2("pv-guangdong-2019cm"), PV, PERIOD)


def heating_source() -> SealedEvidence:
    src = SealedEvidence()
    src.enrol(
        MeterInfo("gw-heat", "hp-01-elec", "clean_heating", 12.0, "1", "hebei", VALID),
        MeterInfo("gw-heat", "hp-01-heat", "clean_heating", 12.0, "heat_2", "hebei", VALID),
    )
    elec = counter_records("hp-01-elec", "energy_import", deltas(2.0, gaps=()), flags={RESET: ("reset",)})
    heat = counter_records(
        "hp-01-heat", "heat_energy", deltas(6000.0), unit="Wh", flags={INVALID: ("invalid_value",)}
    )
    issue = {("hp-01-elec", "energy_import", T0 + IMPLAUSIBLE * 900): ("energy_above_nameplate",)}
    src.seal("gw-heat", elec + heat, issues=issue)
    assert GAP not in (RESET, INVALID, IMPLAUSIBLE)
    return src


HOUSE = Subject("gw-heat", (Unit("hp-01", ("hp-01-elec", "hp-01-heat")),))


def test_heating_golden_with_chinas_coal_default_losses_and_mpe() -> None:
    comp = compute(heating_source(), v2("clean-heating-hebei"), HOUSE, PERIOD)
    q = 36 * 6.0 * 0.0036 * (1 - 0.0542)  # 0.7776 GJ of heat, heat_2 MPE 5.42 % -> 0.73545408 GJ
    be = q / 0.75 * (89.27 / 1000)  # eta_BL 0.75; coal 26.18 tC/TJ x 0.93 x 44/12 = 89.27 tCO2/TJ
    pe = 36 * 2.0 / 1000 * (1 + 0.01) / (1 - 0.06) * 0.6516  # 0.07272 MWh, 6 % loss, max(Hebei, NC, national)
    assert (be, pe) == pytest.approx((0.0875386476288, 0.0504088851064), rel=1e-10)
    assert comp.result.totals_be_pe_le == pytest.approx((be, pe, 0.0), rel=1e-12)
    assert comp.result.er == pytest.approx(be - pe, rel=1e-12)  # 0.0371298 tCO2e
    assert comp.result.capped is not None and not comp.result.capped.any()  # no recorded use: no cap


WINTER_WEEK = HistoricalUse(
    0.6, dt.date(2020, 1, 6), dt.date(2020, 1, 12), "household survey 2020, record 0417"
)


def test_heating_baseline_capped_by_recorded_coal_use() -> None:
    comp = compute(
        heating_source(), v2("clean-heating-hebei"), HOUSE, PERIOD, baselines={"hp-01": WINTER_WEEK}
    )
    coal_t = 0.6 * 36000 / (7 * 86400)  # 0.6 t in 7 days, pro-rated to the 10 h period
    cap = coal_t * 19.570 * 89.27 / 1000  # NCV 19.570 GJ/t, 89.27 tCO2/TJ -> 0.0623934 t < BE 0.0875386
    pe = 0.0504088851064
    assert cap == pytest.approx(0.06239335357, rel=1e-10)
    assert comp.result.totals_be_pe_le == pytest.approx((cap, pe, 0.0), rel=1e-10)
    assert comp.result.er == pytest.approx(cap - pe, rel=1e-10)  # 0.0119845 tCO2e
    st = issue_statement(comp, KEY, created_ms=0)
    assert st.body["units"][0]["baseline_cap"] == {
        "coal_t": 0.6, "first_day": "2020-01-06", "last_day": "2020-01-12",
        "source": "household survey 2020, record 0417", "cap_tco2e": pytest.approx(cap), "binding": True,
    }  # fmt: skip


def test_v2_statements_verify_and_an_inconsistent_cap_is_caught() -> None:
    src = heating_source()
    comp = compute(src, v2("clean-heating-hebei"), HOUSE, PERIOD, baselines={"hp-01": WINTER_WEEK})
    st = issue_statement(comp, KEY, created_ms=0)
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert report.ok, str(report)
    body = st.body
    body["units"][0]["baseline_cap"]["coal_t"] = 6.0  # a claimed record that does not give the cap
    forged = sign_statement(body, KEY)
    report = verify_statement(forged.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert not report.ok and any("cap_tco2e" in p or "be_tco2e" in p for p in report.problems)


def test_a_recalibrated_meter_keeps_old_statements_verifiable() -> None:
    src = ev_source(calibrated=dt.date(2025, 12, 31))
    st = issue_statement(compute(src, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=0)
    [meter] = src.meters()
    src.enrol_again(replace(meter, calibrated_until=dt.date(2031, 12, 31)))  # recalibrated, enrolled again
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert report.ok, str(report)
    src.enrol_again(replace(meter, calibrated_until=dt.date(2025, 6, 30)))  # the enrolment contradicts it
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert report.problems == [
        "meters: alfen-1: the statement credits readings under a calibration valid until 2025-12-31, "
        "the enrolment names 2025-06-30"
    ]


def test_the_demos_truth_recomputation_applies_the_same_accuracy_and_cap() -> None:
    from puhui.demo.truth import truth_er, used_mask

    for comp in (
        compute(ev_source(), v2("ev-charging-jjj"), EV, PERIOD),
        compute(heating_source(), v2("clean-heating-hebei"), HOUSE, PERIOD, baselines={"hp-01": WINTER_WEEK}),
    ):
        er, _ = truth_er(comp, comp.series.values, used_mask(comp))  # the metered values as "truth"
        assert er == pytest.approx(comp.result.er, rel=1e-12) and er > 0
