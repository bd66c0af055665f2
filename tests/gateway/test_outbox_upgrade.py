"""A gateway upgraded with a non-empty outbox: the schema-1 state directory written by the
store before the record log (tests/gateway/outbox_v1_state, see make.py there; killed with
its last commits in the WAL) is migrated at open, and every batch goes out exactly as the
old code sealed it, the pending records sealed after them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from common.clock import ManualClock
from evidence.batch import verify_batch
from evidence.chain import verify_chain
from evidence.keys import generate_key, load_private_key, public_key_pem
from evidence.records import DropRecord, decode_record, encode_record
from gateway import store as store_module
from gateway.errors import EvidenceStoreError
from gateway.evidence_config import EvidenceSettings, OutboxSettings, SealingSettings
from gateway.pipeline import EvidencePipeline
from gateway.record_log import RecordLog
from gateway.store import DB_NAME, LOG_DIR, EvidenceStore, read_builder_state
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber, eventually
from tests.gateway.evidence_helpers import T0, Keys, interval, uplink_settings

FIXTURE = Path(__file__).parent / "outbox_v1_state"
MANIFEST: dict[str, Any] = json.loads((FIXTURE / "manifest.json").read_text())
GW = MANIFEST["gateway"]


def old_state(tmp_path: Path) -> Path:
    """A copy of the fixture's state directory and key (0600, as a key must be)."""
    state = tmp_path / "state"
    shutil.copytree(FIXTURE / "state", state)
    shutil.copy(FIXTURE / "gateway.pem", tmp_path / "gateway.pem")
    (tmp_path / "gateway.pem").chmod(0o600)
    return state


def schema(state: Path) -> str:
    conn = sqlite3.connect(state / DB_NAME)
    try:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])
    finally:
        conn.close()


def assert_holds_the_manifest(store: EvidenceStore) -> None:
    m = MANIFEST
    assert store.chain_head() == tuple(m["chain_head"])
    assert [(b.seq, b.kind, b.header_sha256, b.size, b.records) for b in store.outbox()] == [
        (b["seq"], b["kind"], b["header_sha256"], b["size"], b["records"]) for b in m["batches"]
    ]
    for b in m["batches"]:
        assert hashlib.sha256(store.batch_data(b["seq"])).hexdigest() == b["sha256"], b["seq"]
    assert [r.decode() for _, r in store.pending(100)] == m["pending"]
    assert store.oldest_pending_ms() == m["oldest_pending_ms"]
    assert store.builder_state() == m["builder_state"]
    for seq, delivery in m["delivery"].items():
        assert store.delivery(int(seq)) == delivery
    assert dataclasses.asdict(store.stats()) == m["stats"]


def test_the_old_state_holds_the_same_after_migration(tmp_path: Path) -> None:
    state = old_state(tmp_path)
    assert (state / f"{DB_NAME}-wal").exists() and schema(state) == "1"
    assert read_builder_state(state) == MANIFEST["builder_state"]  # read as schema 1
    for _ in range(2):  # migrated once, then opened as schema 2
        store = EvidenceStore.open(state, gateway_id=GW)
        try:
            assert_holds_the_manifest(store)
        finally:
            store.close()
        assert schema(state) == "2"
    assert read_builder_state(state) == MANIFEST["builder_state"]
    assert len(RecordLog.segment_files(state / LOG_DIR)) == 1


def test_an_interrupted_migration_is_done_again_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = old_state(tmp_path)
    with monkeypatch.context() as m:  # the log is written, the schema change fails
        m.setattr(store_module, "_MIGRATE_V1", (*store_module._MIGRATE_V1, "SELECT no_such_column FROM meta"))
        with pytest.raises(EvidenceStoreError, match="cannot write"):
            EvidenceStore.open(state, gateway_id=GW)
    assert schema(state) == "1" and RecordLog.segment_files(state / LOG_DIR)
    store = EvidenceStore.open(state, gateway_id=GW)
    try:
        assert_holds_the_manifest(store)  # the pending records once, not twice
    finally:
        store.close()


async def test_an_upgraded_gateway_delivers_every_old_batch_exactly_as_sealed(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    state = old_state(tmp_path)
    key = load_private_key(tmp_path / "gateway.pem")
    aggregator = generate_key()
    (tmp_path / "aggregator.pub.pem").write_bytes(public_key_pem(aggregator.public_key))
    keys = Keys(key, tmp_path / "gateway.pem", aggregator, tmp_path / "aggregator.pub.pem")
    settings = EvidenceSettings(key_file=str(keys.gateway_file), state_dir=str(state),
                                sealing=SealingSettings(max_records=10, max_age_s=3600),
                                outbox=OutboxSettings(cap_bytes=1 << 24))  # fmt: skip
    uplink = uplink_settings(mosquitto.host, mosquitto.port, keys)
    new = [interval(m, 7) for m in range(7)]
    async with (
        AckSubscriber(mosquitto.host, mosquitto.port, tmp_path / "agg.sqlite",
                      gateway_keys={GW: key.public_key}, aggregator_key=aggregator) as agg,
        EvidencePipeline(settings, uplink, gateway_id=GW, key=key, clock=ManualClock(T0 + 8 * 900)) as p,
    ):  # fmt: skip
        await p.submit(new, {"version": 1, "k": 8})  # 3 old pending + 7: a batch of 10
        await eventually(lambda: p.status()["outbox_depth_batches"] == 0, 20, "the outbox to drain")
        assert p.status()["pending_records"] == 0
        arrived = {b.header.seq: b for b in agg.batches(GW)}
    for b in MANIFEST["batches"]:
        assert hashlib.sha256(arrived[b["seq"]].to_bytes()).hexdigest() == b["sha256"], b["seq"]
    head_seq, head_hash = MANIFEST["chain_head"]
    sealed_now = arrived[head_seq + 1]
    assert sealed_now.header.prev == head_hash and set(arrived) == {b["seq"] for b in MANIFEST["batches"]} | {
        head_seq + 1
    }
    assert [r.decode() for r in sealed_now.records] == MANIFEST["pending"] + [
        encode_record(r).decode() for r in new
    ]
    for b in arrived.values():
        verify_batch(b, key.public_key)
    report = verify_chain(
        (b.header, b.header_sha256) for b in sorted(arrived.values(), key=lambda b: b.header.seq)
    )
    [drop] = [r for b in arrived.values() for r in map(decode_record, b.records) if isinstance(r, DropRecord)]
    assert not report.forks and not report.duplicates
    assert report.missing == sorted(d.seq for d in drop.batches)  # the old drops, named
