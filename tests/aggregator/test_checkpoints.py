"""Checkpoints of a real evidence store: truncation is detected and named; logs extend."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aggregator.checkpoints import audit, make_checkpoint, prove_extension
from aggregator.registry import GatewayRegistry
from aggregator.store import AcceptedBatch, SQLiteEvidenceStore
from evidence.errors import InvalidProof
from evidence.keys import generate_key, public_key_pem, save_private_key
from puhui.cli import main as cli_main
from tests.aggregator.ingest_support import SimGateway
from tests.aggregator.test_store import _accepted

AGG = generate_key()


def _store(tmp_path: Path, per_gateway: int) -> tuple[SQLiteEvidenceStore, list[SimGateway]]:
    store = SQLiteEvidenceStore(tmp_path / "e.sqlite3")
    gateways = [SimGateway("gw-a"), SimGateway("gw-b")]
    for gw in gateways:
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    _feed(store, gateways, per_gateway)
    return store, gateways


def _feed(store: SQLiteEvidenceStore, gateways: list[SimGateway], n: int) -> None:
    for _ in range(n):
        for gw in gateways:
            batch: AcceptedBatch = _accepted(gw)
            store.store_batch(batch)


def test_a_checkpoint_of_an_untouched_store_holds(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, 3)
    cp = make_checkpoint(store, AGG, created_ms=1)
    assert cp.size == 6 and {g: h.seq for g, h in cp.chains.items()} == {"gw-a": 3, "gw-b": 3}
    assert audit(store, cp) == []


def test_a_truncated_chain_is_detected_and_named(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, 3)
    cp = make_checkpoint(store, AGG, created_ms=1)
    store.close()
    with sqlite3.connect(tmp_path / "e.sqlite3") as db:  # someone cuts gw-a's last batch
        db.execute("DELETE FROM batches WHERE gateway = 'gw-a' AND seq = 3")
    store = SQLiteEvidenceStore(tmp_path / "e.sqlite3")
    problems = audit(store, cp)
    assert any(p.startswith("gateway gw-a: the checkpoint holds its chain at seq 3") and "ends at seq 2" in p
               for p in problems), problems  # fmt: skip
    assert not any("gw-b" in p for p in problems)
    assert "the store holds 5 batches, the checkpoint 6" in problems


def test_a_later_checkpoint_extends_an_earlier_one(tmp_path: Path) -> None:
    store, gateways = _store(tmp_path, 2)
    earlier = make_checkpoint(store, AGG, created_ms=1)
    _feed(store, gateways, 3)
    later = make_checkpoint(store, AGG, created_ms=2)
    prove_extension(store, earlier, later)
    other_store, _ = _store(tmp_path / "other", 5)  # another log of the same size: no extension
    with pytest.raises(InvalidProof):
        prove_extension(store, make_checkpoint(other_store, AGG, created_ms=1), later)


def test_the_cli_signs_and_refuses_a_truncated_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = _store(tmp_path, 2)
    store.close()
    save_private_key(AGG, tmp_path / "agg.pem")
    (tmp_path / "agg.pub.pem").write_bytes(public_key_pem(AGG.public_key))
    db, cp = str(tmp_path / "e.sqlite3"), str(tmp_path / "cp-1")
    assert cli_main(["aggregator", "checkpoint", "sign", "--db", db, "--key", str(tmp_path / "agg.pem"),
                     "--out", cp]) == 0  # fmt: skip
    verify = ["aggregator", "checkpoint", "verify", "--db", db, "--issuer", str(tmp_path / "agg.pub.pem"), cp]
    assert cli_main(verify) == 0
    assert "4 batches of 2 gateways all held" in capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM batches WHERE gateway = 'gw-b' AND seq = 2")
    assert cli_main(verify) == 1
    err = capsys.readouterr().err
    assert "NOT VERIFIED" in err and "gateway gw-b" in err
