"""A statement whose parameter set the precedence rule picked (issue 18) travels with the sets
it was weighed against: its evidence package verifies with nothing else, and a package that
lost a rival set does not."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from aggregator.methodology.store import StatementStore
from aggregator.package import build_package, canonical_json, write_zip
from aggregator.store import SQLiteEvidenceStore
from evidence import generate_key, save_private_key
from puhui.cli import main
from puhui.verify import verify_package
from tests.aggregator.methodology.filing_fixture import EV_V2, Spec, write_sets
from tests.aggregator.programme.support import GATEWAY, MONTH, Street, deliver

DAY = 86400
KEY = generate_key()


def test_a_package_carries_the_candidate_sets_and_verifies_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "agg.sqlite3"
    deliver(db, tmp_path, KEY, Street(), MONTH, MONTH + 2 * DAY, enrol=True)
    save_private_key(KEY, tmp_path / "agg.pem")
    sets = tmp_path / "sets"
    write_sets(
        sets, Spec("ev-group", "group", since="2021-01-01"), Spec("ev-hebei", "local", regions=("hebei",))
    )
    (sets / EV_V2.name).write_bytes(EV_V2.read_bytes())
    argv = ["aggregator", "reductions", "compute", "--db", str(db), "--key", str(tmp_path / "agg.pem"),
            "--gateway", GATEWAY, "--meter", "ev-01", "--start", str(MONTH), "--end", str(MONTH + DAY),
            "--scenario", "ev_charging", "--params-dir", str(sets), "--production"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    with StatementStore(db) as statements:
        [row] = statements.list()
        st = statements.get(row.id)
        assert st is not None and st.body["methodology"]["parameter_set"]["id"] == "ev-hebei"
        store = SQLiteEvidenceStore(db)
        try:
            package = build_package(store, statements, row.id, sets)
        finally:
            store.close()
    names = zipfile.ZipFile(io.BytesIO(package)).namelist()
    rivals = [n for n in names if n.startswith("candidates/")]
    assert len(rivals) == 2  # ev-group and the shipped, unfiled set
    report = verify_package(package, KEY.public_key)
    assert report.ok, report.problems
    # without a rival, the rule cannot be re-run: the package says so
    zf = zipfile.ZipFile(io.BytesIO(package))
    manifest = json.loads(zf.read("manifest.json"))
    manifest["members"] = [m for m in manifest["members"] if m["name"] != rivals[0]]
    members = [(n, zf.read(n)) for n in names if n not in ("manifest.json", rivals[0])]
    cut = write_zip([("manifest.json", canonical_json(manifest)), *members])
    report = verify_package(cut, KEY.public_key)
    assert not report.ok and any("the rule cannot be re-run" in p for p in report.problems), report.problems
