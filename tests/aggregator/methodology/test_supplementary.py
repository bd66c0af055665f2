"""Golden cases for supplementary statements (issue 18): late evidence for a period already
stated yields a new signed statement that credits only what the first did not.

The evidence: 40 fifteen-minute intervals from 2025-06-21 08:00 China time; some of them
reach the aggregator after the period's statement was signed (a gateway that was offline
uploads its backlog). The first statement stays as signed; the supplementary one names it,
counts its intervals towards completeness (the data are there) and credits none of them
again; a heating unit's baseline cap covers both together. Figures by hand beside the values.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from aggregator.methodology import Period, Subject, Unit, compute, issue_statement, verify_statement
from aggregator.methodology.baseline import HistoricalUse
from aggregator.methodology.errors import DoubleClaim
from aggregator.methodology.statements import Statement, earlier_claims
from aggregator.methodology.store import StatementStore
from aggregator.view import MeterInfo
from evidence import generate_key

from .evidence_fixture import T0, SealedEvidence, counter_records
from .test_golden_v2 import VALID, v2

KEY = generate_key()
N = 40
PERIOD = Period(T0, T0 + N * 900)
EV = Subject.of_meters("gw-ev", ["alfen-1"])
HOUSE = Subject("gw-heat", (Unit("hp-01", ("hp-01-elec", "hp-01-heat")),))


def ev_be_pe(n_intervals: int) -> tuple[float, float]:
    """EV charger, Beijing, class B, 2 kWh an interval: test_golden_v2's formulas."""
    e = n_intervals * 2000 / 1e6  # MWh
    be = e * (1 - 0.01) * 1000 / 0.15 * 0.06 * 2.106 / 1000 * 0.99
    pe = e * (1 + 0.01) / (1 - 0.06) * 0.6361
    return be, pe


def ev_source(first: range) -> tuple[SealedEvidence, list]:  # type: ignore[type-arg]
    src = SealedEvidence()
    src.enrol(MeterInfo("gw-ev", "alfen-1", "ev_charging", 22.0, "B", "beijing", VALID))
    recs = counter_records("alfen-1", "energy_delivered", [2000.0] * N, unit="Wh")
    src.seal("gw-ev", [recs[i] for i in first])
    return src, [r for i, r in enumerate(recs) if i not in first]


def _find(*statements: Statement):  # type: ignore[no-untyped-def]
    docs = {s.id: s.to_bytes() for s in statements}
    return docs.get


def test_late_intervals_are_credited_by_a_supplement_and_only_they() -> None:
    src, late = ev_source(range(36))  # 36 of 40 at first: 90 %, just credited
    first = issue_statement(compute(src, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=1)
    be36, _ = ev_be_pe(36)
    assert first.body["result"]["be_tco2e"] == pytest.approx(be36, rel=1e-12)
    src.seal("gw-ev", late)  # the last hour arrives after the statement
    comp = compute(src, v2("ev-charging-jjj"), EV, PERIOD, earlier=[earlier_claims(first)])
    supplement = issue_statement(comp, KEY, created_ms=2)
    be4, pe4 = ev_be_pe(4)
    # 8 kWh: 7.92 kWh at -1 % -> 52.8 km x 0.06 L/km x 2.106 kg/L x 0.99 = 6.60509 kg
    assert (be4, pe4) == pytest.approx((0.00660508992, 0.005467753191), rel=1e-9)
    body = supplement.body
    assert body["result"]["be_tco2e"] == pytest.approx(be4, rel=1e-12)
    assert body["result"]["pe_tco2e"] == pytest.approx(pe4, rel=1e-12)
    assert body["completeness"]["value"] == 1.0  # all 40 intervals are there
    assert body["evidence"]["excluded_by_reason"] == {"credited_earlier": 36}
    assert body["supplements"] == [{"statement": first.id, "er_tco2e": first.er_tco2e}]
    assert body["units"][0]["be_credited_earlier_tco2e"] == pytest.approx(be36, rel=1e-12)
    assert supplement.credited_runs() == [("alfen-1", "energy_delivered", T0 + 36 * 900, T0 + 40 * 900)]
    # together they credit the whole period once: the figures of one statement over all 40
    whole = compute(src, v2("ev-charging-jjj"), EV, PERIOD).result.er
    assert first.er_tco2e + supplement.er_tco2e == pytest.approx(whole, rel=1e-12)


def test_a_unit_below_completeness_at_first_is_credited_in_full_by_the_supplement() -> None:
    src, late = ev_source(range(30))  # 30 of 40: 75 %, the unit earns nothing yet
    first = issue_statement(compute(src, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=1)
    assert first.er_tco2e == 0.0 and first.credited_runs() == []
    src.seal("gw-ev", late)
    supplement = issue_statement(
        compute(src, v2("ev-charging-jjj"), EV, PERIOD, earlier=[earlier_claims(first)]), KEY, created_ms=2
    )
    be40, pe40 = ev_be_pe(40)
    assert supplement.er_tco2e == pytest.approx(be40 - pe40, rel=1e-12)
    assert "credited_earlier" not in supplement.body["evidence"]["excluded_by_reason"]


def test_the_baseline_cap_covers_the_statement_and_its_supplement_together() -> None:
    src = SealedEvidence()
    src.enrol(
        MeterInfo("gw-heat", "hp-01-elec", "clean_heating", 12.0, "1", "hebei", VALID),
        MeterInfo("gw-heat", "hp-01-heat", "clean_heating", 12.0, "heat_2", "hebei", VALID),
    )
    elec = counter_records("hp-01-elec", "energy_import", [2.0] * N)
    heat = counter_records("hp-01-heat", "heat_energy", [6000.0] * N, unit="Wh")
    src.seal("gw-heat", elec[:36] + heat[:36])
    use = HistoricalUse(0.6, dt.date(2020, 1, 6), dt.date(2020, 1, 12), "household survey 2020, record 0417")
    cap = 0.6 * 36000 / (7 * 86400) * 19.570 * 89.27 / 1000  # 0.0623934 tCO2 for the 10 h period
    q36 = 36 * 6.0 * 0.0036 * (1 - 0.0542)  # GJ, heat_2 MPE
    be36 = q36 / 0.75 * 89.27 / 1000  # 0.0875386: already above the cap
    first = issue_statement(
        compute(src, v2("clean-heating-hebei"), HOUSE, PERIOD, baselines={"hp-01": use}), KEY, created_ms=1
    )
    assert be36 > cap and first.body["result"]["be_tco2e"] == pytest.approx(cap, rel=1e-10)
    src.seal("gw-heat", elec[36:] + heat[36:])
    earlier = [earlier_claims(first)]
    comp = compute(src, v2("clean-heating-hebei"), HOUSE, PERIOD, baselines={"hp-01": use}, earlier=earlier)
    supplement = issue_statement(comp, KEY, created_ms=2)
    pe4 = 4 * 2.0 / 1000 * (1 + 0.01) / (1 - 0.06) * 0.6516
    assert supplement.body["result"]["be_tco2e"] == 0.0  # the cap is used up by the first statement
    assert supplement.body["result"]["pe_tco2e"] == pytest.approx(pe4, rel=1e-10)
    assert supplement.er_tco2e == 0.0  # never below zero
    assert supplement.body["units"][0]["baseline_cap"]["cap_tco2e"] == 0.0


def test_a_supplement_verifies_against_the_statement_it_names_and_only_it() -> None:
    src, late = ev_source(range(36))
    first = issue_statement(compute(src, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=1)
    src.seal("gw-ev", late)
    supplement = issue_statement(
        compute(src, v2("ev-charging-jjj"), EV, PERIOD, earlier=[earlier_claims(first)]), KEY, created_ms=2
    )
    doc = supplement.to_bytes()
    report = verify_statement(doc, issuer_key=KEY.public_key, source=src, earlier=_find(first))
    assert report.ok, str(report)
    report = verify_statement(doc, issuer_key=KEY.public_key, source=src)
    assert report.problems == [f"supplements: statement {first.id} is not available to the verifier"]
    # the first statement as it would be had it credited only 30 intervals: not the one named
    src30, _ = ev_source(range(30))
    other = issue_statement(compute(src30, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=1)
    report = verify_statement(doc, issuer_key=KEY.public_key, source=src, earlier=lambda _: other.to_bytes())
    assert report.problems == [f"supplements: the document found for {first.id} is statement {other.id}"]
    # a supplement computed without its earlier statement re-credits it: the recomputation says so
    greedy = issue_statement(compute(src, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=2)
    body = dict(greedy.body, supplements=supplement.body["supplements"])
    from aggregator.methodology.statements import sign_statement

    forged = sign_statement(body, KEY)
    report = verify_statement(forged.to_bytes(), issuer_key=KEY.public_key, source=src, earlier=_find(first))
    assert not report.ok and any("be_tco2e" in p for p in report.problems)


def test_the_ledger_takes_a_statement_and_its_supplement_but_not_a_recount(tmp_path: Path) -> None:
    src, late = ev_source(range(36))
    first = issue_statement(compute(src, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=1)
    src.seal("gw-ev", late)
    supplement = issue_statement(
        compute(src, v2("ev-charging-jjj"), EV, PERIOD, earlier=[earlier_claims(first)]), KEY, created_ms=2
    )
    recount = issue_statement(compute(src, v2("ev-charging-jjj"), EV, PERIOD), KEY, created_ms=3)
    with StatementStore(tmp_path / "s.sqlite") as store:
        store.save(first)
        store.save(supplement)
        with pytest.raises(DoubleClaim, match=f"already credited by statement {first.id}"):
            store.save(recount)
