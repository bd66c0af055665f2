"""The aggregator's keys: rotation endorsed by the predecessor, both keys verifiable for their
periods through the signed key list, revocation, and a list that forges a key refused."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aggregator.errors import AggregatorError
from aggregator.keys import key_list, register_current, rotate
from aggregator.methodology import cli as methodology_cli
from aggregator.methodology.cli import add_arguments
from aggregator.methodology.params import PARAMS_DIR
from aggregator.store import SQLiteEvidenceStore
from evidence.errors import InvalidProof
from evidence.keylist import AggregatorKey, sign_keylist, verify_keylist
from evidence.keys import generate_key, load_private_key, public_key_b64, public_key_pem, save_private_key
from tests.aggregator.methodology.evidence_fixture import T0, SealedEvidence
from tests.aggregator.methodology.test_golden import PERIOD, pv_source


def _reductions(argv: list[str], source: SealedEvidence) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.open_evidence = lambda db: source
    return int(args.func(args))


def _compute(
    db: Path, key: Path, start: int, end: int, src: SealedEvidence, out: pytest.CaptureFixture[str]
) -> str:
    params = str(PARAMS_DIR / "pv-export-mee.yaml")
    argv = ["compute", "--db", str(db), "--key", str(key), "--params", params, "--gateway", "gw-pv",
            "--meter", "house-01-grid", "--start", str(start), "--end", str(end)]  # fmt: skip
    assert _reductions(argv, src) == 0
    return out.readouterr().out.split()[1]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_statements_of_both_keys_verify_through_the_key_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    signing_ms = [T0 * 1000]  # the statements' created_ms, set by the test: no race with the rotation
    monkeypatch.setattr(methodology_cli, "time", SimpleNamespace(time_ns=lambda: signing_ms[0] * 1_000_000))
    db, key_file, pinned = tmp_path / "agg.db", tmp_path / "agg.pem", tmp_path / "first.pub.pem"
    first = generate_key()
    save_private_key(first, key_file)
    pinned.write_bytes(public_key_pem(first.public_key))  # what platforms pinned on day one
    store = SQLiteEvidenceStore(db)
    register_current(store, first, 0)
    src, middle = pv_source(), T0 + 8 * 900
    old = _compute(db, key_file, PERIOD.start, middle, src, capsys)
    old_id, new_id = rotate(store, key_file, T0 * 1000 + 60_000)  # the new key signs from a minute on
    signing_ms[0] = T0 * 1000 + 120_000
    assert old_id == first.key_id and load_private_key(key_file).key_id == new_id
    new = _compute(db, key_file, middle, PERIOD.end, src, capsys)
    (tmp_path / "keys").write_bytes(key_list(store, load_private_key(key_file), _now_ms()).to_bytes())

    def verify(statement: str, *extra: str) -> int:
        return _reductions(["verify", "--db", str(db), "--issuer", str(pinned), *extra, statement], src)

    assert verify(new) == 1  # the pinned key alone does not know its successor
    capsys.readouterr()
    for statement in (old, new):
        assert verify(statement, "--keys", str(tmp_path / "keys")) == 0, capsys.readouterr().err
        assert "OK statement" in capsys.readouterr().out
    with pytest.raises(AggregatorError, match="not in the store's key history"):
        register_current(store, generate_key(), _now_ms())  # a key swapped in by hand
    store.revoke_aggregator_key(first.key_id, 0)  # everything the first key signed is now suspect
    (tmp_path / "keys").write_bytes(key_list(store, load_private_key(key_file), _now_ms()).to_bytes())
    assert verify(old, "--keys", str(tmp_path / "keys")) == 1
    assert f"signed by key {first.key_id}" in capsys.readouterr().err
    store.close()


def test_a_key_list_that_slips_in_a_key_is_refused() -> None:
    first, second, intruder = generate_key(), generate_key(), generate_key()
    k1 = AggregatorKey(first.key_id, public_key_b64(first.public_key), 0)
    from evidence.keylist import endorse

    k2 = endorse(first, second.public_key, 100)
    good = sign_keylist(second, aggregator_keys=[k1, k2], gateway_keys=[], created_ms=200)
    trusted = verify_keylist(good.to_bytes(), first.public_key)
    assert trusted.aggregator_key_at(150, second.key_id) is not None
    assert trusted.aggregator_key_at(150, first.key_id) is None  # its successor signs from 100
    assert trusted.aggregator_key_at(50, first.key_id) is not None
    forged = dataclasses.replace(endorse(intruder, intruder.public_key, 100), endorsement=k2.endorsement)
    bad = sign_keylist(intruder, aggregator_keys=[k1, forged], gateway_keys=[], created_ms=200)
    with pytest.raises(InvalidProof, match="not endorsed by its predecessor"):
        verify_keylist(bad.to_bytes(), first.public_key)
    with pytest.raises(InvalidProof, match="does not hold the pinned"):
        verify_keylist(good.to_bytes(), intruder.public_key)
