"""Calibration validity on the enrolment path: site nameplate -> enrolment document -> registry
-> evidence store -> ``MeterInfo.calibrated_until`` (what the methodology engine reads)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from aggregator.registry import GatewayRegistry
from aggregator.store import SCHEMA_VERSION, SQLiteEvidenceStore
from drivers.modbus.profiles import load_profiles
from evidence import generate_key
from evidence.enrolment import EnrolledMeter, make_enrolment, parse_enrolment
from evidence.errors import MalformedEnrolment
from gateway.cli import enrolment_for
from gateway.config import parse_site

REPO = Path(__file__).resolve().parents[2]
DAY = dt.date(2027, 6, 30)
KEY = generate_key()


def document(*meters: EnrolledMeter) -> bytes:
    return make_enrolment(
        KEY, gateway="gw-1", site="s", meters=meters, created_ms=5, region="hebei"
    ).to_bytes()


def test_a_document_without_a_calibration_date_keeps_its_exact_form() -> None:
    body = document(EnrolledMeter("m1", "pv", 5.0, "1")).split(b"\n")[0]
    meters = json.loads(body)["meters"]
    assert body.count(b"calibrated_until") == 0
    assert json.dumps(meters, separators=(",", ":")).encode() in body  # the 1.0 key order, nothing added
    assert list(meters[0]) == ["id", "scenario", "rated_power_kw", "meter_class"]


def test_the_date_travels_after_the_class_and_parses_back() -> None:
    data = document(EnrolledMeter("m1", "pv", 5.0, "1", DAY), EnrolledMeter("m2", "pv", 5.0, "2"))
    assert b'"meter_class":"1","calibrated_until":"2027-06-30"}' in data
    doc = parse_enrolment(data)
    assert [m.calibrated_until for m in doc.meters] == [DAY, None]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'"calibrated_until":"2027-06-30"', None),
        (b'"calibrated_until":"2027-02-30"', "'2027-02-30' is not a calendar date"),
        (b'"calibrated_until":"20270630"', "must be a date as YYYY-MM-DD, got '20270630'"),
        (b'"calibrated_until":null', "must be a date as YYYY-MM-DD, got None"),
    ],
)
def test_a_calibration_date_must_be_a_calendar_day(text: bytes, message: str | None) -> None:
    good = document(EnrolledMeter("m1", "pv", 5.0, "1", DAY))
    data = good.replace(b'"calibrated_until":"2027-06-30"', text)  # the field is checked before the signature
    if message is None:
        assert parse_enrolment(data).meters[0].calibrated_until == DAY
        return
    with pytest.raises(MalformedEnrolment) as err:
        parse_enrolment(data)
    assert str(err.value) == f"enrolment of 'gw-1'.meters[0].calibrated_until: {message}"


def test_the_gateway_enrols_the_nameplate_date() -> None:
    data = yaml.safe_load((REPO / "config/sites/zhangjiakou-school.yaml").read_text())
    data["meters"][0]["nameplate"]["calibrated_until"] = "2027-06-30"
    site = parse_site(data, "site.yaml", load_profiles())
    doc = parse_enrolment(enrolment_for(site, generate_key(), created_ms=0))
    assert doc.meters[0].calibrated_until == DAY
    assert {m.calibrated_until for m in doc.meters[1:]} == {None}


def test_registry_and_store_keep_the_date_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite3"
    store = SQLiteEvidenceStore(path)
    GatewayRegistry(store).enrol(
        document(EnrolledMeter("m1", "pv", 5.0, "1", DAY), EnrolledMeter("m2", "pv", 5.0, "2")), at_ms=1
    )
    store.close()
    store = SQLiteEvidenceStore(path)
    assert [(m.meter, m.calibrated_until, m.region) for m in store.meters()] == [
        ("m1", DAY, "hebei"),
        ("m2", None, "hebei"),
    ]
    assert [m.calibrated_until for m in GatewayRegistry(store).meters("gw-1").values()] == [DAY, None]
    store.close()


def test_a_store_without_the_column_migrates(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite3"
    store = SQLiteEvidenceStore(path)
    GatewayRegistry(store).enrol(document(EnrolledMeter("m1", "pv", 5.0, "1")), at_ms=1)
    store.close()
    con = sqlite3.connect(path)  # as puhui wrote it before schema version 5
    con.execute("ALTER TABLE meters DROP COLUMN calibrated_until")
    con.execute("UPDATE meta SET value = 4 WHERE key = 'schema_version'")
    con.commit()
    con.close()
    store = SQLiteEvidenceStore(path)
    assert [(m.meter, m.calibrated_until) for m in store.meters()] == [("m1", None)]
    GatewayRegistry(store).enrol(document(EnrolledMeter("m1", "pv", 5.0, "1", DAY)), at_ms=2)
    assert [m.calibrated_until for m in store.meters()] == [DAY]
    store.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)
    con.close()
