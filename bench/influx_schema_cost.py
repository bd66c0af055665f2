"""What the interval schema costs InfluxDB: points/s for the written schema against the
session-2 one (``unit``, ``kind``, ``stat_unit``, ``status`` as fields, plus ``chain``).

Run: ``.venv/bin/python -m bench.influx_schema_cost``. A private InfluxDB on a free loopback
port; the same 60,000 points (bench_ingest's batches) written both ways, alternating, three
times, 8,000 points per request. See docs/influx-schema.md.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from aggregator.influx import InfluxV1Client
from aggregator.influx_writer import interval_lines
from aggregator.records import decode_records
from bench.bench_ingest import _batches
from testbed.servers import PrivateInfluxDB


def _bodies() -> list[bytes]:
    _, batches, _ = _batches(int(time.time()))
    out = []
    for seq, sealed in enumerate(batches, 1):
        records = decode_records(sealed)[0]
        lines = interval_lines("puhui_interval", "gw-bench", seq, [(i, r, ()) for i, r in records])
        out.append(("\n".join(lines) + "\n").encode())
    return out


def _as_fields(body: bytes) -> bytes:
    """The same points with the series-describing tags written as string fields."""
    out = []
    for line in body.decode().splitlines():
        series, fields, ts = line.split(" ")
        parts = series.split(",")
        tags = dict(p.split("=", 1) for p in parts[1:])
        head = ",".join([parts[0]] + [f"{k}={tags[k]}" for k in ("gateway", "meter", "quantity")])
        fields = fields.replace("stat_min=", f'stat_unit="{tags["stat_unit"]}",stat_min=')
        out.append(f'{head} unit="{tags["unit"]}",kind="{tags["kind"]}",{fields},chain="append",'
                   f'status="verified" {ts}')  # fmt: skip
    return ("\n".join(out) + "\n").encode()


async def _rate(client: InfluxV1Client, bodies: list[bytes]) -> float:
    await client.query('DROP MEASUREMENT "puhui_interval"')
    requests = [b"".join(bodies[i : i + 8]) for i in range(0, len(bodies), 8)]
    points = sum(b.count(b"\n") for b in bodies)
    t0 = time.perf_counter()
    for body in requests:
        await client.write(body, "ms")
    return points / (time.perf_counter() - t0)


async def _main(url: str) -> None:
    tags = _bodies()
    fields = [_as_fields(b) for b in tags]
    async with InfluxV1Client(url, "bench") as client:
        await client.create_database()
        for _ in range(3):
            old = await _rate(client, fields)
            new = await _rate(client, tags)
            print(f"as fields (21 fields): {old:,.0f} points/s   as tags (16 fields): {new:,.0f} points/s")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, PrivateInfluxDB(Path(tmp) / "influx") as influx:
        asyncio.run(_main(influx.url))


if __name__ == "__main__":
    main()
