"""Evidence packages: built from a real store (batches sealed by a gateway key, ingested by the
aggregator's own ingest into SQLite, a statement computed and signed), verified with nothing but
the file and the pinned key, and refused, naming what failed, when anything was changed."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.methodology.params import PARAMS_DIR
from aggregator.package import MANIFEST, canonical_json, member_order, write_zip
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store import SQLiteEvidenceStore
from common.clock import SystemClock
from evidence import generate_key, public_key_pem, save_private_key
from evidence.keys import GatewayKey
from evidence.wire import Ack, batch_topic
from puhui.cli import main
from puhui.verify import verify_package
from tests.aggregator.ingest_support import T0, SimGateway
from tests.aggregator.methodology.evidence_fixture import counter_records

N = 32  # intervals of 15 minutes per meter
IMPLAUSIBLE = 9  # pv-01's interval 9 delivers 50 kWh: far above a 10 kW nameplate


@dataclass(frozen=True)
class Built:
    directory: Path
    statement_id: str
    package: bytes = field(repr=False)  # with the signed key list
    bare: bytes = field(repr=False)  # without it: the pinned key must be the statement's
    aggregator: GatewayKey = field(repr=False)


def _records(meter: str, deltas: list[float | None]) -> list[object]:
    return list(counter_records(meter, "energy_export", deltas, start=T0))


async def _ingest(db: Path, tmp: Path, aggregator: GatewayKey) -> None:
    config = AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(db)},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp / "unused.pem")}
    )  # fmt: skip
    gw = SimGateway("gw-pv", meters=("pv-01", "pv-02"))
    pv1 = _records("pv-01", [50.0 if i == IMPLAUSIBLE else 1.25 for i in range(N)])
    pv2 = _records("pv-02", [0.75] * N)
    with StoreThreads() as threads:
        store = SQLiteEvidenceStore(db)
        try:
            registry = GatewayRegistry(store)
            registry.enrol(gw.enrolment(), at_ms=0)
            ingest = BatchIngest(config, store=store, registry=registry, key=aggregator, clock=SystemClock(),
                                 run_db=threads.run_db)  # fmt: skip
            for i in range(0, N, 8):  # four batches, each holding both meters' records
                records = [r for pair in zip(pv1[i : i + 8], pv2[i : i + 8], strict=True) for r in pair]
                sealed = gw.seal(records, created_ms=(T0 + (i + 8) * 900 + 5) * 1000)
                answer = await ingest.process(batch_topic("gw-pv"), sealed.to_bytes())
                assert answer is not None and isinstance(answer[1], Ack), answer
        finally:
            store.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("aggregator")
    db, key_file, aggregator = tmp / "agg.db", tmp / "agg.pem", generate_key()
    save_private_key(aggregator, key_file)
    (tmp / "agg.pub.pem").write_bytes(public_key_pem(aggregator.public_key))
    asyncio.run(_ingest(db, tmp, aggregator))
    compute = ["aggregator", "reductions", "compute", "--db", str(db), "--key", str(key_file), "--params",
               str(PARAMS_DIR / "pv-export-mee.yaml"), "--gateway", "gw-pv", "--meter", "pv-01",
               "--start", str(T0), "--end", str(T0 + N * 900)]  # fmt: skip
    assert main(compute) == 0
    [(statement_id,)] = _statement_ids(db)
    package = ["aggregator", "reductions", "package", "--db", str(db), statement_id[:12] + "…"]
    assert main([*package, "--out", str(tmp / "with-keys.zip"), "--key", str(key_file)]) == 0
    assert main([*package, "--out", str(tmp / "bare.zip")]) == 0
    return Built(tmp, statement_id, (tmp / "with-keys.zip").read_bytes(), (tmp / "bare.zip").read_bytes(),
                 aggregator)  # fmt: skip


def _statement_ids(db: Path) -> list[tuple[str]]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [(str(r[0]),) for r in conn.execute("SELECT id FROM reduction_statements")]


def _members(package: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _repack(package: bytes, change: Callable[[dict[str, bytes]], None]) -> bytes:
    """What a careful forger does: change members, then rewrite the manifest and the zip so
    that the container and every hash are consistent again."""
    members = _members(package)
    manifest = __import__("json").loads(members.pop(MANIFEST))
    roles = {m["name"]: m["role"] for m in manifest["members"]}
    change(members)
    manifest["members"] = [
        {"name": n, "role": roles.get(n, "batch"), "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for n, d in sorted(members.items())
    ]
    members[MANIFEST] = canonical_json(manifest)
    return write_zip([(n, members[n]) for n in member_order(list(members))])


def test_a_package_verifies_in_a_fresh_process_with_only_the_file_and_the_key(
    built: Built, tmp_path: Path
) -> None:
    shutil.copy(built.directory / "with-keys.zip", tmp_path / "statement.zip")
    shutil.copy(built.directory / "agg.pub.pem", tmp_path / "agg.pub.pem")
    done = subprocess.run(
        [sys.executable, "-m", "puhui", "verify", "statement.zip", "--issuer", "agg.pub.pem"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"VERIFIED statement {built.statement_id}" in done.stdout
    for checked in ("container: canonical zip", "key list signed by", "chain: gw-pv#1..#4",
                    "4 batches it relies on re-verified", "recomputed ER"):  # fmt: skip
        assert checked in done.stdout, done.stdout
    names = set(_members(built.package))
    assert {"statement.statement", "gateway/enrolment.enrolment", "gateway/keys.json", "aggregator/keys.json",
            "aggregator/keylist.keys", "aggregator/verdicts.json", "parameters/pv-export-mee.yaml",
            MANIFEST} | {f"batches/{s:010d}.batch" for s in (1, 2, 3, 4)} == names  # fmt: skip
    verdicts = _members(built.package)["aggregator/verdicts.json"]
    assert b"energy_above_nameplate" in verdicts  # the aggregator's verdict travels with the package
    bare = verify_package(built.bare, built.aggregator.public_key)
    assert bare.ok, bare.problems
    assert "no key list in the package" in str(bare)


def test_the_same_statement_packages_to_the_same_bytes(built: Built, tmp_path: Path) -> None:
    db = built.directory / "agg.db"
    assert main(["aggregator", "reductions", "package", "--db", str(db), built.statement_id,
                 "--out", str(tmp_path / "again.zip")]) == 0  # fmt: skip
    assert (tmp_path / "again.zip").read_bytes() == built.bare


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_byte_changed_is_refused(built: Built, where: float, xor: int) -> None:
    data = bytearray(built.package)
    at = int(where * len(data))
    data[at] ^= xor
    report = verify_package(bytes(data), built.aggregator.public_key)
    assert not report.ok, at
    first = report.problems[0]  # names the member, or the zip structure around them
    named = first.split(":")[0] in ("package", MANIFEST, *_members(built.package))
    assert named or ": changed in the package (" in first, report.problems  # or a member's name changed


@pytest.mark.parametrize("flag", [0x01, 0x08, 0x40])  # encrypted, data descriptor, strong encryption
def test_zip_flags_set_are_refused_without_a_traceback(built: Built, flag: int) -> None:
    data = bytearray(built.package)
    data[built.package.index(b"PK\x01\x02") + 8] ^= flag  # the manifest's central directory entry
    report = verify_package(bytes(data), built.aggregator.public_key)
    assert not report.ok and report.problems[0].startswith(f"{MANIFEST}: zip entry is not stored plainly")


@pytest.mark.parametrize(
    "at",
    [
        "statement.statement",
        "batches/0000000002.batch",
        "parameters/pv-export-mee.yaml",
        "aggregator/verdicts.json",
        MANIFEST,
    ],
)
def test_a_byte_changed_inside_a_member_names_the_member(built: Built, at: str) -> None:
    members = _members(built.package)
    offset = built.package.index(members[at]) + len(members[at]) // 2
    data = bytearray(built.package)
    data[offset] ^= 0x01
    report = verify_package(bytes(data), built.aggregator.public_key)
    assert not report.ok and report.problems[0].startswith(f"{at}: changed"), report.problems


def test_a_member_changed_with_its_crc_but_not_its_manifest_hash_is_refused(built: Built) -> None:
    members = _members(built.package)
    members["batches/0000000003.batch"] = members["batches/0000000003.batch"].replace(
        b'"delta":1.25', b'"delta":1.5', 1
    )
    report = verify_package(write_zip([(n, members[n]) for n in member_order(list(members))]),
                            built.aggregator.public_key)  # fmt: skip
    assert not report.ok
    assert report.problems[0].startswith("batches/0000000003.batch: sha256"), report.problems


def test_a_batch_removed_is_refused(built: Built) -> None:
    forged = _repack(built.package, lambda m: m.pop("batches/0000000002.batch"))
    report = verify_package(forged, built.aggregator.public_key)
    assert not report.ok
    assert any("batch gw-pv#2 is not in" in p for p in report.problems), report.problems


def test_a_record_swapped_between_two_batches_is_refused(built: Built) -> None:
    def swap(m: dict[str, bytes]) -> None:
        a, b = (m[f"batches/{s:010d}.batch"].split(b"\n") for s in (1, 2))
        a[2], b[2] = b[2], a[2]  # the first record of each
        m["batches/0000000001.batch"], m["batches/0000000002.batch"] = b"\n".join(a), b"\n".join(b)

    report = verify_package(_repack(built.package, swap), built.aggregator.public_key)
    assert not report.ok
    assert any("gw-pv#1: records do not hash to the signed Merkle root" in p for p in report.problems)


def test_a_changed_verdict_is_refused(built: Built) -> None:
    """The verdicts are the aggregator's, but the statement signs them: dropping one changes the
    recomputed statement."""
    forged = _repack(
        built.package,
        lambda m: m.update({"aggregator/verdicts.json": m["aggregator/verdicts.json"].replace(
            b'"energy_above_nameplate"', b'"low_coverage"')}),
    )  # fmt: skip
    report = verify_package(forged, built.aggregator.public_key)
    assert not report.ok
    assert any(p.startswith("statement: recomputed:") for p in report.problems), report.problems


def test_a_foreign_issuer_key_is_refused(built: Built, tmp_path: Path) -> None:
    foreign = generate_key().public_key
    report = verify_package(built.package, foreign)
    assert not report.ok and "does not hold the pinned aggregator key" in report.problems[0]
    report = verify_package(built.bare, foreign)
    assert not report.ok and "statement names issuer key" in report.problems[0]
    (tmp_path / "p.zip").write_bytes(built.bare)
    (tmp_path / "foreign.pem").write_bytes(public_key_pem(foreign))
    assert main(["verify", str(tmp_path / "p.zip"), "--issuer", str(tmp_path / "foreign.pem")]) == 1


DOCS = Path(__file__).resolve().parents[2] / "docs" / "evidence-package.md"


def _doc_script(tmp_path: Path) -> Path:
    text = DOCS.read_text(encoding="utf-8")
    code = text.split("<!-- verify-script -->\n```python\n", 1)[1].split("\n```", 1)[0]
    (tmp_path / "check.py").write_text(code + "\n", encoding="utf-8")
    return tmp_path / "check.py"


def test_the_script_in_the_docs_verifies_a_package_and_refuses_forgeries(
    built: Built, tmp_path: Path
) -> None:
    script = _doc_script(tmp_path)
    shutil.copy(built.directory / "agg.pub.pem", tmp_path / "agg.pub.pem")

    def check(package: bytes) -> subprocess.CompletedProcess[str]:
        (tmp_path / "p.zip").write_bytes(package)
        return subprocess.run([sys.executable, str(script), "p.zip", "agg.pub.pem"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    done = check(built.package)
    assert done.returncode == 0, done.stderr
    assert f"OK statement {built.statement_id}: 4 batches, 31 credited intervals checked" in done.stdout

    def swap(m: dict[str, bytes]) -> None:
        a, b = (m[f"batches/{s:010d}.batch"].split(b"\n") for s in (1, 2))
        a[2], b[2] = b[2], a[2]
        m["batches/0000000001.batch"], m["batches/0000000002.batch"] = b"\n".join(a), b"\n".join(b)

    assert "AssertionError: 5 batches/0000000001.batch" in check(_repack(built.package, swap)).stderr
    removed = check(_repack(built.package, lambda m: m.pop("batches/0000000002.batch")))
    assert "AssertionError: 7 batch gw-pv#2" in removed.stderr

    def inflate(m: dict[str, bytes]) -> None:
        m["statement.statement"] = m["statement.statement"].replace(b'"er_tco2e":0.', b'"er_tco2e":1.', 1)

    forged = _repack(built.package, inflate)
    assert "InvalidSignature" in check(forged).stderr


def test_gateway_keys_are_checked_for_validity_and_against_the_signed_list(built: Built) -> None:
    def later(m: dict[str, bytes]) -> None:  # the key only valid from seq 3: batches 1 and 2 are not its
        m["gateway/keys.json"] = m["gateway/keys.json"].replace(
            b'"valid_from_seq": 1', b'"valid_from_seq": 3'
        )

    report = verify_package(_repack(built.bare, later), built.aggregator.public_key)
    assert any("batches/0000000001.batch: signed with key" in p and "is none" in p for p in report.problems)
    report = verify_package(_repack(built.package, later), built.aggregator.public_key)
    assert report.problems == ["gateway/keys.json: differs from the gateway keys in the signed key list"]


def test_command_line_refusals_name_what_is_missing(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(built.directory / "agg.db")
    out = str(tmp_path / "x.zip")
    assert main(["aggregator", "reductions", "package", "--db", db, "0" * 12, "--out", out]) == 1
    assert f"no statement {'0' * 12}… in {db}" in capsys.readouterr().err
    assert (
        main(["verify", str(tmp_path / "absent.zip"), "--issuer", str(built.directory / "agg.pub.pem")]) == 2
    )
    assert "absent.zip: No such file" in capsys.readouterr().err
    (tmp_path / "not.zip").write_bytes(b"hello")
    assert main(["verify", str(tmp_path / "not.zip"), "--issuer", str(built.directory / "agg.pub.pem")]) == 1
    assert "package: not a readable zip file" in capsys.readouterr().err
