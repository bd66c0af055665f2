"""Acquisition: polls per second and CPU seconds per 1,000 register reads, 200 Modbus TCP meters.

A generated fleet of ``--devices`` simulated SDM630 meters (one TCP port each) runs as
``puhui sim run`` in a child process, pinned to its own core with ``taskset`` when there
are two cores or more; the measured side runs in this process on another core, so CPU
time is attributed correctly. Three readers poll the same block the SDM630 profile reads
every cycle (input registers 0x0000-0x004B, 76 registers, one request):

- **gateway**: ``drivers.modbus_tcp.driver.tcp_source`` sources (pymodbus async, decoding
  to samples), all devices polled concurrently as the gateway's poller does, ``--rounds``
  rounds back to back; CPU = ``time.process_time()`` of this process.
- **mbpoll, one shot**: Debian's ``mbpoll -1`` once per device (a process per poll, as a
  shell script would); CPU = ``getrusage(RUSAGE_CHILDREN)``. Process start-up dominates.
- **mbpoll, polling**: one long-running ``mbpoll -l 11`` per device for a subset of
  devices, stopped with SIGINT after a few seconds; its own statistics line gives the
  frames; CPU per read without the start-up cost. This is the floor.

A "register read" is one Modbus read request (here 76 registers). Run:
``.venv/bin/python -m bench.bench_acquisition [--devices 200] [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import Figure
from common.clock import SystemClock
from drivers.modbus.profiles import load_profiles
from drivers.modbus.source import ModbusSource, ReadPolicy
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.modbus_tcp.driver import tcp_source

DEVICES = 200
ROUNDS = 20
GROUPS = ("fast", "slow")  # the steady-state cycle (identity is read once, in the warm-up)
MBPOLL_POLLING_DEVICES = 20
MBPOLL_POLLING_S = 5.0
MBPOLL_CONCURRENCY = 4
MBPOLL = shutil.which("mbpoll") or "/usr/bin/mbpoll"
SIM_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Device:
    name: str
    port: int
    unit: int


@dataclass(frozen=True)
class Side:
    """What one reader did: polls, read requests, registers, wall and CPU seconds."""

    name: str
    polls: int
    requests: int
    registers: int
    wall_s: float
    cpu_s: float
    failed: int = 0

    @property
    def polls_per_s(self) -> float:
        return self.polls / self.wall_s

    @property
    def registers_per_s(self) -> float:
        return self.registers / self.wall_s

    @property
    def cpu_per_1000_reads(self) -> float:
        return 1000 * self.cpu_s / self.requests


def fleet_yaml(devices: int) -> str:
    return (
        "name: acquisition-bench\n"
        'clock: {epoch: "2025-01-15T00:00:00+08:00", factor: 1}\n'
        "control: null\n"
        "sites:\n"
        "  - name: bench\n"
        "    devices:\n"
        f'      - {{kind: sdm630, name: "sdm-{{i:03d}}", count: {devices}, seed: 1000,'
        " physics: {model: heating}}\n"
    )


def _cores() -> tuple[set[int], set[int]] | None:
    """(gateway cores, simulator cores), or None when there is one core or no taskset."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return None
    return {cores[0]}, set(cores[1:])


@contextlib.contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Run this process (and the children it starts) on ``cores`` meanwhile."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.asynccontextmanager
async def simulator(devices: int, cores: set[int] | None) -> Any:
    """``puhui sim run`` in a child process; yields (its devices, its psutil.Process)."""
    with tempfile.TemporaryDirectory(prefix="puhui-bench-acq-") as tmp:
        fleet, ports = Path(tmp) / "fleet.yaml", Path(tmp) / "ports.json"
        fleet.write_text(fleet_yaml(devices))
        pin = ["taskset", "-c", ",".join(map(str, sorted(cores)))] if cores else []
        cmd = [
            *pin,
            sys.executable,
            "-m",
            "puhui",
            "sim",
            "run",
            "--fleet",
            str(fleet),
            "--ports-out",
            str(ports),
        ]
        log = (Path(tmp) / "sim.log").open("wb")  # its stderr, kept out of the report
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=log)
        try:
            await _wait_ready(proc, Path(tmp) / "sim.log")
            info = json.loads(ports.read_text())
            found = [
                Device(d["name"], d["port"], d["unit"]) for d in info["devices"] if d["transport"] == "tcp"
            ]
            yield found, psutil.Process(proc.pid)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # taskset execs the simulator: same pid
            await proc.communicate()
            log.close()


async def _wait_ready(proc: asyncio.subprocess.Process, log: Path) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(SIM_START_TIMEOUT_S):
        while line := await proc.stdout.readline():
            if line.strip() == b"ready":
                return
    tail = log.read_text(errors="replace")[-2000:]  # noqa: ASYNC240 - it has exited
    raise RuntimeError(f"simulator exited before it was ready (code {proc.returncode}):\n{tail}")


# -- gateway side ---------------------------------------------------------------------


def gateway_sources(devices: list[Device]) -> list[ModbusSource]:
    profile = load_profiles()["sdm630"]
    clock = SystemClock()
    policy = ReadPolicy(timeout_s=10, retries=0)
    return [
        tcp_source(d.name, ModbusTcpConnection(host="127.0.0.1", port=d.port), d.unit, profile.fields, clock,
                   max_gap=profile.max_gap, policy=policy)
        for d in devices
    ]  # fmt: skip


async def gateway_side(devices: list[Device], rounds: int) -> Side:
    sources = gateway_sources(devices)
    async with contextlib.AsyncExitStack() as stack:
        for s in sources:
            await stack.enter_async_context(s)
        warm = await asyncio.gather(*(s.poll() for s in sources))  # connects, reads identity too
        if not all(r.ok for r in warm):
            raise RuntimeError(f"warm-up failed: {next(r.error for r in warm if not r.ok)}")
        requests_per_poll = [len(s.plan(GROUPS)) for s in sources]
        registers_per_poll = [sum(r.count for r in s.plan(GROUPS)) for s in sources]
        polls = failed = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            results = await asyncio.gather(*(s.poll(GROUPS) for s in sources))
            polls += len(results)
            failed += sum(not r.ok for r in results)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Side("gateway (pymodbus async)", polls, rounds * sum(requests_per_poll),
                rounds * sum(registers_per_poll), wall, cpu, failed)  # fmt: skip


# -- mbpoll ------------------------------------------------------------------------------


def _mbpoll_args(device: Device, address: int, count: int) -> list[str]:
    return [MBPOLL, "-m", "tcp", "-a", str(device.unit), "-0", "-r", str(address), "-c", str(count),
            "-t", "3", "-o", "5", "-p", str(device.port), "127.0.0.1"]  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def mbpoll_one_shot(devices: list[Device], address: int, count: int) -> Side:
    """One ``mbpoll -1`` process per device poll, ``MBPOLL_CONCURRENCY`` at a time."""
    limit = asyncio.Semaphore(MBPOLL_CONCURRENCY)
    failed = 0

    async def one(device: Device) -> None:
        nonlocal failed
        async with limit:
            proc = await asyncio.create_subprocess_exec(
                *_mbpoll_args(device, address, count), "-1",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await proc.communicate()
            values = len(re.findall(rb"^\[\d+\]:", out, re.M))
            failed += proc.returncode != 0 or values != count

    cpu0, t0 = _children_cpu(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for device in devices:
            group.create_task(one(device), name=f"mbpoll:{device.name}")
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    return Side("mbpoll -1 (a process per poll)", len(devices), len(devices), len(devices) * count, wall, cpu,
                failed)  # fmt: skip


async def mbpoll_polling(devices: list[Device], address: int, count: int, seconds: float) -> Side:
    """A long-running ``mbpoll -l 11`` per device, stopped by SIGINT; frames from its stats."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            *_mbpoll_args(d, address, count), "-l", "11",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        for d in devices
    ]  # fmt: skip
    readers = [asyncio.create_task(p.communicate(), name=f"mbpoll-out-{i}") for i, p in enumerate(procs)]
    await asyncio.sleep(seconds)
    for p in procs:
        p.send_signal(signal.SIGINT)
    outputs = [out for out, _ in await asyncio.gather(*readers)]
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    frames = errors = 0
    for out in outputs:
        stats = re.search(rb"(\d+) frames transmitted, (\d+) received, (\d+) errors", out)
        if stats is None:
            raise RuntimeError("mbpoll printed no statistics: " + out[-300:].decode(errors="replace"))
        frames += int(stats[2])
        errors += int(stats[3])
    name = f"mbpoll -l 11 (polling, {len(devices)} processes)"
    return Side(name, frames, frames, frames * count, wall, cpu, errors)


# -- the run ----------------------------------------------------------------------------------


async def measure(devices: int = DEVICES, rounds: int = ROUNDS) -> tuple[list[Side], dict[str, Any]]:
    cores = _cores()
    gateway_cores, sim_cores = cores if cores else (None, None)
    notes: dict[str, Any] = {
        "pinning": f"gateway {gateway_cores}, simulator {sim_cores}" if cores else "none"
    }
    async with simulator(devices, sim_cores) as (found, sim):
        notes["devices"] = len(found)
        with pinned(gateway_cores):
            sim_cpu0 = sum(sim.cpu_times()[:2])
            gateway = await gateway_side(found, rounds)
            notes["sim_cpu_during_gateway_s"] = sum(sim.cpu_times()[:2]) - sim_cpu0
            sides = [gateway]
            plan = gateway_sources(found[:1])[0].plan(GROUPS)
            if len(plan) != 1:
                raise RuntimeError(f"expected one request per SDM630 cycle, got {plan}")
            address, count = plan[0].address, plan[0].count
            if not os.path.isfile(MBPOLL):  # noqa: ASYNC240 - one stat, before measuring
                notes["mbpoll"] = f"not installed ({MBPOLL}): comparison skipped (apt-get install mbpoll)"
                return sides, notes
            sides.append(await mbpoll_one_shot(found, address, count))
            subset = found[:MBPOLL_POLLING_DEVICES]
            sides.append(await mbpoll_polling(subset, address, count, MBPOLL_POLLING_S))
    return sides, notes


def figures(sides: list[Side]) -> list[Figure]:
    gateway, peers = sides[0], sides[1:]
    out = [
        Figure("acquisition: gateway polls/s (200 SDM630, Modbus TCP)", gateway.polls_per_s, "polls/s"),
        Figure("acquisition: gateway registers/s", gateway.registers_per_s, "registers/s"),
        Figure("acquisition: gateway CPU per 1,000 reads", gateway.cpu_per_1000_reads * 1000, "ms"),
    ]
    for peer in peers:
        name = f"acquisition: gateway CPU per 1,000 reads vs {peer.name}"
        mine, theirs = gateway.cpu_per_1000_reads * 1000, peer.cpu_per_1000_reads * 1000
        out.append(Figure(name, mine, "ms", peer.name, theirs))
    return out


def run() -> list[Figure]:
    """``make bench`` entry point."""
    sides, _ = asyncio.run(measure())
    return figures(sides)


def report(sides: list[Side], notes: dict[str, Any]) -> str:
    columns = ("polls", 7), ("polls/s", 9), ("registers/s", 12), ("CPU s", 7), ("CPU s/1000 reads", 17)
    rows = [f"{'reader':<42} " + " ".join(f"{c:>{w}}" for c, w in columns) + " failed"]
    for s in sides:
        rows.append(f"{s.name:<42} {s.polls:>7} {s.polls_per_s:>9.1f} {s.registers_per_s:>12.0f} "
                    f"{s.cpu_s:>7.2f} {s.cpu_per_1000_reads:>17.3f} {s.failed}")  # fmt: skip
    for peer in sides[1:]:
        ratio = sides[0].cpu_per_1000_reads / peer.cpu_per_1000_reads
        rows.append(f"CPU per read, gateway / {peer.name}: {ratio:.2f}")
    rows += [f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in notes.items()]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="gateway polls per device")
    args = parser.parse_args()
    sides, notes = asyncio.run(measure(args.devices, args.rounds))
    print(report(sides, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
