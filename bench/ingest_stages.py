"""Where the aggregator's event loop spends its time per interval record, step by step.

Run: ``.venv/bin/python -m bench.ingest_stages``. bench_ingest's 100 batches of 1,000
records, each step alone, best of 5 (no store, no InfluxDB, no MQTT): parse, verify
(Merkle root + ECDSA), decode (msgspec), plausibility, line protocol. With
``tune_gc()`` as ``puhui aggregator run`` has it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aggregator.config import LimitSettings, PlausibilitySettings
from aggregator.influx_writer import interval_lines
from aggregator.plausibility import check_intervals
from aggregator.records import decode_records
from aggregator.service import tune_gc
from aggregator.view import MeterInfo
from bench.bench_ingest import BATCH, METERS, _batches
from evidence.batch import parse_batch, verify_batch


def _per_record(name: str, step: Callable[[Any], Any], items: Sequence[Any], records: int) -> list[Any]:
    best = float("inf")
    out: list[Any] = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = [step(item) for item in items]
        best = min(best, time.perf_counter() - t0)
    print(f"{name:34s} {best / records * 1e6:6.2f} µs per record")
    return out


def main() -> None:
    key: Any
    key, batches, _ = _batches(int(time.time()))
    payloads = [b.to_bytes() for b in batches]
    n = len(payloads) * BATCH
    tune_gc()
    sealed = _per_record("parse", parse_batch, payloads, n)
    _per_record("verify (Merkle root + ECDSA)", lambda s: verify_batch(s, key.public_key), sealed, n)
    decoded = _per_record("decode (msgspec)", decode_records, sealed, n)
    records = [[r for _, r in d[0]] for d in decoded]
    meters = {f"meter-{m:03d}": MeterInfo("gw", f"meter-{m:03d}", "pv", 10.0, "1") for m in range(METERS)}
    now_ms = int(time.time() * 1000)
    settings, limits = PlausibilitySettings(), LimitSettings()
    _per_record("plausibility", lambda rs: check_intervals(rs, meters=meters, state={}, created_ms=now_ms,
                now_ms=now_ms, settings=settings, limits=limits), records, n)  # fmt: skip
    _per_record("line protocol", lambda rs: interval_lines("puhui_interval", "gw", 1,
                [(i, r, ()) for i, r in enumerate(rs)]), records, n)  # fmt: skip


if __name__ == "__main__":
    main()
