"""Gateway outbox: batches sealed, stored and sent per second; disk bytes per 1,000 readings.

Run: ``.venv/bin/python -m bench.bench_outbox``.

1. Throughput, end to end on one machine: records are submitted to an
   :class:`EvidencePipeline` (each submit of ``max_records`` seals a batch at once), the
   uplink publishes to a private Mosquitto, a subscriber that verifies each batch and stores
   it durably in SQLite (tests/gateway/ack_subscriber.py) acks it, and the ack removes it
   from the outbox. Measured: batches per second from the first submit to the empty outbox.
   Compared with sealing alone (encode + Merkle + sign, no disk, no network).
2. Disk writes, no network: a gateway pattern of 10 series closing an interval together (a
   submit of 10 records + the builder snapshot), sealed in batches of 500, each batch then
   acked. ``write_bytes`` from /proc/self/io (bytes this process sent to the block layer:
   WAL, checkpoints into the database, fsync'd) per 1,000 interval records, compared with
   the raw record bytes: the ratio is the write amplification.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import Figure
from common.clock import ManualClock
from drivers.contract import Sample
from evidence.batch import GENESIS_PREV, seal_batch
from evidence.records import encode_record
from gateway.evidence_config import SealingSettings
from gateway.intervals import IntervalBuilder, SeriesSpec
from gateway.pipeline import EvidencePipeline
from gateway.store import EvidenceStore
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber, eventually
from tests.gateway.evidence_helpers import T0, evidence_settings, interval, make_keys, uplink_settings

GW = "gw-bench"


def _records(n: int, series: int = 10) -> list:  # type: ignore[type-arg]
    return [interval(i % series, i // series) for i in range(n)]


async def _throughput(batch: int, batches: int) -> float:
    with tempfile.TemporaryDirectory(prefix="puhui-bench-outbox-") as tmp, PrivateMosquitto() as broker:
        root = Path(tmp)
        keys = make_keys(root / "keys")
        settings = evidence_settings(
            root / "state", keys, sealing=SealingSettings(max_records=batch, max_age_s=3600)
        )
        uplink = uplink_settings(broker.host, broker.port, keys, inflight=16, resend_after_s=30.0)
        records = _records(batch * batches)
        snapshot = {"version": 1}
        async with (
            AckSubscriber(broker.host, broker.port, root / "agg.sqlite",
                          gateway_keys={GW: keys.gateway.public_key}, aggregator_key=keys.aggregator) as agg,
            EvidencePipeline(settings, uplink, gateway_id=GW, key=keys.gateway, clock=ManualClock(T0)) as p,
        ):  # fmt: skip
            await agg.connected.wait()
            await eventually(lambda: p.status()["connected"] == 1, 10, "the uplink")
            t0 = time.perf_counter()
            for i in range(batches):
                await p.submit(records[i * batch : (i + 1) * batch], snapshot)
                await asyncio.sleep(0)  # let the uplink and the subscriber run, as between polls
            await eventually(lambda: p.status()["acked_total"] == batches, 120, "every ack")
            return batches / (time.perf_counter() - t0)


def _seal_rate(batch: int) -> float:
    keys_dir = tempfile.TemporaryDirectory(prefix="puhui-bench-keys-")
    with keys_dir as tmp:
        key = make_keys(Path(tmp)).gateway
    records = _records(batch)
    rounds, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        seal_batch(
            [encode_record(r) for r in records], key=key, gateway=GW, seq=1, prev=GENESIS_PREV, created_ms=0
        )
        rounds += 1
    return rounds / (time.perf_counter() - t0)


def _io() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {k: int(v) for k, v in fields.items()}


def _snapshot(series: int = 10) -> dict:  # type: ignore[type-arg]
    """A real builder snapshot of ``series`` counters mid-interval (what each submit persists)."""
    clock = ManualClock(T0 + 400)
    specs = [SeriesSpec(f"m{i}", "energy_import", "kWh", "counter", 10.0) for i in range(series)]
    builder = IntervalBuilder(specs, clock=clock, interval_s=900)
    builder.add_many(Sample(f"m{i}", "energy_import", 1000.0 + i + t / 100, T0 + t) for i in range(series)
                     for t in range(0, 400, 10))  # fmt: skip
    return builder.snapshot()


async def _disk_bytes(
    total: int = 20_000, per_submit: int = 10, batch: int = 500
) -> tuple[float, float, float]:
    """(write_bytes, wchar, raw record bytes), each per 1,000 records."""
    with tempfile.TemporaryDirectory(prefix="puhui-bench-disk-", dir=Path.home()) as tmp:
        root = Path(tmp)
        keys = make_keys(root / "keys")
        settings = evidence_settings(
            root / "state", keys, sealing=SealingSettings(max_records=batch, max_age_s=3600)
        )
        records = _records(total)
        raw = sum(len(encode_record(r)) for r in records)
        snapshot = _snapshot()
        clock = ManualClock(T0)
        before = _io()
        async with EvidencePipeline(settings, None, gateway_id=GW, key=keys.gateway, clock=clock) as p:
            for i in range(0, total, per_submit):
                await p.submit(records[i : i + per_submit], snapshot)
            store = p._store
            assert store is not None
            for b in store.outbox():
                store.mark_sent(b.seq, 0)
                store.ack(b.seq, b.header_sha256, 0)
        after = _io()
        EvidenceStore.open(root / "state", gateway_id=GW).close()
    k = 1000 / total
    return (after["write_bytes"] - before["write_bytes"]) * k, (after["wchar"] - before["wchar"]) * k, raw * k


def run() -> list[Figure]:
    small = asyncio.run(_throughput(100, 200))
    large = asyncio.run(_throughput(1000, 30))
    name = "outbox: batches of {} sealed+stored+sent+acked (Mosquitto, durable acking subscriber)"
    figures = [
        Figure(name.format("100"), small, "batches/s", "sealing alone", _seal_rate(100)),
        Figure(name.format("1,000"), large, "batches/s", "sealing alone", _seal_rate(1000)),
    ]
    for per_submit in (10, 100):
        written, _, raw = asyncio.run(_disk_bytes(per_submit=per_submit))
        label = (
            f"outbox: disk bytes per 1,000 interval records (submits of {per_submit}, batches of 500, acked)"
        )
        figures.append(Figure(label, written, "bytes", "raw record bytes", raw))
    return figures


def main() -> None:
    for f in run():
        ratio = "" if f.ratio is None else f"  ({f.ratio:.2f} x {f.compared_with}: {f.peer_value:,.1f})"
        print(f"{f.name}: {f.value:,.1f} {f.unit}{ratio}")


if __name__ == "__main__":
    main()
