"""The platform API (issue 17): intervals served, statements-list latency under load, and
evidence packages built and verified for a month of a 35-meter site.

Run: ``.venv/bin/python -m bench.bench_api``. Everything on loopback: the real server
(``puhui aggregator api``, uvicorn, TLS) in its own process over a store filled by the
aggregator's own ingest.

- intervals served per second: paging through 10,400 intervals (pages of 1,000, JSON over
  HTTPS) against a raw SQLite read of the same rows (the stored batch blobs read,
  decompressed and split into record lines: the floor any server of this store has);
- statements list p50/p99 latency with 50 concurrent clients (20 requests each);
- package build (``aggregator.package.build_package``) and verify
  (``puhui.verify.verify_package``) for one statement over 35 meters x 30 days (100,800
  intervals), in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import httpx

from aggregator.methodology.store import StatementStore
from aggregator.package import build_package
from aggregator.store import SQLiteEvidenceStore
from bench.common import Figure
from puhui.verify import verify_package
from tests.aggregator.api.support import GATEWAY, make_token, populate, running_api

CLIENTS, REQUESTS = 50, 20


def _raw_rows(db: Path) -> int:
    n = 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for data, codec in conn.execute("SELECT data, data_codec FROM batches WHERE gateway = ? ORDER BY id",
                                        (GATEWAY,)):  # fmt: skip
            blob = zlib.decompress(data) if codec == "zlib" else bytes(data)
            n += len(blob.split(b"\n")[2:-1])
    return n


def _served(client: httpx.Client) -> int:
    n, cursor = 0, None
    while True:
        params: dict[str, object] = {
            "gateway": GATEWAY,
            "limit": 1000,
            **({"cursor": cursor} if cursor else {}),
        }
        page = client.get("/v1/intervals", params=params).json()
        n += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return n


async def _latencies(url: str, trust: ssl.SSLContext, token: str) -> list[float]:
    out: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, verify=trust, limits=limits, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as c:  # fmt: skip

        async def one_client() -> None:
            for _ in range(REQUESTS):
                t0 = time.perf_counter()
                r = await c.get("/v1/statements", params={"limit": 100})
                out.append(time.perf_counter() - t0)
                r.raise_for_status()

        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return out


def _best(seconds: list[float]) -> float:
    return min(seconds)


def run() -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        p = populate(Path(tmp) / "small")
        token = make_token(p.config, "statements:read", "intervals:read")
        raw = []
        for _ in range(3):
            t0 = time.perf_counter()
            rows = _raw_rows(p.db)
            raw.append(rows / (time.perf_counter() - t0))
        trust = ssl.create_default_context(cafile=p.ca)
        with running_api(p.config) as api:
            served = []
            with httpx.Client(base_url=api.url, verify=trust, timeout=120,
                              headers={"Authorization": f"Bearer {token}"}) as c:  # fmt: skip
                for _ in range(3):
                    t0 = time.perf_counter()
                    n = _served(c)
                    served.append(n / (time.perf_counter() - t0))
            lat = sorted(asyncio.run(_latencies(api.url, trust, token)))
        name = f"api: intervals served (JSON over HTTPS, pages of 1,000, {n:,} intervals)"
        figures.append(Figure(name, max(served), "intervals/s", "raw SQLite read of the same rows", max(raw)))
        q = statistics.quantiles(lat, n=100)
        figures.append(Figure(f"api: statements list p50, {CLIENTS} concurrent clients", q[49] * 1000, "ms"))
        figures.append(Figure(f"api: statements list p99, {CLIENTS} concurrent clients", q[98] * 1000, "ms"))

        meters = tuple(f"pv-{k:02d}" for k in range(35))
        m = populate(Path(tmp) / "month", meters=meters, steps=96 * 30, per_batch=96, one_statement=True)
        store, statements = SQLiteEvidenceStore(m.db), StatementStore(m.db)
        try:
            builds, verifies = [], []
            for _ in range(3):
                t0 = time.perf_counter()
                package = build_package(store, statements, m.statements[0])
                builds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                report = verify_package(package, m.aggregator.public_key)
                verifies.append(time.perf_counter() - t0)
                assert report.ok, report.problems
        finally:
            statements.close()
            store.close()
        size = f"35 meters x 30 days, {35 * 96 * 30:,} intervals, {len(package) / 1e6:.1f} MB"
        figures.append(Figure(f"api: evidence package build ({size})", _best(builds) * 1000, "ms"))
        figures.append(Figure(f"api: evidence package verify ({size})", _best(verifies) * 1000, "ms"))
    return figures


if __name__ == "__main__":
    for f in run():
        ratio = "" if f.ratio is None else f"  ratio {f.ratio:.2f} vs {f.compared_with} ({f.peer_value:,.0f})"
        print(f"{f.name}: {f.value:,.1f} {f.unit}{ratio}")
