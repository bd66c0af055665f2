"""Signed statements, the store's at-most-once ledger, and verification with tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aggregator.methodology import (
    DoubleClaim,
    Period,
    StatementFormatError,
    StatementStore,
    Subject,
    compute,
    issue_statement,
    load_parameter_set,
    parse_statement,
    verify_statement,
)
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.statements import canonical, sign_statement
from evidence import generate_key

from .evidence_fixture import T0, SealedEvidence
from .test_golden import PERIOD, pv_source

PV = load_parameter_set(PARAMS_DIR / "pv-export-mee.yaml")
SUBJECT = Subject.of_meters("gw-pv", ["house-01-grid"])
KEY = generate_key()


def statement(src: SealedEvidence, period: Period = PERIOD):  # type: ignore[no-untyped-def]
    return issue_statement(compute(src, PV, SUBJECT, period), KEY, created_ms=1_750_000_000_000)


def test_statement_names_parameter_set_and_evidence() -> None:
    src = pv_source()
    st = statement(src)
    b = st.body
    assert b["methodology"]["parameter_set"] == {
        "id": "pv-export-mee",
        "version": "1.0.0",
        "sha256": __import__("hashlib").sha256((PARAMS_DIR / "pv-export-mee.yaml").read_bytes()).hexdigest(),
        "hash": "sha256 of the parameter file's exact bytes",
    }
    ev = b["evidence"]
    assert ev["batches"][0]["root"] == json.loads(src.batch_bytes("gw-pv", 1).split(b"\n")[0])["root"]  # type: ignore[union-attr]
    assert (ev["seq_first"], ev["seq_last"]) == (1, 1)
    assert (ev["intervals_used"], ev["intervals_excluded"], ev["intervals_missing"]) == (36, 4, 0)
    assert ev["implausible"] == [
        {
            "meter": "house-01-grid",
            "quantity": "energy_export",
            "start": T0 + 7 * 900,
            "issues": ["energy_above_nameplate"],
        }
    ]
    runs = ev["series"][0]["credited_runs"]  # slots 0-2, 4-6, 8-10, 12-14, 16-39
    assert runs == [[T0 + a * 900, T0 + b * 900] for a, b in [(0, 3), (4, 7), (8, 11), (12, 15), (16, 40)]]
    assert "fuel_consumption" not in b["parameters"]["assumed"]


def test_statement_round_trip_is_canonical() -> None:
    st = statement(pv_source())
    again = parse_statement(st.to_bytes())
    assert again == st and again.id == st.id
    body = json.loads(st.body_bytes)
    spaced = json.dumps(body, sort_keys=True).encode() + b"\n" + st.to_bytes().split(b"\n")[1] + b"\n"
    with pytest.raises(StatementFormatError, match="canonical"):
        parse_statement(spaced)
    with pytest.raises(StatementFormatError):
        sign_statement({**body, "issuer": {"key_id": "other"}}, KEY)
    assert canonical(body) == st.body_bytes


def test_double_claim_is_refused_naming_statement_and_intervals(tmp_path: Path) -> None:
    src = pv_source()
    first = statement(src, Period(T0 + 16 * 900, T0 + 28 * 900))  # slots 16-27: all credited
    with StatementStore(tmp_path / "agg.db") as store:
        store.save(first)
        # A disjoint later period is fine (its own intervals) ...
        store.save(statement(src, Period(T0 + 28 * 900, T0 + 40 * 900)))
        # ... an overlapping one is refused whole, and says what and by whom.
        overlap = statement(src, Period(T0 + 22 * 900, T0 + 34 * 900))
        with pytest.raises(DoubleClaim) as err:
            store.save(overlap)
        msg = str(err.value)
        assert (
            first.id in msg and f"gw-pv/house-01-grid/energy_export [{T0 + 22 * 900}, {T0 + 28 * 900})" in msg
        )
        assert store.get(overlap.id) is None
        with pytest.raises(DoubleClaim, match="already stored"):
            store.save(first)
        assert [s.id for s in store.list()] == [first.id, store.list()[1].id]
        assert store.credited_by("gw-pv", "house-01-grid", "energy_export", T0 + 20 * 900) == first.id
        assert (
            store.credited_by("gw-pv", "house-01-grid", "energy_export", T0 + 3 * 900) is None
        )  # never credited


def test_store_is_durable_and_uses_wal(tmp_path: Path) -> None:
    st = statement(pv_source())
    with StatementStore(tmp_path / "agg.db") as store:
        store.save(st)
    with StatementStore(tmp_path / "agg.db") as store:
        assert store.document(st.id) == st.to_bytes()
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_verify_ok() -> None:
    src = pv_source()
    st = statement(src)
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert report.ok, report
    assert report.recomputed_er_tco2e == st.er_tco2e
    # The statement lists batch 1 (all export records); batch 2 holds only the meter's
    # import records, which the verifier also re-reads to be sure nothing was left out.
    assert len(st.body["evidence"]["batches"]) == 1 and report.batches_checked == 2


def test_tampered_statement_fails_signature() -> None:
    src = pv_source()
    st = statement(src)
    er = json.dumps(st.er_tco2e).encode()
    tampered = st.to_bytes().replace(
        b'"er_tco2e":' + er, b'"er_tco2e":' + json.dumps(st.er_tco2e * 2).encode()
    )
    assert tampered != st.to_bytes()
    report = verify_statement(tampered, issuer_key=KEY.public_key, source=src)
    assert not report.ok and report.problems[0].startswith("signature:")


def test_resigned_statement_with_inflated_er_fails_recomputation() -> None:
    src = pv_source()
    body = json.loads(statement(src).body_bytes)
    body["result"]["er_tco2e"] *= 2  # an insider with the aggregator's key
    forged = sign_statement(body, KEY)
    report = verify_statement(forged.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert not report.ok
    assert any(p.startswith("recomputed: .result.er_tco2e") for p in report.problems), report


def test_tampered_batch_bytes_fail() -> None:
    src = pv_source()
    st = statement(src)
    data = src.batch_bytes("gw-pv", 1)
    assert data is not None
    src.replace_bytes("gw-pv", 1, data.replace(b'"delta":1.25', b'"delta":9.25', 1))
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert not report.ok and "records do not hash to the signed Merkle root" in str(report)


def test_missing_batch_fails() -> None:
    src = pv_source()
    st = statement(src)
    src.drop_batch("gw-pv", 1)
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert "batch gw-pv#1 is not in the evidence store" in str(report)


def test_changed_plausibility_verdict_fails() -> None:
    src = pv_source()
    st = statement(src)
    src.set_issues("house-01-grid", "energy_export", T0 + 7 * 900, ())  # now "plausible"
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert not report.ok and any(".evidence.implausible" in p for p in report.problems)


def test_changed_parameter_file_fails(tmp_path: Path) -> None:
    src = pv_source()
    st = statement(src)
    text = (PARAMS_DIR / "pv-export-mee.yaml").read_bytes()
    (tmp_path / "pv.yaml").write_bytes(
        text.replace(
            b"national: {2021: 0.5568, 2022: 0.5366, 2023: 0.5306}",
            b"national: {2021: 0.5568, 2022: 0.5366, 2023: 0.6306}",
        )
    )
    report = verify_statement(st.to_bytes(), issuer_key=KEY.public_key, source=src, params_dir=tmp_path)
    assert not report.ok and "the file was changed" in str(report)


def test_wrong_issuer_key_fails() -> None:
    src = pv_source()
    report = verify_statement(statement(src).to_bytes(), issuer_key=generate_key().public_key, source=src)
    assert not report.ok and "issuer key" in str(report)
