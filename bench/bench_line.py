"""One simulated 9600-baud RS-485 line: reads per second and CPU per 1,000 reads, DL/T 645 and
Modbus RTU, against the line's own limit (bytes on the wire / baud rate).

Eight simulated meters hang on one :class:`firmware_sim.line.SimLine` paced at 9600 baud
(11 bits a byte: an answer leaves only after the request and the answer would have taken
on the wire), behind a simulated TCP transparent serial server. The gateway side reads
through one :class:`drivers.line.owner.LineOwner` with a 5 ms inter-frame delay:

- **DL/T 645**: ``read_data`` of 00 01 00 00 (forward active energy), round robin;
- **Modbus RTU**: FC 4, 2 registers (0x0048, an SDM120's import energy), round robin.

The floor is the wire time of request + answer + the inter-frame delay. CPU is this
process's ``time.process_time()``, and the simulator runs in this process too, so it is an
upper bound of the gateway's share. Run: ``.venv/bin/python -m bench.bench_line [--reads 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from common.clock import ManualClock
from drivers.dlt645.frame import encode, read_data_request
from drivers.dlt645.source import read_data
from drivers.line.config import TcpServerLineConfig
from drivers.line.owner import LineOwner
from drivers.modbus.plan import ReadRequest
from drivers.modbus_rtu.framing import LineRegisterReader, read_request
from firmware_sim.build import build_device
from firmware_sim.config import expand
from firmware_sim.dlt645_meter import Dlt645Responder
from firmware_sim.line import BITS_PER_BYTE, SimLine, serve_tcp
from firmware_sim.rtu_responder import RtuResponder
from tests.sim.helpers import fleet_config

BAUD = 9600
DELAY_MS = 5.0
METERS = 8


async def _run(
    sim: SimLine, reads: int, one: Callable[[LineOwner, int], Awaitable[object]]
) -> tuple[float, float]:
    async with serve_tcp(sim) as server:
        config = TcpServerLineConfig(
            id="bench", kind="tcp_server", host=server.host, port=server.port, baudrate=BAUD,
            parity="E", timeout_s=1.0, inter_frame_delay_ms=DELAY_MS,
        )  # fmt: skip
        async with LineOwner(config) as owner:
            await one(owner, 0)  # connect
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for i in range(reads):
                await one(owner, i % METERS)
            return time.perf_counter() - wall0, time.process_time() - cpu0


def _floor(request: int, answer: int) -> float:
    """Reads per second the line allows: wire time of both frames plus the delay."""
    return 1.0 / ((request + answer) * BITS_PER_BYTE / BAUD + DELAY_MS / 1000.0)


async def main(reads: int) -> None:
    clock = ManualClock(1_736_899_200.0)
    devices = [
        {"kind": "sdm120", "name": f"m{u}", "unit": u, "physics": {"model": "load"}} for u in range(1, 9)
    ]
    cfg = fleet_config(*devices)
    built = [build_device(s, cfg, clock.now()) for s in expand(cfg)]

    dlt = SimLine("dlt645", clock, baudrate=BAUD)
    for n, dev in enumerate(built, 1):
        dlt.add(Dlt645Responder(dev, f"{n:012d}"))

    async def dlt_read(owner: LineOwner, i: int) -> object:
        return await read_data(owner, f"{i + 1:012d}", 0x00010000, timeout_s=1.0, label="bench")

    rtu = SimLine("rtu", clock, baudrate=BAUD)
    for dev in built:
        rtu.add(RtuResponder(dev))

    async def rtu_read(owner: LineOwner, i: int) -> object:
        return await LineRegisterReader(owner, timeout_s=1.0).read(ReadRequest(i + 1, 4, 0x0048, 2, ()))

    dlt_sizes = (
        len(read_data_request("000000000001", 0x00010000)),
        len(encode("000000000001", 0x91, bytes(8))),
    )
    rtu_sizes = (len(read_request(ReadRequest(1, 4, 0x48, 2, ()))), 5 + 4)
    print(
        f"one 9600-baud line (11 bits a byte), {METERS} meters, {DELAY_MS:g} ms between frames, {reads} reads"
    )
    print("| protocol | bytes req+answer | reads/s | line limit reads/s | share | CPU s / 1,000 reads |")
    print("|---|---|---|---|---|---|")
    for name, sim, one, sizes in (
        ("DL/T 645", dlt, dlt_read, dlt_sizes),
        ("Modbus RTU", rtu, rtu_read, rtu_sizes),
    ):
        wall, cpu = await _run(sim, reads, one)
        rate, floor = reads / wall, _floor(*sizes)
        print(f"| {name} | {sizes[0]}+{sizes[1]} | {rate:.1f} | {floor:.1f} | {rate / floor:.0%} | "
              f"{cpu / reads * 1000:.3f} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=300)
    asyncio.run(main(parser.parse_args().reads))
