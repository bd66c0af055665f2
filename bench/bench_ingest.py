"""Verified intervals per second into a real InfluxDB, batches of 1,000 interval records.

Run: ``.venv/bin/python -m bench.bench_ingest``. Starts a private InfluxDB (Debian
``influxd``) on a free loopback port. Measures, in one run:

- **ingest**: the aggregator's pipeline (``BatchIngest.pipeline``, what ``serve`` runs) for
  each batch: parse, key lookup, ECDSA verify, Merkle root, chain, record decoding,
  plausibility, durable SQLite commit (group commit), signed ack; with the InfluxDB writer
  draining the outbox concurrently. The clock stops when the last point is written. MQTT is
  left out: it is the broker's cost, not ours.
- **raw InfluxDB write**: the same line protocol (the writer's own bodies), posted
  back-to-back by the same client with the same request size: the ceiling.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from pathlib import Path

from aggregator.config import AggregatorConfig
from aggregator.influx import InfluxV1Client
from aggregator.influx_writer import InfluxWriter
from aggregator.ingest import BatchIngest
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads, tune_gc
from aggregator.store import SQLiteEvidenceStore
from bench.common import Figure
from common.clock import SystemClock
from evidence.batch import GENESIS_PREV, SealedBatch, seal_batch
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.keys import generate_key
from evidence.records import IntervalRecord, Stats, encode_record
from evidence.wire import Ack, Reply, batch_topic, encode_reply
from testbed.servers import PrivateInfluxDB

BATCH = 1000
METERS = 200
N_BATCHES = 100
ROUNDS = 3
GATEWAY = "gw-bench"


def _batches(key_factory_now_s: int) -> tuple[object, list[SealedBatch], bytes]:
    key = generate_key()
    span_days = N_BATCHES * (BATCH // METERS) * 900 // 86400 + 1
    t0 = (key_factory_now_s // 86400 - span_days - 1) * 86400  # every batch in the past: plausible
    counters = [15234.125 + i for i in range(METERS)]
    batches, prev, step = [], GENESIS_PREV, 0
    for seq in range(1, N_BATCHES + 1):
        records = []
        for _ in range(BATCH // METERS):
            s, e = t0 + 900 * step, t0 + 900 * (step + 1)
            for m in range(METERS):
                c0 = counters[m]
                counters[m] = c0 + 1.375
                records.append(encode_record(IntervalRecord(
                    f"meter-{m:03d}", "energy_import", "kWh", s, e, "counter", c0, s * 1000 - 1733,
                    c0 + 1.375, e * 1000 - 1733, 1.375, Stats("kW", 4.2, 5.5, 6.1), 90, 90)))  # fmt: skip
            step += 1
        sealed = seal_batch(
            records, key=key, gateway=GATEWAY, seq=seq, prev=prev, created_ms=(t0 + 900 * step) * 1000
        )
        prev = sealed.header_sha256
        batches.append(sealed)
    meters = [EnrolledMeter(f"meter-{m:03d}", "pv", 10.0, "1") for m in range(METERS)]
    doc = make_enrolment(key, gateway=GATEWAY, site="bench", meters=meters, created_ms=t0 * 1000)
    return key, batches, doc.to_bytes()


async def _measure(workdir: Path, influx: PrivateInfluxDB, database: str) -> tuple[float, float]:
    _, batches, document = _batches(int(time.time()))
    config = AggregatorConfig.model_validate(
        {
            "mqtt": {"insecure": True},  # not connected: the bench feeds ingest directly
            "store": {"path": str(workdir / f"{database}.sqlite3")},
            "influx": {"url": influx.url, "database": database},
            "key_file": str(workdir / "unused.pem"),
        }
    )
    store = SQLiteEvidenceStore(config.store.path)
    registry = GatewayRegistry(store)
    registry.enrol(document, at_ms=0)
    agg_key = generate_key()
    threads = StoreThreads()
    run_db = threads.run_db

    bodies: list[bytes] = []
    try:
        async with InfluxV1Client(influx.url, database) as client:
            await client.create_database()
            progressed = asyncio.Event()
            writer = InfluxWriter(
                store,
                client,
                config.influx,
                clock=SystemClock(),
                run_db=run_db,
                run_read=threads.run_read,
                on_progress=progressed.set,
            )
            original_write = client.write

            async def keep(body: bytes, precision: str = "ns") -> None:
                bodies.append(body)
                await original_write(body, precision)

            client.write = keep  # type: ignore[method-assign]
            ingest = BatchIngest(config, store=store, registry=registry, key=agg_key, clock=SystemClock(),
                                 run_db=run_db, on_stored=writer.offer)  # fmt: skip
            payloads = [b.to_bytes() for b in batches]
            acks = 0

            async def send(topic: str, reply: Reply) -> None:  # what serve() publishes, signed
                nonlocal acks
                assert isinstance(reply, Ack) and reply.status == "stored", reply
                encode_reply(reply, agg_key)
                acks += 1

            async with asyncio.TaskGroup() as tg:
                writer_task = tg.create_task(writer.run(), name="bench-writer")
                t0 = time.perf_counter()
                async with ingest.pipeline(send) as feed:
                    for payload in payloads:
                        await feed(batch_topic(GATEWAY), payload)
                assert acks == N_BATCHES
                assert ingest.stats.implausible == 0, "the bench measures plausible data"
                while store.influx_backlog()[0]:
                    await progressed.wait()
                    progressed.clear()
                ingest_rate = N_BATCHES * BATCH / (time.perf_counter() - t0)
                writer_task.cancel()
            client.write = original_write  # type: ignore[method-assign]
            await client.query('DROP MEASUREMENT "puhui_interval"')
            points = sum(b.count(b"\n") for b in bodies)
            t0 = time.perf_counter()
            for body in bodies:
                await client.write(body, "ms")
            raw_rate = points / (time.perf_counter() - t0) * (N_BATCHES * BATCH) / points
    finally:
        threads.close()
        store.close()
    return ingest_rate, raw_rate


def run() -> list[Figure]:
    """Best of ``ROUNDS`` for each rate (the machine's noise is one-sided: it only slows)."""
    with (
        tempfile.TemporaryDirectory(prefix="puhui-bench-ingest-") as tmp,
        PrivateInfluxDB(Path(tmp) / "influx") as influx,
    ):
        threshold = gc.get_threshold()
        tune_gc()  # as `puhui aggregator run` does; undone below for the other benchmarks
        try:
            rounds = [asyncio.run(_measure(Path(tmp), influx, f"bench{i}")) for i in range(ROUNDS)]
        finally:
            gc.set_threshold(*threshold)
            gc.unfreeze()
    for i, (ingest, raw) in enumerate(rounds):
        print(f"  round {i + 1}: ingest {ingest:,.0f}/s, raw {raw:,.0f}/s, ratio {ingest / raw:.2f}")
    ingest_rate, raw_rate = max(r[0] for r in rounds), max(r[1] for r in rounds)
    return [
        Figure("aggregator: verified intervals into InfluxDB (verify+store+write), batches of 1,000",
               ingest_rate, "intervals/s", "raw InfluxDB write of the same line protocol", raw_rate),
    ]  # fmt: skip


def main() -> None:
    for f in run():
        ratio = "" if f.ratio is None else f"  ({f.ratio:.2f} of {f.compared_with}: {f.peer_value:,.0f})"
        print(f"{f.name}: {f.value:,.0f} {f.unit}{ratio}")


if __name__ == "__main__":
    main()
