"""``make bench``: run the benchmark scripts and write bench/results.md.

Each module in BENCHMARKS has ``run() -> list[Figure]``. Figures with a ceiling or peer
measured in the same run report the ratio.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.common import Figure

BENCHMARKS = [
    "bench.evidence_bench",
    "bench.bench_acquisition",
    "bench.bench_ingest",
    "bench.bench_outbox",
    "bench.bench_methodology",
    "bench.bench_tls",
    "bench.bench_api",
]  # explicit list: no folder scanning
RESULTS = Path(__file__).with_name("results.md")


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    )  # fmt: skip
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}"


def number(value: float) -> str:
    """Thousands separators for large figures, three significant digits for small ones."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    rows = ["| figure | value | unit | compared with | ratio |", "|---|---:|---|---|---:|"]
    for f in figures:
        peer = f"{f.compared_with} ({number(f.peer_value)})" if f.peer_value else ""
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        rows.append(f"| {f.name} | {number(f.value)} | {f.unit} | {peer} | {ratio} |")
    return "\n".join(rows)


def main() -> int:
    figures: list[Figure] = []
    for name in BENCHMARKS:
        print(f"running {name} ...", file=sys.stderr)
        figures.extend(importlib.import_module(name).run())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# Benchmark results\n\n{stamp}; {machine()}\n\n{table(figures)}\n"
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
