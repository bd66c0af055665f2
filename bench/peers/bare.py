"""The floor: a bare pymodbus loop. Every ``period`` seconds, one request per meter for the
block holding the 13 SDM630 float32 values (all meters concurrently, one connection each),
decoded with ``struct``; nothing else (no samples, no intervals, no output).

Run by the harness as ``python -m bench.peers.bare SPEC.json``; SPEC names the meters, the
fields, the period, a counts file (rewritten after each cycle: values decoded so far) and a
values file (written on SIGTERM: the last values of every meter, for the harness's check).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from bench.peers.pure import Field, Meter, decode_block, span


async def loop(spec: dict[str, Any]) -> None:
    meters = [Meter(**m) for m in spec["meters"]]
    fields = [Field(**f) for f in spec["fields"]]
    period = float(spec["period_s"])
    counts, values_file = Path(spec["counts_file"]), Path(spec["values_file"])
    start, count = span(fields)
    clients = [AsyncModbusTcpClient("127.0.0.1", port=m.port, timeout=5, retries=0) for m in meters]
    for c in clients:
        if not await c.connect():
            raise RuntimeError(f"cannot connect to 127.0.0.1:{c.comm_params.port}")
    last: dict[str, dict[str, float]] = {}
    total = 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def read(meter: Meter, client: AsyncModbusTcpClient) -> int:
        reply = await client.read_input_registers(start, count=count, device_id=meter.unit)
        if reply.isError():
            raise RuntimeError(f"{meter.name}: {reply}")
        last[meter.name] = decode_block(reply.registers, fields, start)
        return len(fields)

    loop_ = asyncio.get_running_loop()
    slot = loop_.time()
    while not stop.is_set():
        done = await asyncio.gather(*(read(m, c) for m, c in zip(meters, clients, strict=True)))
        total += sum(done)
        tmp = counts.with_suffix(".tmp")
        tmp.write_text(str(total))
        os.replace(tmp, counts)
        slot += period
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, slot - loop_.time()))
    for c in clients:
        c.close()
    values_file.write_text(json.dumps(last))  # noqa: ASYNC240 - once, at the end


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(loop(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
