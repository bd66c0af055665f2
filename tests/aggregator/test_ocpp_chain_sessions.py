"""OCPP session records in the chain: sealed beside interval records, accepted by the aggregator's
ingest (covered by the batch signature and Merkle root), kept in SQLite, listed, and exported
as OCMF that the OCMF verifier (drivers/ocpp/ocmf.py) accepts with the pinned meter key, while
a tampered export fails. A gateway-signed session has nothing meter-signed to export: refused,
saying why."""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.methodology import Period, Subject
from aggregator.methodology.meter_signed import read_chain_sessions
from aggregator.ocmf_export import ExportError, ocmf_text
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store import SQLiteEvidenceStore
from aggregator.store.protocols import ChainSessionStore
from common.clock import SystemClock
from drivers.ocpp import ocmf
from drivers.ocpp.config import ChargerConfig
from drivers.ocpp.metering import SessionEvent, SignedValue
from evidence import generate_key
from evidence.records import SessionRecord, decode_record, encode_record
from evidence.wire import Ack, batch_topic
from firmware_sim.ocmf_meter import OcmfMeter
from gateway.ocpp_sessions import OcppSessions
from puhui.cli import main
from tests.aggregator.ingest_support import T0, SimGateway


def signed(meter: OcmfMeter, t: float, wh: int, tx_type: str, tx: str, context: str, key_hex: str | None,
           *, as_base64: bool = False, tamper: int = 0) -> SignedValue:  # fmt: skip
    """A signed value as the reader hands it over, checked with the pinned key (if any)."""
    text = meter.sign_reading(t, wh, tx_type, "TAG1", "CP-1")
    if tamper:  # altered after signing: the reading says more than the meter signed
        text = text.replace(f'"RV":{wh / 1000:.3f}', f'"RV":{(wh + tamper) / 1000:.3f}')
    record = ocmf.parse(text)
    status = "no_pinned_key"
    if key_hex is not None:
        status = "verified" if ocmf.verify(record, ocmf.load_public_key(key_hex)) else "signature_failed"
    carried = base64.b64encode(text.encode()).decode() if as_base64 else text
    return SignedValue("CP-1", 1, "CP-1.1", tx, context, carried, text, status, "", record.readings)  # type: ignore[arg-type]


def session(sessions: OcppSessions, meter: OcmfMeter, tx: str, t0: float, wh0: int, wh1: int, key: str | None,
            *, tamper: int = 0) -> None:  # fmt: skip
    sessions.session(SessionEvent("CP-1", "start", tx, 1, "CP-1.1", t0, float(wh0)))
    sessions.signed(signed(meter, t0, wh0, "B", tx, "Transaction.Begin", key, as_base64=True))
    sessions.signed(signed(meter, t0 + 900, (wh0 + wh1) // 2, "C", tx, "Sample.Clock", key))
    sessions.signed(signed(meter, t0 + 1800, wh1, "E", tx, "Transaction.End", key, tamper=tamper))
    sessions.session(SessionEvent("CP-1", "stop", tx, 1, "CP-1.1", t0 + 1800, float(wh1 + tamper)))


def make_sessions() -> tuple[list[SessionRecord], str]:
    meter = OcmfMeter("SIM000001", "ECDSA-secp256r1-SHA256")
    key = meter.public_key_hex()
    sessions = OcppSessions(
        lambda s: None, meters={"CP-1.1"}, keys={"CP-1": ChargerConfig(meter_key=key).meter_keys()}
    )
    session(sessions, meter, "101", T0 + 600, 1_000_000, 1_012_345, key)
    session(sessions, meter, "102", T0 + 7200, 1_012_345, 1_020_000, key, tamper=500)
    return sessions.take_closed(), key


def test_session_records_from_signed_values() -> None:
    (honest, liar), key = make_sessions()
    assert honest.assurance == "meter_signed" and honest.energy_wh == 12_345.0 and not honest.flags
    assert honest.meter_key == key and [v.status for v in honest.signed_values] == ["verified"] * 3
    assert liar.assurance == "gateway_signed" and liar.flags == ("signature_failed",)
    assert liar.energy_wh == 1_020_500.0 - 1_012_345.0  # the charger's own (inflated) meterStop
    for r in (honest, liar):
        raw = encode_record(r)
        assert encode_record(decode_record(raw)) == raw


async def ingest(db: Path, tmp: Path, records: list[object]) -> None:
    config = AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(db)},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp / "unused.pem")}
    )  # fmt: skip
    gw = SimGateway("gw-ev", meters=("pv-01",))
    with StoreThreads() as threads:
        store = SQLiteEvidenceStore(db)
        try:
            assert isinstance(store, ChainSessionStore)
            registry = GatewayRegistry(store)
            registry.enrol(gw.enrolment(), at_ms=0)
            ingest = BatchIngest(config, store=store, registry=registry, key=generate_key(),
                                 clock=SystemClock(), run_db=threads.run_db)  # fmt: skip
            sealed = gw.seal([*gw.intervals(4), *records], created_ms=(T0 + 3600 + 5) * 1000)
            answer = await ingest.process(batch_topic("gw-ev"), sealed.to_bytes())
            assert answer is not None and isinstance(answer[1], Ack), answer
        finally:
            store.close()


def test_chain_sessions_are_kept_and_exported_as_ocmf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records, key = make_sessions()
    db = tmp_path / "agg.sqlite3"
    asyncio.run(ingest(db, tmp_path, list(records)))

    assert main(["aggregator", "chain-sessions", "--db", str(db), "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["CP-1/101", "CP-1/102"]
    assert "12345 Wh\tmeter_signed" in listed[0] and "gateway_signed\tsignature_failed" in listed[1]

    out = tmp_path / "101.xml"
    assert (
        main(
            [
                "aggregator",
                "chain-sessions",
                "--db",
                str(db),
                "export",
                "--ocmf",
                "CP-1/101",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    values = ET.parse(out).getroot().findall("value")
    assert [v.get("context") for v in values] == ["Transaction.Begin", "Sample.Clock", "Transaction.End"]
    for v in values:
        pinned = ocmf.load_public_key(v.findtext("publicKey") or "")
        assert ocmf.verify(ocmf.parse(v.findtext("signedData") or ""), pinned)
    text = out.read_text()
    assert text.count(honest_end := values[2].findtext("signedData") or "") == 1
    tampered = ET.fromstring(text.replace('"RV":1012.345', '"RV":1013.345'))
    end = tampered.findall("value")[2]
    assert not ocmf.verify(ocmf.parse(end.findtext("signedData") or ""), ocmf.load_public_key(key))
    assert honest_end != end.findtext("signedData")

    assert main(["aggregator", "chain-sessions", "--db", str(db), "export", "--ocmf", "CP-1/102"]) == 1
    assert (
        "is gateway_signed: its Begin and End readings are not both meter-signed" in capsys.readouterr().err
    )
    assert main(["aggregator", "chain-sessions", "--db", str(db), "export", "--ocmf", "CP-1/999"]) == 1
    assert "0 chain sessions match" in capsys.readouterr().err
    assert main(["aggregator", "chain-sessions", "--db", str(db), "export", "--ocmf", "no-slash"]) == 2


def test_ocmf_text_unwraps_without_touching_the_record() -> None:
    record = 'OCMF|{"FV":"1.0","RD":[]}|{"SD":"00"}'
    data = base64.b64encode(record.encode()).decode()
    wrapped = f'{{"signedMeterData": "{data}", "encodingMethod": "OCMF"}}'
    for carried in (record, record.encode().hex(), base64.b64encode(record.encode()).decode(), wrapped):
        assert ocmf_text(carried) == record
    with pytest.raises(ExportError, match="not an OCMF record"):
        ocmf_text("hello")


class IngestOnly:
    """An ingest store that does not keep chain sessions (as the PostgreSQL store, so far)."""

    def __init__(self, store: SQLiteEvidenceStore) -> None:
        self.store = store
        self.store_group = store.store_group
        self.record_rejection = store.record_rejection
        self.chain_links = store.chain_links
        self.counter_state = store.counter_state
        self.batch_created_ms = store.batch_created_ms


async def test_a_store_without_chain_sessions_keeps_the_batch_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records, _ = make_sessions()
    config = AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(tmp_path / "a.db")},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp_path / "k.pem")}
    )  # fmt: skip
    gw = SimGateway("gw-ev", meters=("pv-01",))
    with StoreThreads() as threads:
        store = SQLiteEvidenceStore(tmp_path / "a.db")
        try:
            registry = GatewayRegistry(store)
            registry.enrol(gw.enrolment(), at_ms=0)
            narrow = IngestOnly(store)
            assert not isinstance(narrow, ChainSessionStore)
            ingest = BatchIngest(config, store=narrow, registry=registry, key=generate_key(),
                                 clock=SystemClock(), run_db=threads.run_db)  # fmt: skip
            sealed = gw.seal([*gw.intervals(2), *records], created_ms=(T0 + 1800 + 5) * 1000)
            answer = await ingest.process(batch_topic("gw-ev"), sealed.to_bytes())
            assert answer is not None and isinstance(answer[1], Ack), answer
            assert store.chain_sessions() == []  # not indexed...
            assert store.batch_bytes("gw-ev", 1) == sealed.to_bytes()  # ...but kept, in the batch
        finally:
            store.close()
    assert "2 OCPP session record(s) kept in the batch bytes only" in caplog.text


async def test_both_stores_index_chain_sessions_for_the_methodology(
    evidence_store: SQLiteEvidenceStore, tmp_path: Path
) -> None:
    """SQLite and PostgreSQL (schema version 3) keep a row per chain session in the batch's
    transaction; the methodology finds them (aggregator/methodology/meter_signed.py)."""
    records, _ = make_sessions()
    config = AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(tmp_path / "unused.db")},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp_path / "k.pem")}
    )  # fmt: skip
    gw = SimGateway("gw-ev", meters=("pv-01",))
    assert isinstance(evidence_store, ChainSessionStore)
    with StoreThreads() as threads:
        registry = GatewayRegistry(evidence_store)
        registry.enrol(gw.enrolment(), at_ms=0)
        ingest = BatchIngest(config, store=evidence_store, registry=registry, key=generate_key(),
                             clock=SystemClock(), run_db=threads.run_db)  # fmt: skip
        sealed = gw.seal([*gw.intervals(4), *records], created_ms=(T0 + 3600 + 5) * 1000)
        answer = await ingest.process(batch_topic("gw-ev"), sealed.to_bytes())
        assert answer is not None and isinstance(answer[1], Ack), answer
    found = evidence_store.chain_sessions(gateway="gw-ev")
    assert [(ref.seq, index) for ref, index, _ in found] == [(1, 4), (1, 5)]
    assert [raw for _, _, raw in found] == [encode_record(r) for r in records]
    assert found[0][0].header_sha256 == sealed.header_sha256
    assert evidence_store.chain_sessions(gateway="gw-ev", charger="CP-1", transaction_id="102")[0][2] == (
        encode_record(records[1])
    )
    assert evidence_store.chain_sessions(gateway="other") == []
    at = (T0 + 7200) * 1000  # 101 runs T0+600 .. T0+2400, 102 from T0+7200
    assert [i for _, i, _ in evidence_store.chain_sessions(gateway="gw-ev", start_ms=at)] == [5]
    assert [i for _, i, _ in evidence_store.chain_sessions(gateway="gw-ev", end_ms=at)] == [4]
    assert [i for _, i, _ in evidence_store.chain_sessions_overlapping("gw-ev", at, at + 3_600_000)] == [5]
    subject = Subject.of_meters("gw-ev", ["CP-1.1"])
    lookup = read_chain_sessions(evidence_store, subject, Period(T0, T0 + 86_400))
    assert lookup.sessions is not None and [s.record for s in lookup.sessions] == records
