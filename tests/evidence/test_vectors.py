"""The committed test vectors are what the code produces, and the standalone script agrees."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evidence.batch import verify_batch
from evidence.keys import load_public_key
from evidence.vectors import write_vectors

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors"
SCRIPT = VECTORS / "verify_record.py"


def test_committed_vectors_are_reproducible(tmp_path: Path) -> None:
    for fresh in write_vectors(tmp_path):
        committed = VECTORS / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed} is stale: puhui evidence make-vectors"
        )


def test_vector_batch_verifies_with_published_public_key() -> None:
    pub = load_public_key((VECTORS / "test-gateway-key.pub.pem").read_bytes())
    verified = verify_batch((VECTORS / "batch-1.jsonl").read_bytes(), pub)
    expected = json.loads((VECTORS / "expected.json").read_text())
    assert verified.header.root == expected["root"]
    assert verified.sealed.header_sha256 == expected["header_sha256"]
    assert [h.hex() for h in verified.leaf_hashes] == expected["leaf_hashes"]


def run_script(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_standalone_script_is_short_and_verifies_the_vector() -> None:
    assert len(SCRIPT.read_text().splitlines()) <= 50
    result = run_script(VECTORS / "record-proof.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: record 2 of batch zjk-village-01#1")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(record=d["record"].replace('"delta":11.5', '"delta":11.6')),
        lambda d: d.update(header=d["header"].replace('"seq":1', '"seq":2')),
        lambda d: d["proof"]["path"].reverse(),
        lambda d: d["proof"].update(index=3),
        lambda d: d.update(
            signature=d["signature"][:10] + ("A" if d["signature"][10] != "A" else "B") + d["signature"][11:]
        ),
    ],
    ids=["record", "header", "path", "index", "signature"],
)
def test_standalone_script_rejects_tampered_copies(tmp_path: Path, tamper) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((VECTORS / "record-proof.json").read_text())
    tamper(doc)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(doc))
    result = run_script(path)
    assert result.returncode == 1
    assert "NOT VERIFIED" in result.stderr
