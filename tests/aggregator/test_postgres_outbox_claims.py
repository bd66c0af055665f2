"""The InfluxDB outbox shared by several aggregators over one PostgreSQL: each writer claims
the batches it takes (``FOR UPDATE SKIP LOCKED``, then a lease), so two writers never hold the
same batch at once; a writer that died leaves claims that lapse and are taken over."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from aggregator.store.postgres import PostgresEvidenceStore
from tests.aggregator.ingest_support import SimGateway
from tests.aggregator.store_support import accepted

pytestmark = pytest.mark.integration


def _fill(store: PostgresEvidenceStore, gateways: int, seqs: int) -> set[int]:
    ids: set[int] = set()
    for i in range(gateways):
        gw = SimGateway(f"gw-claim-{i}", meters=("pv-01",))
        for _ in range(seqs):
            ids.add(store.store_batch(accepted(gw, steps=1)))
    return ids


def test_racing_writers_claim_each_pending_batch_once(postgres_db: dict[str, Any]) -> None:
    first = PostgresEvidenceStore(postgres_db)
    stores = [first, PostgresEvidenceStore(postgres_db), PostgresEvidenceStore(postgres_db)]
    try:
        ids = _fill(first, gateways=4, seqs=30)
        taken: dict[str, list[int]] = {s.owner: [] for s in stores}
        start = threading.Barrier(len(stores))

        def drain(store: PostgresEvidenceStore) -> None:
            start.wait(60)
            while batch := store.pending_influx(7):
                taken[store.owner].extend(p.id for p in batch)
                store.mark_influx([p.id for p in batch])

        threads = [threading.Thread(target=drain, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        every = [i for got in taken.values() for i in got]
        assert sorted(every) == sorted(ids)  # each batch written once, none left
        assert first.influx_backlog() == (0, 0)
    finally:
        for s in stores:
            s.close()


def test_a_dead_writers_claims_lapse_and_are_taken_over(postgres_db: dict[str, Any]) -> None:
    dead, alive = PostgresEvidenceStore(postgres_db), PostgresEvidenceStore(postgres_db)
    try:
        ids = _fill(dead, gateways=1, seqs=5)
        claimed = {p.id for p in dead.pending_influx(3)}
        assert len(claimed) == 3
        assert {p.id for p in dead.pending_influx(10)} == ids  # its own claims it takes again
        dead.close()  # the writer is gone; its claims stay until they lapse
        assert alive.pending_influx(10) == []
        with psycopg.connect(**postgres_db, autocommit=True) as conn:  # the 60 s lease runs out
            conn.execute("UPDATE batches SET influx_lease_ms = influx_lease_ms - 61000")
        assert {p.id for p in alive.pending_influx(10)} == ids
    finally:
        alive.close()
