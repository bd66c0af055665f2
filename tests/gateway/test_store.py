"""The gateway's SQLite state: WAL + FULL sync, one owner, atomic operations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from evidence.batch import GENESIS_PREV, seal_batch
from evidence.keys import generate_key
from gateway.errors import EvidenceStoreError
from gateway.store import DB_NAME, LOG_DIR, EvidenceStore, read_builder_state

KEY = generate_key()


def test_fresh_store_is_wal_full_sync_and_starts_the_chain(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path / "state", gateway_id="gw-1")
    try:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.chain_head() == (0, GENESIS_PREV)
        assert store.builder_state() is None and store.pending_count() == 0
    finally:
        store.close()


def test_pending_records_and_snapshot_survive_reopen(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id="gw-1")
    store.add_pending([b'{"a":1}', b'{"a":2}'], {"version": 1, "x": [1.5, None]}, 1000)
    store.add_pending([], {"version": 1, "x": [2.5]}, 2000)  # snapshot only
    store.close()
    assert read_builder_state(tmp_path) == {"version": 1, "x": [2.5]}
    store = EvidenceStore.open(tmp_path, gateway_id="gw-1")
    try:
        assert [r for _, r in store.pending(10)] == [b'{"a":1}', b'{"a":2}']
        assert store.oldest_pending_ms() == 1000
    finally:
        store.close()


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id="gw-1")
    try:
        with pytest.raises(ZeroDivisionError), store.transaction():
            store.set_chain_head(5, "ab" * 32)
            store.mark_sealed_through(10)
            raise ZeroDivisionError
        assert store.chain_head() == (0, GENESIS_PREV)
        with pytest.raises(ValueError):  # NaN in a snapshot is refused before writing
            store.add_pending([b"r"], {"v": float("nan")}, 1)
        assert store.pending_count() == 0
    finally:
        store.close()


def test_other_gateway_and_second_process_are_refused(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id="gw-1")
    try:
        with pytest.raises(EvidenceStoreError, match="another gateway process"):
            EvidenceStore.open(tmp_path, gateway_id="gw-1")
    finally:
        store.close()
    with pytest.raises(EvidenceStoreError, match="state of gateway 'gw-1', not 'gw-2'"):
        EvidenceStore.open(tmp_path, gateway_id="gw-2")


def test_ack_needs_seq_and_header_hash_and_reject_is_recorded(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id="gw-1")
    try:
        batch = seal_batch([b'{"r":1}'], key=KEY, gateway="gw-1", seq=1, prev=GENESIS_PREV, created_ms=5)
        with store.transaction():
            store.insert_batch(batch, batch.to_bytes(), "data")
            store.set_chain_head(1, batch.header_sha256)
        store.mark_sent(1, 10)
        assert store.record_reject(1, "not_enrolled", 11) == 1
        assert store.delivery(1) == {"attempts": 1, "last_sent_ms": 10, "rejects": 1,
                                     "last_reject": "not_enrolled", "last_reject_ms": 11}  # fmt: skip
        assert store.next_to_send([], 5) == [(1, batch.header_sha256, batch.to_bytes())]
        assert store.next_to_send([1], 5) == []
        assert not store.ack(1, "00" * 32, 12)
        assert not store.ack(2, batch.header_sha256, 12)
        assert store.ack(1, batch.header_sha256, 13)
        st = store.stats()
        assert (st.depth, st.bytes, st.last_ack_seq, st.last_ack_ms, st.acked) == (0, 0, 1, 13, 1)
        assert store.delivery(1) is None and store.record_reject(1, "fork", 14) is None
    finally:
        store.close()


def test_database_and_record_log_are_where_the_docs_say(tmp_path: Path) -> None:
    store = EvidenceStore.open(tmp_path, gateway_id="gw-1")
    store.add_pending([b'{"r":1}'], {"version": 1}, 1)
    store.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert tables == {"meta", "chain", "batches", "delivery"}
    assert [p.name for p in (tmp_path / LOG_DIR).iterdir()] == ["00000001.log"]
