"""Gateway outbox: batches sealed, stored and sent per second; disk bytes per 1,000 readings.

Run: ``.venv/bin/python -m bench.bench_outbox`` (``--disk``: the disk figures only).

1. Throughput, end to end on one machine: records are submitted to an
   :class:`EvidencePipeline` (each submit of ``max_records`` seals a batch at once), the
   uplink publishes to a private Mosquitto, a subscriber that verifies each batch and stores
   it durably in SQLite (tests/gateway/ack_subscriber.py) acks it, and the ack removes it
   from the outbox. Measured: batches per second from the first submit to the empty outbox.
   Compared with sealing alone (encode + Merkle + sign, no disk, no network).
2. Disk writes, no network: a gateway pattern of 10 series closing an interval together (a
   submit of 10 records + the builder snapshot of those 10 series), sealed in batches of
   500; 20,000 records, every batch acked at the end (the outbox holds them all first).
   ``write_bytes`` from /proc/self/io (bytes this process sent to the block layer: log
   frames, WAL, checkpoints into the database) per 1,000 interval records, compared with
   the raw record bytes: the ratio is the write amplification. The same with records whose
   readings vary as real ones do (seeded random counters and statistics: they compress
   about 4.5x where the test records, all alike, compress 11x).
3. What the device sees: the same patterns on an ext4 file system (4 KiB blocks, defaults)
   of its own on a loop device, counting the sectors written to it from mount to unmount:
   the file-system journal and metadata included, which /proc/self/io does not count (an
   ``fdatasync`` that changes a file's size commits the journal). Needs root (losetup,
   mount): skipped, saying so, otherwise. Also the steady state of a connected gateway:
   100,000 records, each batch acked as soon as it is sealed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import Figure
from common.clock import ManualClock
from drivers.contract import Sample
from evidence.batch import GENESIS_PREV, seal_batch
from evidence.records import IntervalRecord, Stats, encode_record
from gateway.evidence_config import SealingSettings
from gateway.intervals import IntervalBuilder, SeriesSpec
from gateway.pipeline import EvidencePipeline
from gateway.store import EvidenceStore
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber, eventually
from tests.gateway.evidence_helpers import T0, L, evidence_settings, interval, make_keys, uplink_settings

GW = "gw-bench"


def _records(n: int, series: int = 10) -> list[IntervalRecord]:
    return [interval(i % series, i // series) for i in range(n)]


def _varied_records(n: int, series: int = 10) -> list[IntervalRecord]:
    """Records with readings that vary as real ones do (seeded): counters with two decimals,
    statistics as computed, timestamps off the boundary by a few seconds."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        start = T0 + (i // series) * L
        value, delta = round(rng.uniform(100, 99_999), 2), round(rng.uniform(0, 30), 2)
        lo = rng.uniform(0, 5)
        hi = lo + rng.uniform(0, 40)
        out.append(IntervalRecord(
            f"m{i % series}", "energy_import", "kWh", start, start + L, counter_start=value,
            counter_start_time_ms=start * 1000 - rng.randint(0, 9999), counter_end=round(value + delta, 2),
            counter_end_time_ms=(start + L) * 1000 - rng.randint(0, 9999), delta=delta,
            stats=Stats("kW", lo, rng.uniform(lo, hi), hi), samples=90, expected=90,
        ))  # fmt: skip
    return out


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


async def _pattern(
    state: Path,
    records: list[IntervalRecord],
    per_submit: int,
    *,
    batch: int = 500,
    ack_as_sealed: bool = False,
) -> None:
    """Submit ``records`` ``per_submit`` at a time with a 10-series builder snapshot, sealed in
    batches of ``batch``; each batch acked (with its advisory send count) as soon as it is
    sealed, or all at the end."""
    keys = make_keys(state.parent / f"{state.name}-keys")
    settings = evidence_settings(state, keys, sealing=SealingSettings(max_records=batch, max_age_s=3600))
    snapshot = _snapshot()
    async with EvidencePipeline(settings, None, gateway_id=GW, key=keys.gateway, clock=ManualClock(T0)) as p:
        store = p._store
        assert store is not None
        for i in range(0, len(records), per_submit):
            await p.submit(records[i : i + per_submit], snapshot)
            if ack_as_sealed:
                _ack_all(store)
        _ack_all(store)


def _ack_all(store: EvidenceStore) -> None:
    for b in store.outbox():
        store.mark_sent(b.seq, 0)
        store.ack(b.seq, b.header_sha256, 0)


def _raw(records: list[IntervalRecord]) -> int:
    return sum(len(encode_record(r)) for r in records)


def _disk_bytes(records: list[IntervalRecord], per_submit: int) -> tuple[float, float]:
    """(write_bytes, raw record bytes) per 1,000 records, in a directory under $HOME."""
    with tempfile.TemporaryDirectory(prefix="puhui-bench-disk-", dir=Path.home()) as tmp:
        before = _io()["write_bytes"]
        asyncio.run(_pattern(Path(tmp) / "state", records, per_submit))
        written = _io()["write_bytes"] - before
    k = 1000 / len(records)
    return written * k, _raw(records) * k


@contextlib.contextmanager
def _loop_ext4() -> Iterator[tuple[Path, Path]]:
    """A fresh ext4 (4 KiB blocks) on a loop device: (mount point, /sys/block/<dev>/stat)."""
    with tempfile.TemporaryDirectory(prefix="puhui-bench-ext4-") as tmp:
        image, mount = Path(tmp) / "fs.img", Path(tmp) / "mnt"
        mount.mkdir()
        _sh("truncate", "-s", "1G", str(image))
        _sh("mkfs.ext4", "-q", "-F", "-b", "4096", str(image))
        device = _sh("losetup", "-f", "--show", str(image))
        try:
            _sh("mount", device, str(mount))
            try:
                yield mount, Path("/sys/block") / Path(device).name / "stat"
            finally:
                _sh("umount", str(mount))
        finally:
            _sh("losetup", "-d", device)


def _sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def _sectors_written(stat: Path) -> int:
    return int(stat.read_text().split()[6]) * 512


def _device_bytes(
    records: list[IntervalRecord], per_submit: int, *, ack_as_sealed: bool = False
) -> tuple[float, float, float]:
    """(bytes the device took from mount to unmount, write_bytes, raw record bytes), each per
    1,000 records, on a fresh ext4 of its own."""
    with _loop_ext4() as (mount, stat):
        _sh("sync", "-f", str(mount))
        device0, proc0 = _sectors_written(stat), _io()["write_bytes"]
        asyncio.run(_pattern(mount / "state", records, per_submit, ack_as_sealed=ack_as_sealed))
        proc = _io()["write_bytes"] - proc0
    device = _sectors_written(stat) - device0  # after the unmount: journal checkpointed
    k = 1000 / len(records)
    return device * k, proc * k, _raw(records) * k


def _can_mount() -> str | None:
    """Why the device figures cannot be measured here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (losetup, mount)"
    try:
        with _loop_ext4():
            return None
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        return f"a loop-mounted ext4 is not possible here: {detail}"


def disk_figures() -> list[Figure]:
    name = "outbox: {} per 1,000 interval records (submits of {}, batches of 500, {})"
    regular, varied = _records(20_000), _varied_records(20_000)
    figures = []
    for per_submit in (10, 100):
        written, raw = _disk_bytes(regular, per_submit)
        figures.append(Figure(name.format("disk bytes", per_submit, "acked"), written, "bytes",
                              "raw record bytes", raw))  # fmt: skip
    written, raw = _disk_bytes(varied, 10)
    figures.append(Figure(name.format("disk bytes", 10, "acked, varied readings"), written, "bytes",
                          "raw record bytes", raw))  # fmt: skip
    why_not = _can_mount()
    if why_not is not None:
        print(f"bench_outbox: device figures skipped: {why_not}", file=sys.stderr)
        return figures
    device_name = "device bytes (ext4, journal included)"
    cases = [
        (regular, 10, False, "acked"),
        (regular, 100, False, "acked"),
        (varied, 10, False, "acked, varied readings"),
        (_varied_records(100_000), 10, True, "each acked when sealed, varied readings, 100,000 records"),
    ]
    for records, per_submit, ack_as_sealed, how in cases:
        device, written, raw = _device_bytes(records, per_submit, ack_as_sealed=ack_as_sealed)
        if ack_as_sealed:
            figures.append(Figure(name.format("disk bytes", per_submit, how), written, "bytes",
                                  "raw record bytes", raw))  # fmt: skip
        label = name.format(device_name, per_submit, how)
        figures.append(Figure(label, device, "bytes", "raw record bytes", raw))
    return figures


def run() -> list[Figure]:
    small = asyncio.run(_throughput(100, 200))
    large = asyncio.run(_throughput(1000, 30))
    name = "outbox: batches of {} sealed+stored+sent+acked (Mosquitto, durable acking subscriber)"
    figures = [
        Figure(name.format("100"), small, "batches/s", "sealing alone", _seal_rate(100)),
        Figure(name.format("1,000"), large, "batches/s", "sealing alone", _seal_rate(1000)),
    ]
    return figures + disk_figures()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_outbox")
    parser.add_argument("--disk", action="store_true", help="the disk figures only")
    args = parser.parse_args(argv)
    for f in disk_figures() if args.disk else run():
        ratio = "" if f.ratio is None else f"  ({f.ratio:.2f} x {f.compared_with}: {f.peer_value:,.1f})"
        print(f"{f.name}: {f.value:,.1f} {f.unit}{ratio}")


if __name__ == "__main__":
    main()
