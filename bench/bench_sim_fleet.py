"""Load test of firmware_sim: the load-200 fleet (200 Modbus TCP devices + 200 MQTT meters).

Starts a private Mosquitto, runs ``puhui sim run --fleet config/fleets/load-200.yaml`` as a
child process, polls every Modbus device from this process (one connection each, one
read per device every ``--poll-s`` wall seconds) and subscribes to all MQTT readings,
then reports the simulator process's CPU% and RSS (psutil), read errors and message
counts::

    python bench/bench_sim_fleet.py [--seconds 60] [--poll-s 10] [--factor 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
from pymodbus.client import AsyncModbusTcpClient

from testbed.servers import PrivateMosquitto

ROOT = Path(__file__).resolve().parents[1]
FLEET = ROOT / "config" / "fleets" / "load-200.yaml"
# First register block each kind is polled on: (function, address, count, unit).
POLL = {
    "sdm630": (4, 0x0000, 0x4C),
    "sdm120": (4, 0x0046, 6),
    "sunspec_inverter": (3, 40000, 124),
    "sunspec_meter": (3, 40070, 107),
    "heat_meter": (3, 0, 13),
    "abb": (3, 0x4000, 32),
    "alfen": (3, 300, 78),
}


class Counts:
    def __init__(self) -> None:
        self.ok = self.failed = self.messages = 0
        self.latency: list[float] = []


async def poll_device(dev: dict[str, Any], every: float, counts: Counts) -> None:
    fc, address, count = POLL[dev["kind"]]
    unit = 1 if dev["kind"] == "alfen" else dev["unit"]
    async with AsyncModbusTcpClient(dev["host"], port=dev["port"], timeout=3, retries=0) as client:
        read = client.read_input_registers if fc == 4 else client.read_holding_registers
        while True:
            t0 = time.perf_counter()
            rr = await read(address, count=count, device_id=unit)
            counts.latency.append(time.perf_counter() - t0)
            if rr.isError():
                counts.failed += 1
            else:
                counts.ok += 1
            await asyncio.sleep(every)


async def subscribe(broker: PrivateMosquitto, counts: Counts) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("#")
        async for _ in client.messages:
            counts.messages += 1


async def wait_for_ports(path: Path, proc: asyncio.subprocess.Process) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while proc.returncode is None:
            line = await proc.stdout.readline() if proc.stdout else b""
            if line.strip() == b"ready":
                return dict(json.loads(await asyncio.to_thread(path.read_text)))
            if not line:
                break
    raise RuntimeError("simulator did not start")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    counts = Counts()
    with PrivateMosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        ports = Path(tmp) / "ports.json"
        t_start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "puhui",
            "sim",
            "run",
            "--fleet",
            str(args.fleet),
            "--factor",
            str(args.factor),
            "--mqtt",
            f"{broker.host}:{broker.port}",
            "--ports-out",
            str(ports),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            info = await wait_for_ports(ports, proc)
            startup = time.perf_counter() - t_start
            sim = psutil.Process(proc.pid)
            modbus = [d for d in info["devices"] if d["transport"] == "tcp"]
            mqtt = [d for d in info["devices"] if d["transport"] == "mqtt"]
            sim.cpu_percent(None)
            rss: list[int] = []
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(subscribe(broker, counts), name="bench-sub")]
                for i, dev in enumerate(modbus):
                    tasks.append(tg.create_task(poll_device(dev, args.poll_s, counts), name=f"poll-{i}"))
                cpu_t0 = sum(sim.cpu_times()[:2])
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < args.seconds:
                    rss.append(sim.memory_info().rss)
                    await asyncio.sleep(1.0)
                cpu = (sum(sim.cpu_times()[:2]) - cpu_t0) / (time.perf_counter() - t0) * 100
                for task in tasks:
                    task.cancel()
        finally:
            proc.send_signal(signal.SIGINT)
            await proc.communicate()
    lat = sorted(counts.latency) or [0.0]
    return {
        "fleet": str(args.fleet.relative_to(ROOT)),
        "modbus_devices": len(modbus),
        "mqtt_meters": len(mqtt),
        "factor": args.factor,
        "startup_s": round(startup, 2),
        "wall_s": args.seconds,
        "sim_cpu_percent": round(cpu, 1),
        "sim_rss_mb_max": round(max(rss) / 2**20, 1),
        "sim_rss_mb_median": round(statistics.median(rss) / 2**20, 1),
        "modbus_reads_ok": counts.ok,
        "modbus_reads_failed": counts.failed,
        "modbus_read_p50_ms": round(lat[len(lat) // 2] * 1000, 2),
        "modbus_read_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2),
        "mqtt_messages": counts.messages,
        "machine": f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=FLEET)
    parser.add_argument("--seconds", type=float, default=60.0, help="wall seconds to measure")
    parser.add_argument("--poll-s", type=float, default=10.0, help="wall seconds between polls")
    parser.add_argument("--factor", type=float, default=1.0, help="clock factor")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
