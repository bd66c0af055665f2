"""The committed test vectors are what the code produces, and the standalone script agrees."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evidence.batch import seal_batch, verify_batch
from evidence.keys import generate_key, key_id, load_public_key
from evidence.vectors import record_proof_document, sample_batch, write_vectors
from puhui.cli import main as cli_main

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


PINNED = VECTORS / "test-gateway-key.pub.pem"


def run_script(path: Path, key: Path = PINNED) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT), str(path), str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_standalone_script_is_short_and_verifies_the_vector() -> None:
    assert len(SCRIPT.read_text().splitlines()) <= 50
    result = run_script(VECTORS / "record-proof.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: record 2 of batch zjk-village-01#1, key ")
    assert key_id(load_public_key(PINNED.read_bytes())) in result.stdout


def _forged(tmp_path: Path) -> Path:
    """A proof signed by a fresh key that names the real gateway and a delta of 8,011.5 kWh,
    carrying its own (fresh) public key: what an attacker can make without the gateway's key."""
    fresh = generate_key()
    batch = sample_batch(fresh)
    forged = [r.replace(b'"delta":11.5', b'"delta":8011.5') for r in batch.records]
    sealed = seal_batch(forged, key=fresh, gateway="zjk-village-01", seq=1, prev=batch.header.prev,
                        created_ms=batch.header.created_ms)  # fmt: skip
    doc = record_proof_document(sealed, 2, fresh)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_forged_proof_is_refused_by_the_script_naming_the_key_it_expected(tmp_path: Path) -> None:
    result = run_script(_forged(tmp_path))
    assert result.returncode == 1
    assert "NOT VERIFIED" in result.stderr
    assert key_id(load_public_key(PINNED.read_bytes())) in result.stderr


def test_a_forged_proof_is_refused_by_the_cli_naming_the_key_it_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["evidence", "verify-record", "--key", str(PINNED), str(_forged(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert "NOT VERIFIED" in err and key_id(load_public_key(PINNED.read_bytes())) in err
    # without the carried key, the header still names the forger's key: refused all the same
    doc = json.loads((tmp_path / "forged.json").read_text())
    del doc["public_key_pem"]
    (tmp_path / "bare.json").write_text(json.dumps(doc))
    assert cli_main(["evidence", "verify-record", "--key", str(PINNED), str(tmp_path / "bare.json")]) == 1
    assert "header names key" in capsys.readouterr().err
    assert (
        cli_main(["evidence", "verify-record", "--key", str(PINNED), str(VECTORS / "record-proof.json")]) == 0
    )
    assert "signed by key" in capsys.readouterr().out


def test_the_script_refuses_a_leaf_index_beyond_the_tree(tmp_path: Path) -> None:
    doc = json.loads((VECTORS / "record-proof.json").read_text())
    doc["proof"]["index"] = 18  # in a 9-record batch
    path = tmp_path / "beyond.json"
    path.write_text(json.dumps(doc))
    result = run_script(path)
    assert result.returncode == 1 and "NOT VERIFIED" in result.stderr


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
