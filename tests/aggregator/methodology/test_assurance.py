"""Assurance levels in statements (issue 24): every credited kWh names the evidence it rests on.

The evidence is test_golden_v2's EV charger (gateway-signed intervals, 36 of 40 credited) plus a
second charger of the same gateway that only its network's platform reports on: sessions
imported through the real intake into a real SQLite store. Figures are worked by hand.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from aggregator.methodology import Subject, compute, issue_statement, load_parameter_set, verify_statement
from aggregator.methodology.subject import Unit
from aggregator.sessions.intake import enrol_network, import_sessions
from aggregator.store import SQLiteEvidenceStore
from aggregator.view import MeterInfo
from evidence import generate_key, public_key_pem
from firmware_sim.ev_platform import Order, manifest, to_json

from .evidence_fixture import T0, SealedEvidence
from .test_golden import PERIOD
from .test_golden_v2 import KEY, VALID, ev_source, v2

NET = "net-a"
DATA = Path(__file__).parent / "data"
UTC = dt.UTC
SUBJECT = Subject("gw-ev", (Unit("alfen-1", ("alfen-1",)), Unit("cp-2", ("cp-2",))))
GRID = 0.6361  # max(Beijing 0.5554, North China 0.6361, national 0.5306): the conservative factor


def _order(sid: str, charger: str, start_h: float, stop_h: float, start_kwh: float, kwh: float) -> Order:
    def at(hours: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(T0 + hours * 3600, UTC)

    return Order(
        NET, sid, charger, "1", at(start_h), at(stop_h), start_kwh, start_kwh + kwh, kwh, 22.0, kwh * 1000
    )


ORDERS = [
    _order("s-covered", "alfen-1", 1.0, 2.0, 100.0, 5.0),  # the gateway's intervals cover it
    _order("s-1", "cp-2", 1.0, 3.0, 500.0, 20.0),
    _order("s-2", "cp-2", 4.0, 5.0, 520.0, 10.0),
    _order("s-later", "cp-2", 11.0, 12.0, 530.0, 10.0),  # after the period: not in this statement
]


def _store(tmp_path: Path) -> SQLiteEvidenceStore:
    store = SQLiteEvidenceStore(tmp_path / "agg.db")
    key = generate_key()
    enrol_network(store, NET, public_key_pem(key.public_key), region="beijing", now_ms=0)
    data = to_json(ORDERS)
    m = manifest(key, NET, data, len(ORDERS), ORDERS[0].start, ORDERS[-1].stop)
    report = import_sessions(store, NET, data, m, now_ms=(T0 + 86_400) * 1000, via="file")
    assert len(report.accepted) == len(ORDERS)
    return store


def _source() -> SealedEvidence:
    src = ev_source()
    src.enrol(MeterInfo("gw-ev", "cp-2", "ev_charging", 22.0, "B", "beijing", VALID))
    return src


def _figures(e_mwh: float, mpe: float = 0.01) -> tuple[float, float]:
    be = e_mwh * (1 - mpe) * 1000 / 0.15 * 0.06 * 2.106 / 1000 * 0.99
    pe = e_mwh * (1 + mpe) / (1 - 0.06) * GRID
    return be, pe


def test_a_statement_shows_the_assurance_level_of_every_credited_kwh(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        sessions = store.imported_sessions(NET)
        src = _source()
        st = issue_statement(
            compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD, sessions=sessions), KEY, created_ms=0
        )
        report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src, sessions=store)
    finally:
        store.close()
    levels = st.body["assurance"]["levels"]
    gw_be, gw_pe = _figures(36 * 2000 / 1e6)  # 36 credited intervals of 2 kWh on alfen-1
    pa_be, pa_pe = _figures(30 / 1000)  # s-1 and s-2 on cp-2: 30 kWh, class B (MPE 1 %)
    assert levels["gateway_signed"]["kwh"] == pytest.approx(72.0, rel=1e-12)
    assert levels["platform_attested"]["kwh"] == pytest.approx(30.0, rel=1e-12)
    assert levels["meter_signed"]["kwh"] == 0.0
    assert (levels["gateway_signed"]["be_tco2e"], levels["gateway_signed"]["pe_tco2e"]) == pytest.approx(
        (gw_be, gw_pe)
    )
    assert (
        levels["platform_attested"]["be_tco2e"],
        levels["platform_attested"]["pe_tco2e"],
    ) == pytest.approx((pa_be, pa_pe), rel=1e-12)
    assert levels["platform_attested"]["reduction_tco2e"] == pytest.approx(pa_be - pa_pe, rel=1e-12)
    credited_kwh = st.body["activity"]["energy_mwh"] * 1000
    assert sum(lv["kwh"] for lv in levels.values()) == pytest.approx(
        credited_kwh, rel=1e-12
    )  # every kWh has a level
    assert st.body["result"]["be_tco2e"] == pytest.approx(gw_be + pa_be, rel=1e-12)
    assert st.body["result"]["er_tco2e"] == pytest.approx(gw_be + pa_be - gw_pe - pa_pe, rel=1e-12)
    listed = st.body["evidence"]["sessions"]
    assert listed["by_status"] == {"credited": 2, "gateway_evidence_covers": 1}
    assert {i["session_id"]: i["status"] for i in listed["items"]} == {
        "s-covered": "gateway_evidence_covers", "s-1": "credited", "s-2": "credited",
    }  # fmt: skip
    assert report.ok, str(report)


def test_a_set_that_refuses_platform_attested_credits_nothing_from_it_and_says_so(tmp_path: Path) -> None:
    strict = load_parameter_set(DATA / "ev-charging-jjj-2.1.0.yaml")
    store = _store(tmp_path)
    try:
        sessions = store.imported_sessions(NET)
        src = _source()
        st = issue_statement(compute(src, strict, SUBJECT, PERIOD, sessions=sessions), KEY, created_ms=0)
        plain = compute(_source(), v2("ev-charging-jjj"), Subject.of_meters("gw-ev", ["alfen-1"]), PERIOD)
        report = verify_statement(
            st.to_bytes(), issuer_key=KEY.public_key, source=src, params=strict, sessions=store
        )
    finally:
        store.close()
    pa = st.body["assurance"]["levels"]["platform_attested"]
    assert pa["credited"] is False and pa["refused_by_parameter_set"] is True
    assert pa["kwh"] == 0.0 and pa["activity_not_credited"] == {"energy_mwh": pytest.approx(0.030, rel=1e-12)}
    assert st.body["assurance"]["refused"] == ["platform_attested"]
    assert st.body["parameters"]["refused_assurance"] == ["platform_attested"]
    assert st.body["evidence"]["sessions"]["by_status"] == {
        "assurance_refused": 2,
        "gateway_evidence_covers": 1,
    }
    assert st.er_tco2e == pytest.approx(plain.result.er, rel=1e-12)  # the gateway's kWh alone
    assert report.ok, str(report)


def test_a_changed_session_or_a_missing_session_store_fails_verification(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        src = _source()
        comp = compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD, sessions=store.imported_sessions(NET))
        doc = issue_statement(comp, KEY, created_ms=0).to_bytes()
        no_store = verify_statement(doc, issuer_key=KEY.public_key, source=src)
    finally:
        store.close()
    assert not no_store.ok and "no session store was given" in str(no_store)
    with sqlite3.connect(tmp_path / "agg.db") as db:  # the store's row edited behind its back
        db.execute("UPDATE ev_sessions SET record = replace(record, '\"energy_wh\":20000.0', "
                   "'\"energy_wh\":25000.0') WHERE session_id = 's-1'")  # fmt: skip
    store = SQLiteEvidenceStore(tmp_path / "agg.db")
    try:
        changed = verify_statement(doc, issuer_key=KEY.public_key, source=src, sessions=store)
    finally:
        store.close()
    assert not changed.ok and "session s-1: content differs" in str(changed)


def test_statements_without_sessions_show_every_level() -> None:
    st = issue_statement(
        compute(ev_source(), v2("ev-charging-jjj"), Subject.of_meters("gw-ev", ["alfen-1"]), PERIOD),
        KEY,
        created_ms=0,
    )
    levels = st.body["assurance"]["levels"]
    assert list(st.body["assurance"]["strongest_first"]) == [
        "meter_signed",
        "gateway_signed",
        "platform_attested",
    ]
    assert levels["gateway_signed"]["kwh"] == pytest.approx(72.0)
    assert levels["platform_attested"]["kwh"] == 0.0 and "sessions" not in st.body["evidence"]
