"""The Modbus driver's CPU per 1,000 reads against a bare pymodbus loop, same fleet, same run.

Run: ``.venv/bin/python -m bench.bench_driver [--devices 200] [--window 20] [--period 1] [--pairs 2]``.

``--devices`` simulated SDM630 meters (``puhui sim run``, one TCP port each, in a child
process pinned to the other cores, as in :mod:`bench.bench_acquisition`). This process,
pinned to the first core, takes turns between two readers of the same block (input
registers 0x0000-0x004B, 76 registers, one request per meter per cycle), every meter read
concurrently once per ``--period`` wall seconds for ``--window`` seconds each:

- **bare**: the floor of bench/peers/bare.py: one ``AsyncModbusTcpClient`` per meter, one
  ``read_input_registers`` per cycle, the 13 float32 values decoded with ``struct``
  (:func:`bench.peers.pure.decode_block`), nothing else.
- **driver**: puhui's driver as the gateway's poller drives it: ``tcp_source`` sources of
  the SDM630 profile (:func:`bench.bench_acquisition.gateway_sources`), ``poll(groups,
  slot=...)``: policy, breaker, plan, decode, checks, ``Sample`` objects, ``PollResult``.

Garbage collection as the gateway sets it once polling (``gateway/cli.py``: ``gc.freeze()``,
threshold 10,000 allocations), for both readers; ``--gc default`` leaves Python's default
(700), which charges an allocating reader more.

CPU is ``time.process_time()`` of this process over each window (the readers never run at
once); the two readers alternate ``--pairs`` times (bare, driver, bare, driver, ...) so a
change in the machine's load falls on both. The figure is the driver's CPU per 1,000 reads
over the bare loop's (the ratio of the totals, and of each pair, are printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient

from bench.bench_acquisition import GROUPS, Device, _cores, gateway_sources, pinned, simulator
from bench.common import Figure
from bench.peers.pure import Field, decode_block, span
from drivers.modbus.profiles import load_profiles

DEVICES = 200
WINDOW_S = 20.0
PERIOD_S = 1.0
PAIRS = 2


@dataclass(frozen=True)
class Window:
    """One reader's window: reads done, CPU and wall seconds."""

    reader: str
    reads: int
    cpu_s: float
    wall_s: float
    late_cycles: int  # cycles that took longer than the period (the reader fell behind)

    @property
    def cpu_per_1000_reads_ms(self) -> float:
        return 1e6 * self.cpu_s / self.reads


def sdm630_fields() -> list[Field]:
    """The profile's float32 fields of the cycle (what the bare loop decodes)."""
    profile = load_profiles()["sdm630"]
    return [Field(f.name, f.address) for f in profile.fields if f.poll_group in GROUPS]


Cycle = Callable[[], Awaitable[int]]


async def paced(name: str, cycle: Cycle, window_s: float, period_s: float) -> Window:
    """Run ``cycle`` (which returns the reads it did) once per period for ``window_s``."""
    await cycle()  # warm: connections open, caches filled
    cpu0, t0 = time.process_time(), time.monotonic()
    reads = late = 0
    slot = t0
    while time.monotonic() - t0 < window_s:
        reads += await cycle()
        slot += period_s
        now = time.monotonic()
        if now > slot:
            late += 1
            slot = now
        await asyncio.sleep(slot - now)
    return Window(name, reads, time.process_time() - cpu0, time.monotonic() - t0, late)


@contextlib.asynccontextmanager
async def bare_reader(devices: list[Device]) -> AsyncIterator[Cycle]:
    fields = sdm630_fields()
    start, count = span(fields)
    clients = [AsyncModbusTcpClient("127.0.0.1", port=d.port, timeout=5, retries=0) for d in devices]
    for c in clients:
        if not await c.connect():
            raise RuntimeError(f"cannot connect to 127.0.0.1:{c.comm_params.port}")

    async def read(device: Device, client: AsyncModbusTcpClient) -> int:
        reply = await client.read_input_registers(start, count=count, device_id=device.unit)
        if reply.isError():
            raise RuntimeError(f"{device.name}: {reply}")
        decode_block(reply.registers, fields, start)
        return 1

    async def cycle() -> int:
        return sum(await asyncio.gather(*(read(d, c) for d, c in zip(devices, clients, strict=True))))

    try:
        yield cycle
    finally:
        for c in clients:
            c.close()


@contextlib.asynccontextmanager
async def driver_reader(devices: list[Device]) -> AsyncIterator[Cycle]:
    sources = gateway_sources(devices)
    async with contextlib.AsyncExitStack() as stack:
        for s in sources:
            await stack.enter_async_context(s)
        warm = await asyncio.gather(*(s.poll() for s in sources))  # connect, identity
        if not all(r.ok for r in warm):
            raise RuntimeError(f"warm-up failed: {next(r.error for r in warm if not r.ok)}")
        groups = sorted(GROUPS)
        per_cycle = sum(len(s.plan(groups)) for s in sources)

        async def cycle() -> int:
            slot = time.time()
            results = await asyncio.gather(*(s.poll(groups, slot=slot) for s in sources))
            if not all(r.ok for r in results):
                raise RuntimeError(f"a read failed: {next(r.error for r in results if not r.ok)}")
            return per_cycle

        yield cycle


READERS = {"bare": bare_reader, "driver": driver_reader}


GATEWAY_GC = (10_000, 10, 10)  # gateway/cli.py, once polling


async def measure(
    devices: int, window_s: float, period_s: float, pairs: int, gc_mode: str = "gateway"
) -> tuple[list[Window], str]:
    if gc_mode == "gateway":
        gc.freeze()
        gc.set_threshold(*GATEWAY_GC)
    cores = _cores()
    mine, sim_cores = cores if cores else (None, None)
    async with simulator(devices, sim_cores) as (found, _sim):
        with pinned(mine):
            windows = []
            for _ in range(pairs):
                for name, reader in READERS.items():
                    async with reader(found) as cycle:
                        windows.append(await paced(name, cycle, window_s, period_s))
    pinning = f"readers on cores {mine}, simulator on {sim_cores}" if cores else "none"
    return windows, f"{pinning}; gc {gc_mode} (threshold {gc.get_threshold()[0]})"


def totals(windows: list[Window], reader: str) -> Window:
    mine = [w for w in windows if w.reader == reader]
    return Window(reader, sum(w.reads for w in mine), sum(w.cpu_s for w in mine),
                  sum(w.wall_s for w in mine), sum(w.late_cycles for w in mine))  # fmt: skip


def figures(windows: list[Window], devices: int) -> list[Figure]:
    bare, driver = totals(windows, "bare"), totals(windows, "driver")
    name = f"Modbus driver CPU per 1,000 reads, {devices} SDM630 (vs a bare pymodbus loop)"
    floor = bare.cpu_per_1000_reads_ms
    return [Figure(name, driver.cpu_per_1000_reads_ms, "ms", "bare pymodbus loop", floor)]


def report(windows: list[Window], pinning: str) -> str:
    rows = [f"{'reader':<8} {'reads':>7} {'CPU s':>7} {'wall s':>7} {'ms/1000 reads':>14} late cycles"]
    for w in windows:
        rows.append(f"{w.reader:<8} {w.reads:>7} {w.cpu_s:>7.2f} {w.wall_s:>7.1f} "
                    f"{w.cpu_per_1000_reads_ms:>14.1f} {w.late_cycles}")  # fmt: skip
    bare, driver = totals(windows, "bare"), totals(windows, "driver")
    pair_ratios = [
        d.cpu_per_1000_reads_ms / b.cpu_per_1000_reads_ms
        for b, d in zip(windows[0::2], windows[1::2], strict=True)
    ]
    rows.append(
        f"driver / bare CPU per read: {driver.cpu_per_1000_reads_ms / bare.cpu_per_1000_reads_ms:.2f} "
        f"(totals), per pair {', '.join(f'{r:.2f}' for r in pair_ratios)}"
    )
    rows.append(f"setup: {pinning}")
    return "\n".join(rows)


def run() -> list[Figure]:
    """``make bench``-style entry point (not in its list)."""
    windows, _ = asyncio.run(measure(DEVICES, WINDOW_S, PERIOD_S, PAIRS))
    return figures(windows, DEVICES)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--window", type=float, default=WINDOW_S, help="wall seconds per reader window")
    parser.add_argument("--period", type=float, default=PERIOD_S, help="seconds between cycles (0: no pause)")
    parser.add_argument("--pairs", type=int, default=PAIRS, help="bare/driver windows, alternating")
    parser.add_argument("--gc", choices=["gateway", "default"], default="gateway", help="garbage collection")
    args = parser.parse_args()
    windows, pinning = asyncio.run(measure(args.devices, args.window, args.period, args.pairs, args.gc))
    print(report(windows, pinning))
    return 0


if __name__ == "__main__":
    sys.exit(main())
