"""For the evidence store's tests (the backends' fixtures ``open_store`` and
``evidence_store`` are in tests/conftest.py): a batch as ingest hands it to the store."""

from __future__ import annotations

from typing import Any

from aggregator.store import AcceptedBatch, IntervalRow, SQLiteEvidenceStore
from aggregator.store.postgres import PostgresEvidenceStore
from evidence import IntervalRecord, decode_record
from tests.aggregator.ingest_support import SimGateway

AnyStore = SQLiteEvidenceStore | PostgresEvidenceStore


def accepted(
    gw: SimGateway, verdict: str = "append", missing: tuple[int, ...] = (), *, steps: int = 2, **fields: Any
) -> AcceptedBatch:
    """The gateway's next batch as ingest stores it (the first interval flagged low_coverage)."""
    batch = gw.next_batch(steps)
    rows = []
    for i, raw in enumerate(batch.records):
        r = decode_record(raw)
        assert isinstance(r, IntervalRecord)
        rows.append(IntervalRow(i, r.meter, r.quantity, r.start, r.end, ("low_coverage",) if i == 0 else ()))
    h = batch.header
    return AcceptedBatch(
        h.gateway, h.seq, batch.header_sha256, h.prev, h.key_id, h.root, h.created_ms, 7, h.count,
        verdict, batch.to_bytes(), rows, missing, **fields,
    )  # fmt: skip
