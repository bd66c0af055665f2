"""Evidence packages of statements crediting imported sessions (issue 24): a real store holds a
gateway's sealed batches (interval records and an OCPP session record of one charger) and a
network's week imported in two files; the statement credits both; its package carries the two
source files, their signed manifests and the network's key, verifies offline with the pinned
keys, and is refused, naming the piece, when any of them was changed."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.statements import parse_statement, sign_statement
from aggregator.methodology.store import StatementStore
from aggregator.package import MANIFEST, NETWORK_KEYS, build_package, canonical_json, member_order, write_zip
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.sessions.intake import enrol_network, import_sessions
from aggregator.store import SQLiteEvidenceStore
from common.clock import SystemClock
from drivers.ocpp.config import ChargerConfig
from evidence import GatewayKey, IntervalRecord, Stats, generate_key, public_key_pem, save_private_key
from evidence.batch import parse_batch
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.records import SessionRecord as ChainSession
from evidence.records import decode_record
from evidence.wire import Ack, batch_topic
from firmware_sim.ev_platform import manifest, to_csv, to_json
from firmware_sim.ocmf_meter import OcmfMeter
from gateway.ocpp_sessions import OcppSessions
from puhui.cli import main
from puhui.verify import PackageSource, verify_package
from puhui.verify_sessions import check_chain_sessions
from tests.aggregator.ingest_support import SimGateway
from tests.aggregator.sessions.support import NETWORK, NOW_MS, WEEK, WEEK_END, week_orders
from tests.aggregator.test_ocpp_chain_sessions import session as ocpp_session

GW, CHARGER = "gw-net", "CP-GW"  # the gateway, and the one charger it meters itself
OCPP_METER = "CP-1.1"  # a connector meter the gateway reads over OCPP (OCMF-signed sessions)
START, END = int(WEEK.timestamp()), int(WEEK_END.timestamp())


@dataclass(frozen=True)
class Built:
    directory: Path
    statement_id: str
    package: bytes = field(repr=False)  # without a key list: the pinned key signed the statement
    aggregator: GatewayKey = field(repr=False)
    network: GatewayKey = field(repr=False)
    sources: tuple[str, str]  # the sha256 of the JSON file and of the CSV file


def _intervals(n: int) -> list[IntervalRecord]:
    out, c = [], 7000.0
    for i in range(n):
        s = START + 3600 + i * 900
        stats = Stats("kW", 5.0, 10.0, 10.0)
        t0, t1 = s * 1000 - 500, (s + 900) * 1000 - 500
        out.append(IntervalRecord(CHARGER, "energy_delivered", "kWh", s, s + 900, "counter", c, t0, c + 2.5,
                                  t1, 2.5, stats, 90, 90))  # fmt: skip
        c += 2.5
    return out


@functools.cache
def _chain_session() -> ChainSession:
    """A meter-signed OCPP session of OCPP_METER in the week: its Begin and End readings are OCMF
    values that verify with the meter's pinned key."""
    meter = OcmfMeter("SIM000024")
    key = meter.public_key_hex()
    keys = {"CP-1": ChargerConfig(meter_key=key).meter_keys()}
    sessions = OcppSessions(lambda s: None, meters={OCPP_METER}, keys=keys)
    ocpp_session(sessions, meter, "101", START + 3600, 1_000_000, 1_012_345, key)
    [record] = sessions.take_closed()
    assert record.assurance == "meter_signed" and record.meter == OCPP_METER
    return record


async def _ingest(db: Path, tmp: Path, gw: SimGateway, enrolment: bytes) -> None:
    config = AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(db)},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp / "unused.pem")}
    )  # fmt: skip
    records = _intervals(8)
    with StoreThreads() as threads:
        store = SQLiteEvidenceStore(db)
        try:
            registry = GatewayRegistry(store)
            registry.enrol(enrolment, at_ms=0)
            ingest = BatchIngest(config, store=store, registry=registry, key=generate_key(),
                                 clock=SystemClock(), run_db=threads.run_db)  # fmt: skip
            for batch in (records[:4], [*records[4:], _chain_session()]):
                sealed = gw.seal(list(batch), created_ms=(START + 3 * 3600) * 1000)
                answer = await ingest.process(batch_topic(GW), sealed.to_bytes())
                assert answer is not None and isinstance(answer[1], Ack), answer
        finally:
            store.close()


def _import_week(db: Path, network: GatewayKey) -> tuple[str, str]:
    """The week in two files: the first five chargers as JSON, the others as CSV."""
    orders = week_orders()
    first = [o for o in orders if o.charger <= "CP-005"]
    rest = [o for o in orders if o.charger > "CP-005"]
    store = SQLiteEvidenceStore(db)
    try:
        enrol_network(store, NETWORK, public_key_pem(network.public_key), region="north_china", now_ms=0)
        shas = []
        for orders_, data in ((first, to_json(first)), (rest, to_csv(rest))):
            signed = manifest(network, NETWORK, data, len(orders_), WEEK, WEEK_END)
            report = import_sessions(store, NETWORK, data, signed, now_ms=NOW_MS, via="file")
            assert len(report.accepted) == len(orders_), report.to_json()
            shas.append(report.source_sha256)
    finally:
        store.close()
    return shas[0], shas[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("aggregator")
    db = tmp / "agg.db"
    chargers = sorted({o.charger for o in week_orders()})
    gw = SimGateway(GW, meters=(CHARGER,))
    meters = [EnrolledMeter(c, "ev_charging", 22.0, "1") for c in [*chargers, CHARGER, OCPP_METER]]
    enrolment = make_enrolment(gw.key, gateway=GW, site="depot", meters=meters, created_ms=0).to_bytes()
    asyncio.run(_ingest(db, tmp, gw, enrolment))
    network = generate_key()
    (tmp / "net.pub.pem").write_bytes(public_key_pem(network.public_key))
    sources = _import_week(db, network)
    aggregator = generate_key()
    save_private_key(aggregator, tmp / "agg.pem")
    (tmp / "agg.pub.pem").write_bytes(public_key_pem(aggregator.public_key))
    compute = ["aggregator", "reductions", "compute", "--db", str(db), "--key", str(tmp / "agg.pem"),
               "--params", str(PARAMS_DIR / "ev-charging-jjj.yaml"), "--gateway", GW,
               "--start", str(START), "--end", str(END), "--sessions-from", NETWORK]  # fmt: skip
    for m in [*chargers, CHARGER, OCPP_METER]:
        compute += ["--meter", m]
    assert main(compute) == 0
    import sqlite3

    with sqlite3.connect(db) as conn:
        [(statement_id,)] = conn.execute("SELECT id FROM reduction_statements").fetchall()
    out = tmp / "sessions.zip"
    assert (
        main(["aggregator", "reductions", "package", "--db", str(db), statement_id, "--out", str(out)]) == 0
    )
    return Built(tmp, statement_id, out.read_bytes(), aggregator, network, sources)


def _members(package: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _repack(
    package: bytes, change: Callable[[dict[str, bytes]], None], roles: dict[str, str] | None = None
) -> bytes:
    """A careful forger: change members, then make the manifest and the zip consistent again."""
    members = _members(package)
    doc = json.loads(members.pop(MANIFEST))
    known = {m["name"]: m["role"] for m in doc["members"]} | (roles or {})
    change(members)
    doc["statement"] = parse_statement(members["statement.statement"]).id
    doc["members"] = [
        {"name": n, "role": known[n], "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for n, d in sorted(members.items())
    ]
    members[MANIFEST] = canonical_json(doc)
    return write_zip([(n, members[n]) for n in member_order(list(members))])


def _resign(built: Built, change: Callable[[dict[str, Any]], None]) -> bytes:
    """A dishonest aggregator: a statement body changed and signed again with its own key."""

    def edit(m: dict[str, bytes]) -> None:
        body = parse_statement(m["statement.statement"]).body
        change(body)
        m["statement.statement"] = sign_statement(body, built.aggregator).to_bytes()

    return _repack(built.package, edit)


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = body["evidence"]["sessions"]["items"]
    return items


def _body(built: Built) -> dict[str, Any]:
    return parse_statement(_members(built.package)["statement.statement"]).body


def _verify(package: bytes, built: Built, **pins: GatewayKey) -> list[str]:
    report = verify_package(package, built.aggregator.public_key, {n: k.public_key for n, k in pins.items()})
    return report.problems


def _src(sha: str) -> str:
    return f"sessions/{sha}.source"


def _man(sha: str) -> str:
    return f"sessions/{sha}.manifest"


def test_the_package_carries_sources_manifests_and_key_and_verifies_offline(
    built: Built, tmp_path: Path
) -> None:
    names = set(_members(built.package))
    a, b = built.sources
    assert {NETWORK_KEYS, _src(a), _man(a), _src(b), _man(b)} <= names
    body = _body(built)
    levels = body["assurance"]["levels"]
    assert levels["platform_attested"]["kwh"] == pytest.approx(sum(o.energy_kwh for o in week_orders()))
    assert body["evidence"]["excluded_by_reason"] == {"period_below_completeness": 8}  # 2 h of a week
    assert body["evidence"]["sessions"]["by_status"] == {"credited": len(week_orders())}
    batch = _members(built.package)["batches/0000000002.batch"]
    assert b'"type":"session"' in batch  # an OCPP session record sealed beside the intervals
    assert body["evidence"]["chain_sessions"]["looked_up"] is True
    assert levels["meter_signed"]["kwh"] == pytest.approx(12.345)  # the OCMF-signed session, credited

    shutil.copy(built.directory / "sessions.zip", tmp_path / "s.zip")
    for key in ("agg.pub.pem", "net.pub.pem"):
        shutil.copy(built.directory / key, tmp_path / key)
    done = subprocess.run(
        [sys.executable, "-m", "puhui", "verify", "s.zip", "--issuer", "agg.pub.pem",
         "--network-key", f"{NETWORK}=net.pub.pem"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"VERIFIED statement {built.statement_id}" in done.stdout
    for checked in (f"network {NETWORK}: key", "the one pinned for it",
                    f"sessions: {len(week_orders())} session(s) of {NETWORK} found in 2 source file(s)",
                    "platform_attested recomputed from the package's session sources"):  # fmt: skip
        assert checked in done.stdout, done.stdout
    unpinned = verify_package(built.package, built.aggregator.public_key)
    assert unpinned.ok, unpinned.problems
    assert "as the package gives it (pinned at the aggregator at 0 ms; not pinned here)" in str(unpinned)


def test_the_same_statement_packages_to_the_same_bytes(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = built.directory / "agg.db"
    out = tmp_path / "again.zip"
    capsys.readouterr()
    assert (
        main(["aggregator", "reductions", "package", "--db", str(db), built.statement_id, "--out", str(out)])
        == 0
    )
    assert out.read_bytes() == built.package
    assert (
        f": 14 members, 2 batches, 2 session sources, {len(built.package)} bytes" in capsys.readouterr().out
    )


def test_a_tampered_source_is_refused_naming_it(built: Built) -> None:
    a, _ = built.sources

    def tamper(m: dict[str, bytes]) -> None:
        m[_src(a)] = m[_src(a)].replace(b'"energy": 12.63', b'"energy": 13.63', 1)

    forged = _repack(built.package, tamper)
    assert _members(forged)[_src(a)] != _members(built.package)[_src(a)]
    problems = _verify(forged, built)
    assert problems and problems[0].startswith(f"{_src(a)}: sha256 is "), problems
    assert f"not the source {a} the statement lists" in problems[0]


def test_a_swapped_manifest_is_refused_naming_the_source(built: Built) -> None:
    a, b = built.sources

    def swap(m: dict[str, bytes]) -> None:
        m[_man(a)], m[_man(b)] = m[_man(b)], m[_man(a)]

    problems = _verify(_repack(built.package, swap), built)
    assert any(p.startswith(f"{_man(a)}: manifest: file_sha256 {b} does not match") for p in problems), (
        problems
    )
    assert any(p.startswith(f"{_man(b)}: manifest: file_sha256 {a} does not match") for p in problems), (
        problems
    )


def test_a_wrong_network_key_is_refused(built: Built) -> None:
    other = generate_key()

    def rekey(m: dict[str, bytes]) -> None:
        doc = json.loads(m[NETWORK_KEYS])
        doc["networks"][0] |= {
            "public_key_pem": public_key_pem(other.public_key).decode(),
            "key_id": other.key_id,
        }
        m[NETWORK_KEYS] = canonical_json(doc)

    problems = _verify(_repack(built.package, rekey), built)
    a, b = built.sources
    for sha in (a, b):
        want = (
            f"{_man(sha)}: manifest: signed with key {built.network.key_id}, network {NETWORK} is pinned to"
        )
        assert any(p.startswith(f"{want} {other.key_id}") for p in problems), problems
    problems = _verify(
        built.package, built, **{NETWORK: other}
    )  # the package's key is not the one pinned here
    want = f"{NETWORK_KEYS}: network {NETWORK}'s key is {built.network.key_id}, the key pinned for it is"
    assert problems == [f"{want} {other.key_id}"]


def test_a_manifest_signed_by_another_key_is_refused(built: Built) -> None:
    """The forger re-signs a changed source's manifest with a key of its own and puts that key in the
    package: the key pinned here for the network refuses it."""
    other = generate_key()
    a, _ = built.sources
    members = _members(built.package)
    data = members[_src(a)]
    signed = manifest(other, NETWORK, data, data.count(b'"session_id"'), WEEK, WEEK_END)

    def resign(m: dict[str, bytes]) -> None:
        m[_man(a)] = signed

    problems = _verify(_repack(built.package, resign), built)
    assert any(p.startswith(f"{_man(a)}: manifest: signed with key {other.key_id}") for p in problems), (
        problems
    )


def test_a_source_or_the_network_key_removed_is_refused(built: Built) -> None:
    a, _ = built.sources

    def without_source(m: dict[str, bytes]) -> None:
        del m[_src(a)], m[_man(a)]

    def without_key(m: dict[str, bytes]) -> None:
        del m[NETWORK_KEYS]

    problems = _verify(_repack(built.package, without_source), built)
    assert problems == [
        f"{_src(a)}: not in the package: statement sessions of {NETWORK} came from source {a}"
    ]
    problems = _verify(_repack(built.package, without_key), built)
    assert problems == [f"package: no {NETWORK_KEYS}: the statement lists sessions of network {NETWORK}"]


def test_a_member_no_listed_session_comes_from_is_refused(built: Built) -> None:
    extra = "sessions/" + "0" * 64 + ".source"
    forged = _repack(built.package, lambda m: m.update({extra: b"{}"}), {extra: "session-source"})
    assert _verify(forged, built) == [f"{extra}: no session the statement lists comes from it"]


def test_a_session_missing_from_its_source_is_refused_naming_it(built: Built) -> None:
    a, b = built.sources

    def move(body: dict[str, Any]) -> None:
        first = next(i for i in _items(body) if i["source_sha256"] == a)
        first["source_sha256"] = b

    problems = _verify(_resign(built, move), built)
    sid = next(i["session_id"] for i in _items(_body(built)))
    assert problems == [f"sessions: {NETWORK} session {sid} is not in its source {b}"], problems


def test_a_session_whose_content_or_energy_differs_is_refused_naming_it(built: Built) -> None:
    def digest(body: dict[str, Any]) -> None:
        _items(body)[3]["sha256"] = "ab" * 32

    problems = _verify(_resign(built, digest), built)
    assert len(problems) == 1 and "hashes to" in problems[0] and "the statement lists abab" in problems[0]
    sid = _items(_body(built))[3]["session_id"]
    assert problems[0].startswith(f"sessions: {NETWORK} session {sid}: its record in source ")

    def energy(body: dict[str, Any]) -> None:
        _items(body)[3]["energy_wh"] += 1000.0
        body["assurance"]["levels"]["platform_attested"]["activity"]["energy_mwh"] += 0.001

    problems = _verify(_resign(built, energy), built)
    assert len(problems) == 1 and problems[0].startswith(
        f"sessions: {NETWORK} session {sid}: the statement lists "
    )


def test_credited_energy_that_does_not_add_up_is_refused(built: Built) -> None:
    def inflate(body: dict[str, Any]) -> None:
        body["assurance"]["levels"]["platform_attested"]["activity"]["energy_mwh"] += 0.5

    problems = _verify(_resign(built, inflate), built)
    assert len(problems) == 1, problems
    assert problems[0].startswith("statement: assurance.levels.platform_attested credits ")


def test_a_changed_figure_fails_the_recomputation(built: Built) -> None:
    """Everything the sessions check looks at agrees, but the platform_attested BE was changed:
    the statement rebuilt from the package's sources differs."""

    def be(body: dict[str, Any]) -> None:
        body["assurance"]["levels"]["platform_attested"]["be_tco2e"] *= 1.1

    problems = _verify(_resign(built, be), built)
    assert problems and all(
        p.startswith("statement: recomputed: .assurance.levels.platform_attested") for p in problems
    )


def test_packages_of_statements_without_sessions_hold_no_session_members(built: Built) -> None:
    """A statement listing no session, with session members added, is refused: the members a
    package holds are exactly the ones its statement needs."""

    def drop(body: dict[str, Any]) -> None:
        del body["evidence"]["sessions"]

    problems = _verify(_resign(built, drop), built)
    a, b = built.sources
    for name in (NETWORK_KEYS, _src(a), _man(a), _src(b), _man(b)):
        assert f"{name}: the statement lists no imported session" in problems, problems


def test_chain_session_record_is_decoded_as_it_was_sealed(built: Built) -> None:
    sealed = parse_batch(_members(built.package)["batches/0000000002.batch"])
    decoded = [decode_record(r) for r in sealed.records]
    assert replace(_chain_session()) in decoded


def _chain_item(built: Built) -> dict[str, Any]:
    raw = parse_batch(_members(built.package)["batches/0000000002.batch"]).records[4]
    return {"gateway": GW, "seq": 2, "index": 4, "sha256": hashlib.sha256(raw).hexdigest()}


def test_the_package_source_finds_the_chain_session_records(built: Built) -> None:
    members = _members(built.package)
    batches = {s: members[f"batches/{s:010d}.batch"] for s in (1, 2)}
    source = PackageSource(GW, [], batches, {}, {})
    [(ref, index, raw)] = source.chain_sessions(gateway=GW)
    assert (ref.seq, index, decode_record(raw)) == (2, 4, _chain_session())
    assert source.chain_sessions(charger="CP-001") == [] and source.chain_sessions(gateway="gw-other") == []
    assert len(source.chain_sessions(charger="CP-1", transaction_id="101")) == 1
    assert source.chain_sessions(charger="CP-1", transaction_id="102") == []


def test_listed_chain_sessions_are_checked_against_the_batches(built: Built) -> None:
    good = _chain_item(built)
    checked: list[str] = []
    problems: list[str] = []
    members = _members(built.package)
    batches = {s: members[f"batches/{s:010d}.batch"] for s in (1, 2)}
    check_chain_sessions({"evidence": {"chain_sessions": {"items": [good]}}}, GW, batches, checked, problems)
    assert problems == [] and checked == [
        "chain sessions: 1 OCPP session record(s) found in the batches with their hashes"
    ]
    wrong = {
        "sha256": (
            {**good, "sha256": "0" * 64},
            f"chain_sessions: {GW}#2 record 4: the record hashes to {good['sha256']}",
        ),
        "index": ({**good, "index": 9}, f"chain_sessions: {GW}#2 record 9: the batch holds 5 records"),
        "interval": ({**good, "index": 0}, f"chain_sessions: {GW}#2 record 0: the record hashes to"),
        "seq": (
            {**good, "seq": 3},
            f"chain_sessions: {GW}#3 record 4: batch batches/0000000003.batch is not in",
        ),
        "gateway": (
            {**good, "gateway": "gw-x"},
            "chain_sessions: gw-x#2 record 4: not of the statement's gateway",
        ),
    }
    for what, (item, message) in wrong.items():

        def listing(body: dict[str, Any], item: dict[str, Any] = item) -> None:
            body["evidence"]["chain_sessions"] = {"looked_up": True, "items": [item]}

        problems = _verify(_resign(built, listing), built)
        assert any(p.startswith(message) for p in problems), (what, problems)
    raw = members["batches/0000000002.batch"]
    interval_digest = hashlib.sha256(parse_batch(raw).records[0]).hexdigest()
    problems = []
    item = {**good, "index": 0, "sha256": interval_digest}
    check_chain_sessions({"evidence": {"chain_sessions": {"items": [item]}}}, GW, batches, checked, problems)
    assert problems == [f"chain_sessions: {GW}#2 record 0: not a session record"]
    problems = _verify(_resign(built, lambda body: body["evidence"].update(
        {"chain_sessions": {"looked_up": True, "items": [good]}})), built)  # fmt: skip
    assert not any(p.startswith("chain_sessions:") for p in problems), problems


def test_the_batch_of_a_listed_chain_session_is_packaged(built: Built, tmp_path: Path) -> None:
    """A statement whose subject has no interval in a batch, but which lists an OCPP session record
    of it, gets that batch (and no session members: it lists no imported session)."""
    db = tmp_path / "agg.db"
    shutil.copy(built.directory / "agg.db", db)
    body = _body(built)
    body["subject"]["units"] = [{"id": "CP-001", "meters": ["CP-001"]}]
    body["evidence"]["batches"] = []
    del body["evidence"]["sessions"]
    body["evidence"]["chain_sessions"] = {"looked_up": True, "items": [_chain_item(built)]}
    statement = sign_statement(body, built.aggregator)
    store, statements = SQLiteEvidenceStore(db), StatementStore(db)
    try:
        statements.save(statement)
        package = build_package(store, statements, statement.id)
    finally:
        statements.close()
        store.close()
    names = set(_members(package))
    assert "batches/0000000002.batch" in names and "batches/0000000001.batch" not in names
    assert not any(n.startswith("sessions/") for n in names)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "evidence-package.md"


def test_the_sessions_script_in_the_docs_verifies_a_package_and_refuses_forgeries(
    built: Built, tmp_path: Path
) -> None:
    text = DOCS.read_text(encoding="utf-8")
    code = text.split("<!-- verify-sessions-script -->\n```python\n", 1)[1].split("\n```", 1)[0]
    (tmp_path / "check.py").write_text(code + "\n", encoding="utf-8")
    shutil.copy(built.directory / "net.pub.pem", tmp_path / "net.pub.pem")
    (tmp_path / "other.pem").write_bytes(public_key_pem(generate_key().public_key))

    def check(package: bytes, key: str = "net.pub.pem") -> subprocess.CompletedProcess[str]:
        (tmp_path / "p.zip").write_bytes(package)
        return subprocess.run([sys.executable, "check.py", "p.zip", key], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    done = check(built.package)
    assert done.returncode == 0, done.stderr
    kwh = sum(o.energy_kwh for o in week_orders())
    assert f"OK {len(week_orders())} sessions of {NETWORK} in 2 sources, {kwh:.3f} kWh" in done.stdout
    assert "InvalidSignature" in check(built.package, "other.pem").stderr
    a, b = built.sources

    def swap(m: dict[str, bytes]) -> None:
        m[_src(a)], m[_src(b)] = m[_src(b)], m[_src(a)]

    assert f"AssertionError: 10 source {a}" in check(_repack(built.package, swap)).stderr

    def energy(body: dict[str, Any]) -> None:
        _items(body)[0]["energy_wh"] += 1.0

    assert (
        f"AssertionError: 11 {_items(_body(built))[0]['session_id']}" in check(_resign(built, energy)).stderr
    )


def test_network_key_arguments_that_are_not_keys_are_refused(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package, issuer = str(built.directory / "sessions.zip"), str(built.directory / "agg.pub.pem")
    with pytest.raises(SystemExit) as stop:
        main(["verify", package, "--issuer", issuer, "--network-key", "net.pub.pem"])
    assert stop.value.code == 2 and "'net.pub.pem': expected NETWORK=KEY.pem" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("not a key")
    assert (
        main(["verify", package, "--issuer", issuer, "--network-key", f"{NETWORK}={tmp_path / 'junk.pem'}"])
        == 2
    )
    assert f"{tmp_path / 'junk.pem'}: not a public key" in capsys.readouterr().err
    other = tmp_path / "other.pem"
    other.write_bytes(public_key_pem(generate_key().public_key))
    assert main(["verify", package, "--issuer", issuer, "--network-key", f"{NETWORK}={other}"]) == 1
    assert "the key pinned for it is" in capsys.readouterr().err


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_byte_changed_is_refused(built: Built, where: float, xor: int) -> None:
    data = bytearray(built.package)
    at = int(where * len(data))
    data[at] ^= xor
    assert not verify_package(bytes(data), built.aggregator.public_key).ok, at


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([0, 1, 2, 3]), where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_byte_of_a_session_member_changed_by_a_careful_forger_is_refused_naming_it(
    built: Built, which: int, where: float, xor: int
) -> None:
    """The manifest and zip made consistent again: the member's own checks refuse it, by name."""
    a, b = built.sources
    name = [_src(a), _man(a), _src(b), _man(b)][which]

    def flip(m: dict[str, bytes]) -> None:
        data = bytearray(m[name])
        data[int(where * len(data))] ^= xor
        m[name] = bytes(data)

    problems = _verify(_repack(built.package, flip), built)
    assert problems and any(p.startswith(name) for p in problems), problems
