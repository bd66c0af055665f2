"""What only the SQLite evidence store has: its migrations from older files and the file's mode
(the behaviour both backends share: test_store.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.registry import GatewayRegistry
from aggregator.store import SQLiteEvidenceStore
from evidence import IntervalRecord, decode_record
from tests.aggregator.ingest_support import SimGateway
from tests.aggregator.store_support import accepted


def test_batches_are_kept_compressed_and_a_version_1_store_migrates(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "e.sqlite3"
    store = SQLiteEvidenceStore(path)
    gw = SimGateway("gw-1")
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    store.close()
    old, new = accepted(gw), accepted(gw)
    con = sqlite3.connect(path)  # a store as puhui wrote it at schema version 1
    con.execute("ALTER TABLE batches DROP COLUMN data_codec")  # raw bytes
    con.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
    con.execute("DROP INDEX rejections_by_data")
    for column in ("last_ms", "repeats", "data_sha256"):
        con.execute(f"ALTER TABLE rejections DROP COLUMN {column}")
    con.execute("INSERT INTO rejections (gateway, seq, header_sha256, reason, detail, received_ms, data)"
                " VALUES ('gw-1', 9, NULL, 'malformed', 'bad', 5, x'00')")  # fmt: skip
    con.execute("CREATE INDEX intervals_by_meter ON intervals (gateway, meter, start)")  # no batch_series
    cur = con.execute(
        "INSERT INTO batches (gateway, seq, header_sha256, prev, key_id, root, created_ms, received_ms,"
        " count, verdict, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (old.gateway, old.seq, old.header_sha256, old.prev, old.key_id, old.root, old.created_ms,
         old.received_ms, old.count, old.verdict, old.data),
    )  # fmt: skip
    con.executemany(
        'INSERT INTO intervals (batch_id, idx, gateway, meter, quantity, start, "end", issues)'
        " VALUES (?,?,?,?,?,?,?,?)",
        [(cur.lastrowid, r.index, "gw-1", r.meter, r.quantity, r.start, r.end, None) for r in old.intervals],
    )
    con.commit()
    con.close()

    store = SQLiteEvidenceStore(path)  # migrates in place; old rows stay raw, new ones compressed
    [rejection] = store.rejections()
    assert (rejection.seq, rejection.repeats, rejection.last_ms, rejection.data) == (9, 1, 5, b"\x00")
    store.store_batch(new)
    assert store.batch_bytes("gw-1", 1) == old.data and store.batch_bytes("gw-1", 2) == new.data
    assert [p.data for p in store.pending_influx(10)] == [old.data, new.data]
    records = [decode_record(r) for r in (*old.data.split(b"\n")[2:-1], *new.data.split(b"\n")[2:-1])]
    assert [a.record for a in store.attested_intervals()] == records
    assert [a.record for a in store.attested_intervals(gateway="gw-1", meters=["hm-01"])] == [
        r for r in records if isinstance(r, IntervalRecord) and r.meter == "hm-01"
    ]
    store.close()
    con = sqlite3.connect(path)
    sizes = con.execute("SELECT length(data), data_codec FROM batches ORDER BY seq").fetchall()
    indexes = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    con.close()
    assert "intervals_by_meter" not in indexes
    assert sizes[0] == (len(old.data), None) and sizes[1][1] == "zlib" and sizes[1][0] < len(new.data) / 3


def test_the_evidence_is_readable_by_its_owner_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Household consumption is personal data: the database and its WAL files are 0600, and an
    older store left 0644 is tightened on open, loudly."""
    path = tmp_path / "evidence.sqlite3"
    store = SQLiteEvidenceStore(path)
    gw = SimGateway("gw-a")
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    store.store_batch(accepted(gw))
    files = [p for p in tmp_path.iterdir() if p.name.startswith("evidence.sqlite3")]
    assert {p.name for p in files} >= {"evidence.sqlite3", "evidence.sqlite3-wal"}
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o600 for p in files}
    store.close()
    path.chmod(0o644)
    SQLiteEvidenceStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert "now 0600" in caplog.text
