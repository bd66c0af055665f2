"""The SQLite evidence store: stored once, durable across reopen, the view for methodologies."""

from __future__ import annotations

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
