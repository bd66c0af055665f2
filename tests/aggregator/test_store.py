"""The SQLite evidence store: stored once, durable across reopen, the view for methodologies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aggregator.errors import StoreConflict
from aggregator.registry import GatewayRegistry
from aggregator.store import AcceptedBatch, IntervalRow, SQLiteEvidenceStore
from evidence import IntervalRecord, decode_record
from tests.aggregator.ingest_support import STEP, T0, SimGateway


def _accepted(gw: SimGateway, verdict: str = "append", missing: tuple[int, ...] = ()) -> AcceptedBatch:
    batch = gw.next_batch(2)
    rows = []
    for i, raw in enumerate(batch.records):
        r = decode_record(raw)
        assert isinstance(r, IntervalRecord)
        rows.append(IntervalRow(i, r.meter, r.quantity, r.start, r.end, ("low_coverage",) if i == 0 else ()))
    h = batch.header
    return AcceptedBatch(
        h.gateway,
        h.seq,
        batch.header_sha256,
        h.prev,
        h.key_id,
        h.root,
        h.created_ms,
        7,
        h.count,
        verdict,
        batch.to_bytes(),
        rows,
        missing,
    )


def test_store_once_reopen_and_view(tmp_path: Path) -> None:
    store = SQLiteEvidenceStore(tmp_path / "e.sqlite3")
    gw = SimGateway("gw-1")
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    first, second = _accepted(gw), _accepted(gw, "gap", missing=(3,))
    store.store_batch(first)
    store.store_batch(second)
    with pytest.raises(StoreConflict):
        store.store_batch(first)
    store.close()

    store = SQLiteEvidenceStore(tmp_path / "e.sqlite3")
    assert store.batch_bytes("gw-1", 1) == first.data and store.batch_bytes("gw-1", 9) is None
    assert [(m.meter, m.scenario) for m in store.meters()] == [("hm-01", "clean_heating"), ("pv-01", "pv")]
    every = list(store.attested_intervals())
    assert len(every) == 8 and every[0].issues == ("low_coverage",) and not every[0].plausible
    assert every[4].batch.seq == 2 and every[4].batch.header_sha256 == second.header_sha256
    only = list(
        store.attested_intervals(gateway="gw-1", meters=["pv-01"], start=T0 + STEP, end=T0 + 3 * STEP)
    )
    assert [(a.record.meter, a.record.start) for a in only] == [
        ("pv-01", T0 + STEP),
        ("pv-01", T0 + 2 * STEP),
    ]
    assert list(store.attested_intervals(meters=[])) == []
    assert [g.seq for g in store.gaps("gw-1")] == [3]
    assert [p.seq for p in store.pending_influx(10)] == [1, 2]
    assert store.pending_influx(10)[0].issues == {0: ("low_coverage",)}
    store.mark_influx([p.id for p in store.pending_influx(1)])
    store.mark_influx([p.id for p in store.pending_influx(1)], error="HTTP 400: bad")
    assert store.influx_backlog() == (0, 1)
    store.close()


def test_a_group_stores_all_but_a_conflicting_gateway_and_keeps_gaps_right(tmp_path: Path) -> None:
    store = SQLiteEvidenceStore(tmp_path / "e.sqlite3")
    a, b = SimGateway("gw-a"), SimGateway("gw-b")
    for gw in (a, b):
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    a1 = _accepted(a)
    store.store_batch(a1)  # another aggregator stored a#1 already
    a2, b1 = _accepted(a), _accepted(b)
    b3 = _accepted(b)  # pretend b#2 is missing ...
    b3 = dataclasses.replace(b3, seq=3, verdict="gap", missing=(2,))
    b2 = dataclasses.replace(b1, seq=2, verdict="reorder")
    results = store.store_group([a1, a2, b1, b3, b2])  # ... and arrives in the same group, later
    assert isinstance(results[0], StoreConflict) and results[1] is None
    assert all(isinstance(r, int) for r in results[2:]) and len(set(results[2:])) == 3
    assert [s for s, _, _ in store.chain_links("gw-a")] == [1]
    assert [s for s, _, _ in store.chain_links("gw-b")] == [1, 2, 3]
    assert store.gaps("gw-b") == []  # b#2 was stored in the same transaction: never a gap
    store.close()


def test_batches_are_kept_compressed_and_a_version_1_store_migrates(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "e.sqlite3"
    store = SQLiteEvidenceStore(path)
    gw = SimGateway("gw-1")
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    store.close()
    old, new = _accepted(gw), _accepted(gw)
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
    store.store_batch(_accepted(gw))
    files = [p for p in tmp_path.iterdir() if p.name.startswith("evidence.sqlite3")]
    assert {p.name for p in files} >= {"evidence.sqlite3", "evidence.sqlite3-wal"}
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o600 for p in files}
    store.close()
    path.chmod(0o644)
    SQLiteEvidenceStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert "now 0600" in caplog.text
