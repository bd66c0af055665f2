"""OCPP through the tap: messages per second and added latency, against a direct connection.

Chargers are lean websockets clients sending OCPP 1.6J MeterValues CALLs (a register and a
power value; one CALL at a time per charger, as OCPP asks) to a lean CSMS that answers each
with ``[3, id, {}]``. Two paths, same run:

- **direct**: charger -> CSMS;
- **tap**: charger -> :class:`drivers.ocpp.OcppTap` -> CSMS, the tap in its own process (as on
  a gateway) with its metering reader and a counting sink.

Figures: CALLs answered per second with ``--chargers`` chargers calling back to back for
``--seconds``; round-trip latency p50/p99 of one charger calling back to back (``--calls``);
and the same through the tap with every MeterValues carrying an OCMF record (P-256) that the
tap verifies against the pinned key. Chargers and CSMS share the bench's process and core.
Run: ``.venv/bin/python -m bench.bench_ocpp [--chargers 20 --seconds 5 --calls 3000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from decimal import Decimal

from cryptography.hazmat.primitives.asymmetric import ec
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from common.clock import SystemClock
from drivers.contract import Sample
from drivers.ocpp import ChargerConfig, OcppTap, TapConfig, ocmf
from drivers.ocpp.config import Listen
from drivers.ocpp.metering import FrameProblem, SessionEvent, SignedValue

SUB = [Subprotocol("ocpp1.6")]
BODY = (
    '"MeterValues",{"connectorId":1,"transactionId":42,"meterValue":[{"timestamp":"2025-03-10T00:15:00.000Z",'
    '"sampledValue":[{"value":"%d","context":"Sample.Clock","measurand":"Energy.Active.Import.Register",'
    '"unit":"Wh"},{"value":"7400","context":"Sample.Clock","measurand":"Power.Active.Import","unit":"W"}%s]}]}]'
)


class Sink:
    """Counts what the tap read (a gateway would queue it)."""

    def __init__(self) -> None:
        self.counts = {"samples": 0, "verified": 0, "other": 0, "problems": 0}

    def samples(self, samples: Sequence[Sample]) -> None:
        self.counts["samples"] += len(samples)

    def session(self, event: SessionEvent) -> None:
        pass

    def signed(self, value: SignedValue) -> None:
        self.counts["verified" if value.meter_signed else "other"] += 1

    def problem(self, problem: FrameProblem) -> None:
        self.counts["problems"] += 1


# -- the tap in its own process -----------------------------------------------------------------------


async def serve_tap(upstream: str, key: str | None) -> None:
    chargers = {f"CP-{i:03d}": ChargerConfig(meter_key=key) for i in range(64)} if key else {}
    config = TapConfig(listen=Listen(port=0), upstream=upstream, chargers=chargers)
    sink = Sink()
    async with OcppTap(config, sink, SystemClock()) as tap:
        print(tap.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told to stop
    print(json.dumps(sink.counts), flush=True)


class TapProcess:
    def __init__(self, upstream: str, key: str | None) -> None:
        args = [sys.executable, "-m", "bench.bench_ocpp", "--serve-tap", upstream] + (
            ["--key", key] if key else []
        )
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.counts: dict[str, int] = {}

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.counts = json.loads(self.proc.stdout.readline())
        self.proc.wait(timeout=10)


# -- chargers and CSMS --------------------------------------------------------------------------------


async def lean_csms(ws: ServerConnection) -> None:
    async for msg in ws:
        await ws.send(f'[3,"{json.loads(msg)[1]}",{{}}]')


class Frames:
    """Prebuilt MeterValues frames, optionally each with its OCMF record signed in advance."""

    def __init__(self, count: int, key: ec.EllipticCurvePrivateKey | None) -> None:
        self.bodies = []
        for i in range(count):
            signed = ""
            if key is not None:
                reading = {
                    "TM": ocmf.format_time(1_741_565_700.0),
                    "TX": "C",
                    "RV": Decimal(123_456 + i).scaleb(-3),
                    "RI": "01-00:01.08.00*FF",
                    "RU": "kWh",
                    "ST": "G",
                }
                record = ocmf.build(
                    {"FV": "1.0", "PG": f"T{i + 1}", "MS": "M1", "IS": False, "RD": [reading]}, key
                )
                signed = f',{{"value":{json.dumps(record)},"format":"SignedData","context":"Sample.Clock"}}'
            self.bodies.append(BODY % (123_456 + i, signed))

    def call(self, uid: str, i: int) -> str:
        return f'[2,"{uid}",' + self.bodies[i % len(self.bodies)]


async def call(ws: ClientConnection, frames: Frames, uid: str, i: int) -> None:
    await ws.send(frames.call(uid, i))
    answer = await ws.recv()
    if f'"{uid}"' not in answer:
        raise RuntimeError(f"unexpected answer {answer[:60]!r}")


async def throughput(url: str, chargers: int, seconds: float, frames: Frames) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def charger(n: int) -> None:
        nonlocal done
        async with connect(f"{url}/CP-{n:03d}", subprotocols=SUB, proxy=None, compression=None) as ws:
            i = 0
            while time.perf_counter() < stop:
                await call(ws, frames, f"{n}-{i}", i)
                i += 1
                done += 1

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for n in range(chargers):
            tg.create_task(charger(n))
    return done / (time.perf_counter() - t0)


async def latencies(url: str, calls: int, frames: Frames) -> list[float]:
    out = []
    async with connect(f"{url}/CP-000", subprotocols=SUB, proxy=None, compression=None) as ws:
        for i in range(calls + 100):
            t0 = time.perf_counter()
            await call(ws, frames, f"l{i}", i)
            if i >= 100:  # warm-up
                out.append((time.perf_counter() - t0) * 1000.0)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def measure(args: argparse.Namespace) -> list[tuple[str, float, str, float | None]]:
    key = ec.generate_private_key(ec.SECP256R1())
    plain, signed = Frames(64, None), Frames(64, key)
    rows: list[tuple[str, float, str, float | None]] = []
    async with serve(lean_csms, "127.0.0.1", 0, subprotocols=SUB, compression=None) as server:
        upstream = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        direct_rate = await throughput(upstream, args.chargers, args.seconds, plain)
        direct_lat = await latencies(upstream, args.calls, plain)
        tap = TapProcess(upstream, None)
        try:
            tap_rate = await throughput(f"ws://127.0.0.1:{tap.port}", args.chargers, args.seconds, plain)
            tap_lat = await latencies(f"ws://127.0.0.1:{tap.port}", args.calls, plain)
        finally:
            tap.stop()
        signed_tap = TapProcess(upstream, ocmf.public_key_text(key.public_key()))
        try:
            signed_rate = await throughput(
                f"ws://127.0.0.1:{signed_tap.port}", args.chargers, args.seconds, signed
            )
            signed_lat = await latencies(f"ws://127.0.0.1:{signed_tap.port}", args.calls, signed)
        finally:
            signed_tap.stop()
    assert signed_tap.counts["other"] == 0 and signed_tap.counts["verified"] > 0, signed_tap.counts
    assert tap.counts["problems"] == 0 and tap.counts["samples"] > 0, tap.counts
    n = args.chargers
    rows.append(
        (f"MeterValues CALLs answered through the tap, {n} chargers", tap_rate, "calls/s", direct_rate)
    )
    rows.append(("round trip through the tap, p50", pct(tap_lat, 50), "ms", pct(direct_lat, 50)))
    rows.append(("round trip through the tap, p99", pct(tap_lat, 99), "ms", pct(direct_lat, 99)))
    rows.append(
        (f"signed (OCMF P-256, verified by the tap), {n} chargers", signed_rate, "calls/s", direct_rate)
    )
    rows.append(("signed, round trip through the tap, p50", pct(signed_lat, 50), "ms", pct(direct_lat, 50)))
    rows.append(("signed, round trip through the tap, p99", pct(signed_lat, 99), "ms", pct(direct_lat, 99)))
    return rows


def table(rows: list[tuple[str, float, str, float | None]]) -> str:
    out = ["| figure | value | unit | direct charger -> CSMS | ratio |", "|---|---:|---|---:|---:|"]
    for name, value, unit, peer in rows:
        fmt = "{:,.0f}" if value >= 100 else "{:.3g}"
        ratio = f"{value / peer:.2f}" if peer else ""
        out.append(
            f"| {name} | {fmt.format(value)} | {unit} | {fmt.format(peer) if peer else ''} | {ratio} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chargers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--serve-tap", metavar="UPSTREAM", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_tap:
        asyncio.run(serve_tap(args.serve_tap, args.key))
        return 0
    rows = asyncio.run(measure(args))
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
