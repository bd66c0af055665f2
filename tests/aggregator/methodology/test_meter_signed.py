"""Meter-signed OCPP session records in statements (issue 24): the stronger evidence wins, no
kWh counts twice.

The evidence is test_golden_v2's EV charger (gateway-signed intervals of 2 kWh, 36 of 40
credited) plus session records of the same gateway sealed in real batches of their own. Figures
are worked by hand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.methodology import (
    DoubleClaim,
    StatementStore,
    Subject,
    compute,
    issue_statement,
    load_parameter_set,
    verify_statement,
)
from aggregator.methodology.statements import earlier_claims
from aggregator.sessions.intake import enrol_network, import_sessions
from aggregator.store import SQLiteEvidenceStore
from aggregator.view import BatchRef
from evidence import generate_key, public_key_pem
from evidence.batch import seal_batch
from evidence.records import CarriedValue, SessionRecord, encode_record
from firmware_sim.ev_platform import Order, manifest, to_json

from .evidence_fixture import T0, SealedEvidence
from .test_golden import PERIOD
from .test_golden_v2 import KEY, ev_source, v2

DATA = Path(__file__).parent / "data"
SUBJECT = Subject.of_meters("gw-ev", ["alfen-1"])
GRID = 0.6361  # the conservative factor for Beijing (test_assurance)


def session(
    tx: str, start_slot: float, stop_slot: float, wh: float, *, assurance: str = "meter_signed",
    flags: tuple[str, ...] = (), first: float = 100_000.0,
) -> SessionRecord:  # fmt: skip
    status = "signature_failed" if "signature_failed" in flags else "verified"
    signed = () if assurance != "meter_signed" and status == "verified" else (
        CarriedValue("Transaction.Begin", f"OCMF|begin {tx}|sig", "verified"),
        CarriedValue("Transaction.End", f"OCMF|end {tx}|sig", status),  # type: ignore[arg-type]
    )  # fmt: skip
    return SessionRecord(
        "CP-1", 1, "alfen-1", tx, "ocpp1.6", round((T0 + start_slot * 900) * 1000),
        round((T0 + stop_slot * 900) * 1000), first, first + wh, wh, "EVDisconnected", signed, None,
        assurance, flags,  # type: ignore[arg-type]
    )  # fmt: skip


class ChainEvidence(SealedEvidence):
    """The fixture's sealed evidence, with session records sealed in batches of their own and
    found as the SQLite store's ``chain_sessions`` finds them."""

    def __init__(self, base: SealedEvidence) -> None:
        self.__dict__.update(base.__dict__)
        self._chain: list[tuple[BatchRef, int, bytes]] = []

    def seal_sessions(self, gateway: str, records: Sequence[SessionRecord]) -> int:
        key = self.keys[gateway]
        seq, prev = self._last.get(gateway, (0, "0" * 64))
        leaves = [encode_record(r) for r in records]
        sealed = seal_batch(leaves, key=key, gateway=gateway, seq=seq + 1, prev=prev, created_ms=0)
        self._last[gateway] = (seq + 1, sealed.header_sha256)
        self._bytes[(gateway, seq + 1)] = sealed.to_bytes()
        ref = BatchRef(gateway, seq + 1, sealed.header_sha256, sealed.header.root, key.key_id)
        self._chain += [(ref, i, raw) for i, raw in enumerate(leaves)]
        return seq + 1

    def chain_sessions(
        self, *, gateway: str | None = None, charger: str | None = None, transaction_id: str | None = None
    ) -> list[tuple[BatchRef, int, bytes]]:
        return [c for c in self._chain if gateway in (None, c[0].gateway)]


SIGNED = session("t-1", 20.1, 24.2, 9_500.0)  # over slots 20-24: 5 credited intervals, 10 kWh
OVER_IMPLAUSIBLE = session("t-2", 6.1, 7.9, 3_000.0)  # slots 6 (credited) and 7 (implausible)
LIAR = session("t-3", 28.0, 30.0, 9_000.0, assurance="gateway_signed", flags=("signature_failed",))
PLAIN = session("t-4", 31.0, 33.0, 4_000.0, assurance="gateway_signed")
ACROSS = session("t-5", 39.0, 41.0, 4_000.0)  # stops after the period: its intervals stand


def chain_source(*records: SessionRecord) -> ChainEvidence:
    src = ChainEvidence(ev_source())
    src.seal_sessions("gw-ev", list(records))
    return src


def figures(e_mwh: float, mpe: float = 0.01) -> tuple[float, float]:
    be = e_mwh * (1 - mpe) * 1000 / 0.15 * 0.06 * 2.106 / 1000 * 0.99
    pe = e_mwh * (1 + mpe) / (1 - 0.06) * GRID
    return be, pe


def test_meter_signed_sessions_replace_the_intervals_they_span() -> None:
    src = chain_source(SIGNED, OVER_IMPLAUSIBLE, LIAR, PLAIN, ACROSS, SIGNED)  # SIGNED twice
    statement = issue_statement(compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD), KEY, created_ms=0)
    body = statement.body
    levels = body["assurance"]["levels"]
    assert levels["meter_signed"]["kwh"] == pytest.approx(12.5, rel=1e-12)  # 9.5 + 3
    assert levels["gateway_signed"]["kwh"] == pytest.approx(72.0 - 10.0 - 2.0, rel=1e-12)  # 6 displaced
    assert body["activity"]["energy_mwh"] * 1000 == pytest.approx(60.0 + 12.5, rel=1e-12)
    ms_be, ms_pe = figures(12.5 / 1000)
    gw_be, gw_pe = figures(60.0 / 1000)
    assert (levels["meter_signed"]["be_tco2e"], levels["meter_signed"]["pe_tco2e"]) == pytest.approx(
        (ms_be, ms_pe)
    )
    assert body["result"]["be_tco2e"] == pytest.approx(ms_be + gw_be, rel=1e-12)
    assert body["result"]["pe_tco2e"] == pytest.approx(ms_pe + gw_pe, rel=1e-12)
    chain = body["evidence"]["chain_sessions"]
    assert chain["looked_up"] is True
    assert {(i["transaction_id"], i["status"]) for i in chain["items"]} == {
        ("t-1", "credited"), ("t-1", "overlaps_credited_session"), ("t-2", "credited"),
        ("t-3", "signature_failed"), ("t-4", "not_meter_signed"), ("t-5", "across_period_bound"),
    }  # fmt: skip
    t1 = next(i for i in chain["items"] if i["status"] == "credited" and i["transaction_id"] == "t-1")
    assert (t1["gateway"], t1["seq"], t1["index"], t1["level"], t1["energy_wh"]) == (
        "gw-ev",
        2,
        0,
        "meter_signed",
        9500.0,
    )
    assert t1["intervals_displaced"] == 5
    assert next(i for i in chain["items"] if i["transaction_id"] == "t-3")["level"] == "gateway_signed"
    report = verify_statement(statement.to_bytes(), issuer_key=KEY.public_key, source=src)
    assert report.ok, str(report)


def test_a_set_that_refuses_meter_signed_leaves_the_intervals_and_says_so() -> None:
    strict = load_parameter_set(DATA / "ev-charging-jjj-2.2.0.yaml")
    src = chain_source(SIGNED)
    body = issue_statement(compute(src, strict, SUBJECT, PERIOD), KEY, created_ms=0).body
    ms = body["assurance"]["levels"]["meter_signed"]
    assert ms["credited"] is False and ms["kwh"] == 0.0
    assert ms["activity_not_credited"] == {"energy_mwh": pytest.approx(0.0095, rel=1e-12)}
    assert body["assurance"]["levels"]["gateway_signed"]["kwh"] == pytest.approx(72.0, rel=1e-12)
    assert [i["status"] for i in body["evidence"]["chain_sessions"]["items"]] == ["assurance_refused"]


def test_an_imported_session_under_a_meter_signed_one_is_covered(tmp_path: Path) -> None:
    def at(slot: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(T0 + slot * 900, dt.UTC)

    order = Order("net-a", "s-1", "alfen-1", "1", at(21), at(23), 100.0, 108.0, 8.0, 22.0, 8000.0)
    store = SQLiteEvidenceStore(tmp_path / "agg.db")
    try:
        key = generate_key()
        enrol_network(store, "net-a", public_key_pem(key.public_key), region="beijing", now_ms=0)
        data = to_json([order])
        import_sessions(store, "net-a", data, manifest(key, "net-a", data, 1, order.start, order.stop),
                        now_ms=(T0 + 86_400) * 1000, via="file")  # fmt: skip
        sessions = store.imported_sessions("net-a")
    finally:
        store.close()
    strict = load_parameter_set(DATA / "ev-charging-jjj-2.3.0.yaml")  # refuses gateway_signed
    body = issue_statement(
        compute(chain_source(SIGNED), strict, SUBJECT, PERIOD, sessions=sessions), KEY, created_ms=0
    ).body
    assert body["evidence"]["sessions"]["by_status"] == {"meter_signed_evidence_covers": 1}
    levels = body["assurance"]["levels"]
    assert levels["meter_signed"]["kwh"] == pytest.approx(9.5) and levels["platform_attested"]["kwh"] == 0.0
    assert levels["gateway_signed"]["kwh"] == 0.0


def test_a_source_without_chain_sessions_says_meter_signed_evidence_was_not_looked_up() -> None:
    body = issue_statement(
        compute(ev_source(), v2("ev-charging-jjj"), SUBJECT, PERIOD), KEY, created_ms=0
    ).body
    chain = body["evidence"]["chain_sessions"]
    assert chain["looked_up"] is False and "not looked up" in chain["why"]
    assert body["assurance"]["levels"]["gateway_signed"]["kwh"] == pytest.approx(72.0)


def test_a_changed_session_record_fails_verification() -> None:
    src = chain_source(SIGNED)
    doc = issue_statement(compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD), KEY, created_ms=0).to_bytes()
    seq = src._chain[0][0].seq
    held = src.batch_bytes("gw-ev", seq)
    assert held is not None and b"109500.0" in held
    src.replace_bytes("gw-ev", seq, held.replace(b"109500.0", b"110500.0"))  # the batch edited
    report = verify_statement(doc, issuer_key=KEY.public_key, source=src)
    assert not report.ok and "chain_sessions: batch gw-ev#2" in str(report)
    src.replace_bytes("gw-ev", seq, held)  # the store's index row edited instead
    src._chain[0] = (src._chain[0][0], 0, encode_record(session("t-1", 20.1, 24.2, 10_500.0)))
    report = verify_statement(doc, issuer_key=KEY.public_key, source=src)
    assert not report.ok and "not the record its verified batch holds" in str(report)
    src._chain[0] = (src._chain[0][0], 0, encode_record(SIGNED))
    assert verify_statement(doc, issuer_key=KEY.public_key, source=src).ok


@settings(max_examples=40, deadline=None)
@given(
    spans=st.lists(
        st.tuples(st.integers(0, 39), st.integers(1, 8), st.integers(0, 20_000)), min_size=1, max_size=6
    )
)
def test_each_kwh_is_credited_once(spans: list[tuple[int, int, int]]) -> None:
    """Whatever sessions are signed: the levels add up to the activity, meter-signed is the
    credited sessions' energy, and gateway-signed is 2 kWh per credited interval left."""
    records = [
        session(f"t-{n}", a + 0.1, min(a + w, 40) - 0.1, float(wh)) for n, (a, w, wh) in enumerate(spans)
    ]
    body = issue_statement(compute(chain_source(*records), v2("ev-charging-jjj"), SUBJECT, PERIOD), KEY,
                           created_ms=0).body  # fmt: skip
    levels = body["assurance"]["levels"]
    items = body["evidence"]["chain_sessions"]["items"]
    credited = [i for i in items if i["status"] == "credited"]
    assert levels["meter_signed"]["kwh"] == pytest.approx(
        sum(i["energy_wh"] for i in credited) / 1000, abs=1e-9
    )
    displaced = sum(i["intervals_displaced"] for i in credited)
    assert levels["gateway_signed"]["kwh"] == pytest.approx(72.0 - 2.0 * displaced, abs=1e-9)
    assert body["activity"]["energy_mwh"] * 1000 == pytest.approx(
        levels["meter_signed"]["kwh"] + levels["gateway_signed"]["kwh"], abs=1e-9
    )
    for a in credited:  # credited sessions never overlap
        for b in credited:
            assert a is b or a["stop_ms"] <= b["start_ms"] or b["stop_ms"] <= a["start_ms"]


def test_a_source_that_cannot_look_up_verifies_the_listed_sessions_from_their_batches() -> None:
    """A package's source holds batches but no index: the listed records are read from them."""
    src = chain_source(SIGNED, LIAR)
    doc = issue_statement(compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD), KEY, created_ms=0).to_bytes()
    batches_only = SealedEvidence()
    batches_only.__dict__.update({k: v for k, v in src.__dict__.items() if k != "_chain"})
    report = verify_statement(doc, issuer_key=KEY.public_key, source=batches_only)
    assert report.ok, str(report)
    seq = src._chain[0][0].seq
    held = batches_only.batch_bytes("gw-ev", seq)
    assert held is not None
    batches_only.replace_bytes("gw-ev", seq, held.replace(b"109500.0", b"110500.0"))
    report = verify_statement(doc, issuer_key=KEY.public_key, source=batches_only)
    assert not report.ok and "chain_sessions: batch gw-ev#2" in str(report)
    batches_only.drop_batch("gw-ev", seq)
    report = verify_statement(doc, issuer_key=KEY.public_key, source=batches_only)
    assert not report.ok and "gw-ev#2: not in the evidence store" in str(report)


def test_a_session_record_credited_once_cannot_be_credited_by_another_statement(tmp_path: Path) -> None:
    src = chain_source(SIGNED)
    first = issue_statement(compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD), KEY, created_ms=0)
    no_intervals = load_parameter_set(DATA / "ev-charging-jjj-2.3.0.yaml")  # its runs cannot clash
    again = issue_statement(compute(src, no_intervals, SUBJECT, PERIOD), KEY, created_ms=1)
    assert again.body["evidence"]["chain_sessions"]["by_status"] == {"credited": 1}
    with StatementStore(tmp_path / "statements.db") as store:
        store.save(first)
        with pytest.raises(DoubleClaim, match=r"gw-ev/alfen-1/ocpp_session \[1750482090, 1750485780\)"):
            store.save(again)


def test_a_supplementary_statement_does_not_credit_a_session_record_again(tmp_path: Path) -> None:
    src = chain_source(SIGNED)
    first = issue_statement(compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD), KEY, created_ms=0)
    claims = earlier_claims(first)
    assert ("alfen-1", "ocpp_session", 1750482090, 1750485780) in claims.runs
    late = session("t-9", 3.1, 3.9, 1_000.0, first=200_000.0)  # sealed late, over the gap at slot 3
    over_credited = session("t-8", 26.1, 26.9, 1_500.0, first=300_000.0)  # slot 26 was credited
    src.seal_sessions("gw-ev", [late, over_credited])
    supplement = issue_statement(
        compute(src, v2("ev-charging-jjj"), SUBJECT, PERIOD, earlier=[claims]), KEY, created_ms=1
    )
    chain = supplement.body["evidence"]["chain_sessions"]
    assert {i["transaction_id"]: i["status"] for i in chain["items"]} == {
        "t-1": "credited_earlier",
        "t-9": "credited",
        "t-8": "intervals_credited_earlier",
    }
    assert supplement.body["assurance"]["levels"]["meter_signed"]["kwh"] == pytest.approx(1.0)
    assert supplement.body["assurance"]["levels"]["gateway_signed"]["kwh"] == 0.0  # all credited before
    with StatementStore(tmp_path / "statements.db") as store:
        store.save(first)
        store.save(supplement)  # no double claim
    assert verify_statement(
        supplement.to_bytes(), issuer_key=KEY.public_key, source=src, earlier=lambda sid: first.to_bytes()
    ).ok
