"""The outbox layout: a data batch is stored as its header and signature lines plus the
numbers of its records in the record log, and rebuilt byte for byte as sealed."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.clock import ManualClock
from evidence.batch import SealedBatch, parse_batch, verify_batch
from evidence.records import encode_record
from gateway import record_log
from gateway.errors import EvidenceStoreError
from gateway.evidence_config import OutboxSettings, SealingSettings
from gateway.pipeline import EvidencePipeline
from gateway.record_log import RecordLog
from gateway.sealer import Sealer
from gateway.store import DB_NAME, LOG_DIR, EvidenceStore
from tests.gateway.evidence_helpers import T0, Keys, evidence_settings, interval, make_keys

GW = "gw-layout"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(record_log, "SEGMENT_BYTES", 2048)
    yield


class Sealed:
    """Every batch the sealer inserts, with the bytes it sealed (captured at insert)."""

    def __init__(self, store: EvidenceStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data: dict[int, bytes] = {}
        real = store.insert_batch

        def insert(batch: SealedBatch, data: bytes, kind: str, **kw: int | None) -> None:
            assert data == batch.to_bytes()
            self.data[batch.header.seq] = data
            real(batch, data, kind, **kw)

        monkeypatch.setattr(store, "insert_batch", insert)


def sealer(store: EvidenceStore, keys: Keys, **outbox: object) -> Sealer:
    return Sealer(store, key=keys.gateway, gateway_id=GW, clock=ManualClock(T0),
                  sealing=SealingSettings(max_records=7), outbox=OutboxSettings(**outbox))  # type: ignore[arg-type]  # fmt: skip


def submit_and_seal(store: EvidenceStore, s: Sealer, records: int, rng: random.Random, start: int = 0) -> int:
    n = start
    while n < start + records:
        k = rng.randint(1, 9)
        store.add_pending([encode_record(interval(i % 10, i // 10)) for i in range(n, n + k)],
                          {"next": n + k}, T0 * 1000)  # fmt: skip
        s.seal_due()
        n += k
    return n


def test_every_batch_comes_back_byte_for_byte_as_sealed(
    tmp_path: Path, keys: Keys, small_segments: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EvidenceStore.open(tmp_path / "state", gateway_id=GW)
    sealed = Sealed(store, monkeypatch)
    submit_and_seal(store, sealer(store, keys), 300, random.Random(7))
    assert len(RecordLog.segment_files(tmp_path / "state" / LOG_DIR)) > 3  # batches cross segments
    assert {seq: store.batch_data(seq) for seq in sealed.data} == sealed.data
    sent = store.next_to_send([], 1000)
    assert {seq: data for seq, _, data in sent} == sealed.data
    assert all(parse_batch(data).header_sha256 == digest for _, digest, data in sent)
    store.close()
    store = EvidenceStore.open(tmp_path / "state", gateway_id=GW)
    try:
        assert {b.seq: store.batch_data(b.seq) for b in store.outbox()} == sealed.data
        for data in sealed.data.values():
            verify_batch(data, keys.gateway.public_key)
    finally:
        store.close()


def test_a_data_batch_row_holds_its_header_lines_and_a_drop_batch_its_bytes(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EvidenceStore.open(tmp_path / "state", gateway_id=GW)
    sealed = Sealed(store, monkeypatch)
    submit_and_seal(store, sealer(store, keys, cap_batches=3), 60, random.Random(8))
    rows = store._conn.execute("SELECT seq, kind, data, first_record, size FROM batches").fetchall()
    store.close()
    kinds = {kind for _, kind, *_ in rows}
    assert kinds == {"data", "drop"}
    for seq, kind, data, first, size in rows:
        full = sealed.data[seq]
        assert size == len(full)
        if kind == "data":
            assert first is not None and full.startswith(bytes(data)) and bytes(data).count(b"\n") == 2
        else:
            assert first is None and bytes(data) == full


def test_a_rebuild_that_is_not_the_batch_sealed_is_refused(tmp_path: Path, keys: Keys) -> None:
    store = EvidenceStore.open(tmp_path / "state", gateway_id=GW)
    try:
        submit_and_seal(store, sealer(store, keys), 20, random.Random(9))
        store._conn.execute("UPDATE batches SET first_record = first_record + 1 WHERE seq = 1")
        with pytest.raises(
            EvidenceStoreError, match=r"batch seq 1 \(.*\) rebuilt from records 2\.\.8 of .* is not"
        ):
            store.batch_data(1)
    finally:
        store.close()


def test_spent_segments_go_after_the_ack_and_pending_ones_stay(
    tmp_path: Path, keys: Keys, small_segments: None
) -> None:
    store = EvidenceStore.open(tmp_path / "state", gateway_id=GW)
    log_dir = tmp_path / "state" / LOG_DIR
    try:
        submit_and_seal(store, sealer(store, keys), 200, random.Random(10))
        before = RecordLog.segment_files(log_dir)
        pending = store.pending(100)
        batches = store.outbox()
        for b in batches[:-1]:
            assert store.ack(b.seq, b.header_sha256, 1)
        left = RecordLog.segment_files(log_dir)
        assert len(left) < len(before) and (log_dir / record_log.SPARE).exists()
        last = batches[-1]
        assert store.batch_data(last.seq) == store.next_to_send([], 1)[0][2]
        assert store.pending(100) == pending
        assert store.ack(last.seq, last.header_sha256, 2)
        assert len(RecordLog.segment_files(log_dir)) <= len(left)
        assert store.pending(100) == pending  # unsealed records stay whatever is acked
    finally:
        store.close()


def test_a_database_that_refers_to_records_the_log_lost_refuses_to_open(
    tmp_path: Path, keys: Keys, small_segments: None
) -> None:
    store = EvidenceStore.open(tmp_path / "state", gateway_id=GW)
    submit_and_seal(store, sealer(store, keys), 100, random.Random(11))
    store.close()
    log_dir = tmp_path / "state" / LOG_DIR
    for path in RecordLog.segment_files(log_dir)[:2]:
        path.unlink()
    with pytest.raises(
        EvidenceStoreError, match=f"{tmp_path}/state/{DB_NAME}: does not match the record log"
    ):
        EvidenceStore.open(tmp_path / "state", gateway_id=GW)


def test_a_new_database_next_to_an_old_record_log_refuses_to_open(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id=GW)
    store.add_pending([b'{"r":1}'], {"v": 1}, 1)
    store.close()
    (tmp_path / DB_NAME).unlink()
    with pytest.raises(EvidenceStoreError, match="a new database next to an existing record log"):
        EvidenceStore.open(tmp_path, gateway_id=GW)


def test_a_record_holding_a_newline_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id=GW)
    try:
        with pytest.raises(ValueError, match="newline"):
            store.add_pending([b'{"a":1}', b'{"b":\n2}'], {"v": 1}, 1)
        assert store.pending_count() == 0 and store.builder_state() is None
        assert RecordLog.segment_files(tmp_path / LOG_DIR) == []
    finally:
        store.close()


async def test_a_storage_failure_sealing_at_submit_does_not_fail_the_submit(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=3, max_age_s=600)
    )

    def disk_full(self: Sealer) -> int:
        raise EvidenceStoreError("evidence.sqlite: cannot write: no space left")

    async with EvidencePipeline(settings, None, gateway_id=GW, key=keys.gateway, clock=ManualClock(T0)) as p:
        with monkeypatch.context() as m:
            m.setattr(Sealer, "seal_due", disk_full)
            await p.submit([interval(0, k) for k in range(4)], {"next": 4})  # committed: must not raise
        assert p.status()["pending_records"] == 4 and p.builder_state() == {"next": 4}
        await p.submit([interval(0, 4)], {"next": 5})
        assert (p.status()["outbox_depth_batches"], p.status()["pending_records"]) == (1, 2)


def test_new_databases_use_small_pages(tmp_path: Path) -> None:
    EvidenceStore.open(tmp_path, gateway_id=GW).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    finally:
        conn.close()


def test_builder_state_is_the_snapshot_of_the_last_submit(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id=GW)
    try:
        for n in range(5):
            store.add_pending([], {"n": n, "deep": {"x": [n, None, 1.5]}}, n)
        assert store.builder_state() == json.loads('{"n": 4, "deep": {"x": [4, null, 1.5]}}')
    finally:
        store.close()
