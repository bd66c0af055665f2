"""Intervals stored per second: the SQLite evidence store, the PostgreSQL one, and a raw
PostgreSQL ``COPY`` of the same rows, in one run.

Run: ``.venv/bin/python -m bench.bench_store``. Starts a private PostgreSQL cluster (Debian
``postgresql``; TLS with a throwaway CA, SCRAM password, fsync on) on a free loopback port.
Batches of 1,000 interval records (200 meters x 5 intervals), 100 batches a round, as in
bench_ingest. Measures:

- **store**: ``store_group`` alone (rows prepared beforehand), one batch per transaction
  (a lightly loaded aggregator) and 32 (ingest's largest group: a backlog draining). It
  includes compressing the batch bytes, the chain heads, gaps, series and counters, and
  the durable commit;
- **raw COPY**: the same batch rows (already compressed) and interval rows into two plain
  tables by binary ``COPY``, the same rows per transaction: PostgreSQL's floor for them;
- **verified ingest**: ``BatchIngest.pipeline`` (parse, ECDSA verify, Merkle root, chain,
  decode, plausibility, group commit, signed ack) into each store; no InfluxDB.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store import AcceptedBatch, IntervalRow, SQLiteEvidenceStore
from aggregator.store.postgres import PostgresEvidenceStore
from bench.bench_ingest import BATCH, GATEWAY, _batches
from bench.common import Figure
from common.clock import SystemClock
from evidence.batch import SealedBatch
from evidence.keys import generate_key
from evidence.records import IntervalRecord, decode_record
from evidence.wire import Ack, Reply, batch_topic
from puhui.pki import issue_server, make_ca
from testbed.servers import PostgresTls, PrivatePostgres

ROUNDS = 3
GROUPS = (1, 32)  # batches per transaction
Store = SQLiteEvidenceStore | PostgresEvidenceStore


def _accepted(sealed: Sequence[SealedBatch]) -> list[AcceptedBatch]:
    out = []
    for b in sealed:
        h, rows, counters = b.header, [], {}
        for i, raw in enumerate(b.records):
            r = decode_record(raw)
            assert isinstance(r, IntervalRecord)
            rows.append(IntervalRow(i, r.meter, r.quantity, r.start, r.end))
            if r.counter_end is not None:
                counters[(r.meter, r.quantity)] = (r.end, r.counter_end)
        out.append(AcceptedBatch(
            h.gateway, h.seq, b.header_sha256, h.prev, h.key_id, h.root, h.created_ms, h.created_ms,
            h.count, "append", b.to_bytes(), rows, counters=counters,
        ))  # fmt: skip
    return out


def _store_rate(store: Store, batches: Sequence[AcceptedBatch], group: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(batches), group):
        results = store.store_group(batches[i : i + group])
        assert all(isinstance(r, int) for r in results), results
    return len(batches) * BATCH / (time.perf_counter() - t0)


_RAW_TABLES = """
CREATE TABLE raw_batches (id bigint, gateway text, seq bigint, header_sha256 text, prev text,
    key_id text, root text, created_ms bigint, received_ms bigint, count integer, verdict text,
    data bytea, data_codec text);
CREATE TABLE raw_intervals (batch_id bigint, idx integer, gateway text, meter text, quantity text,
    start bigint, "end" bigint, issues text, PRIMARY KEY (batch_id, idx));
"""


def _copy_rate(conninfo: dict[str, Any], batches: Sequence[AcceptedBatch], group: int) -> float:
    """The same rows by binary COPY into plain tables (the interval table keeps its primary key)."""
    packed = [zlib.compress(b.data, 1) for b in batches]
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute(_RAW_TABLES.encode())
        t0 = time.perf_counter()
        for start in range(0, len(batches), group):
            with conn.transaction(), conn.cursor() as cur:
                chunk = range(start, min(start + group, len(batches)))
                with cur.copy("COPY raw_batches FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "text", "int8", "text", "text", "text", "text", "int8", "int8",
                                    "int4", "text", "bytea", "text"])  # fmt: skip
                    for n in chunk:
                        b = batches[n]
                        copy.write_row((n, b.gateway, b.seq, b.header_sha256, b.prev, b.key_id, b.root,
                                        b.created_ms, b.received_ms, b.count, b.verdict, packed[n],
                                        "zlib"))  # fmt: skip
                with cur.copy("COPY raw_intervals FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "int4", "text", "text", "text", "int8", "int8", "text"])
                    for n in chunk:
                        b = batches[n]
                        for r in b.intervals:
                            copy.write_row((n, r.index, b.gateway, r.meter, r.quantity, r.start, r.end, None))
        return len(batches) * BATCH / (time.perf_counter() - t0)


async def _ingest_rate(store: Store, sealed: Sequence[SealedBatch], document: bytes, workdir: Path) -> float:
    config = AggregatorConfig.model_validate({
        "mqtt": {"insecure": True}, "store": {"path": str(workdir / "unused.sqlite3")},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(workdir / "k.pem"),
    })  # fmt: skip
    registry = GatewayRegistry(store)
    registry.enrol(document, at_ms=0)
    acks = 0

    async def send(topic: str, reply: Reply) -> None:
        nonlocal acks
        assert isinstance(reply, Ack) and reply.status == "stored", reply
        acks += 1

    with StoreThreads() as threads:
        ingest = BatchIngest(config, store=store, registry=registry, key=generate_key(), clock=SystemClock(),
                             run_db=threads.run_db)  # fmt: skip
        payloads = [b.to_bytes() for b in sealed]
        t0 = time.perf_counter()
        async with ingest.pipeline(send) as feed:
            for payload in payloads:
                await feed(batch_topic(GATEWAY), payload)
        rate = len(payloads) * BATCH / (time.perf_counter() - t0)
    assert acks == len(payloads)
    return rate


def _round(pg: PrivatePostgres, workdir: Path, n: int) -> dict[str, float]:
    _, sealed, document = _batches(int(time.time()))
    batches = _accepted(sealed)
    rates: dict[str, float] = {}
    counter = iter(range(1000))

    def fresh(kind: str) -> Store:
        i = next(counter)
        if kind == "sqlite":
            return SQLiteEvidenceStore(workdir / f"r{n}-{i}.sqlite3")
        pg.create_database(f"r{n}_{i}")
        return PostgresEvidenceStore(pg.conninfo(f"r{n}_{i}"))

    def timed(kind: str, measure: Callable[[Store], float]) -> float:
        store = fresh(kind)
        try:
            return measure(store)
        finally:
            store.close()

    for group in GROUPS:
        for kind in ("sqlite", "postgres"):
            rates[f"{kind} store, {group}/tx"] = timed(kind, lambda s, g=group: _store_rate(s, batches, g))  # type: ignore[misc]
        pg.create_database(f"raw{n}_{group}")
        rates[f"raw COPY, {group}/tx"] = _copy_rate(pg.conninfo(f"raw{n}_{group}"), batches, group)
    for kind in ("sqlite", "postgres"):
        rates[f"{kind} verified ingest"] = timed(
            kind, lambda s: asyncio.run(_ingest_rate(s, sealed, document, workdir))
        )
    return rates


def run() -> list[Figure]:
    """Best of ``ROUNDS`` for each rate (the machine's noise only slows)."""
    with tempfile.TemporaryDirectory(prefix="puhui-bench-store-") as tmp:
        ca = make_ca(Path(tmp) / "pki")
        cert = issue_server(ca)
        tls = PostgresTls(cert.cert_path, cert.key_path, ca.layout.ca_cert)
        with PrivatePostgres(tls=tls) as pg:
            rounds = [_round(pg, Path(tmp), n) for n in range(ROUNDS)]
    best = {name: max(r[name] for r in rounds) for name in rounds[0]}
    for i, r in enumerate(rounds):
        print(f"  round {i + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in r.items()))
    figures = []
    for group in GROUPS:
        raw = best[f"raw COPY, {group}/tx"]
        for kind, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
            name = f"store: intervals stored into {label}, {group} batch(es) of 1,000 per transaction"
            figures.append(Figure(name, best[f"{kind} store, {group}/tx"], "intervals/s",
                                  "raw PostgreSQL binary COPY of the same rows", raw))  # fmt: skip
    sqlite_ingest = best["sqlite verified ingest"]
    figures.append(Figure("store: verified ingest into SQLite (verify+store+ack, no InfluxDB)", sqlite_ingest,
                          "intervals/s"))  # fmt: skip
    figures.append(Figure("store: verified ingest into PostgreSQL (verify+store+ack, no InfluxDB)",
                          best["postgres verified ingest"], "intervals/s", "the same into SQLite",
                          sqlite_ingest))  # fmt: skip
    return figures


def main() -> None:
    for f in run():
        ratio = "" if f.ratio is None else f"  ({f.ratio:.2f} of {f.compared_with}: {f.peer_value:,.0f})"
        print(f"{f.name}: {f.value:,.0f} {f.unit}{ratio}")


if __name__ == "__main__":
    main()
