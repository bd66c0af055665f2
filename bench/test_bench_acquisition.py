"""pytest-benchmark view of one gateway poll round over 50 simulated SDM630s (Modbus TCP).

Run: .venv/bin/python -m pytest bench/test_bench_acquisition.py --benchmark-enable
(not part of `make test`: testpaths is tests/). The simulator runs in a child process;
pytest-benchmark times a plain function, so the test drives its own event loop.
"""

import asyncio
import contextlib
from typing import Any

from bench.bench_acquisition import GROUPS, gateway_sources, simulator
from drivers.modbus.source import ModbusSource

DEVICES = 50


def test_poll_round_50_devices(benchmark: Any) -> None:
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        devices, _ = loop.run_until_complete(stack.enter_async_context(simulator(DEVICES, None)))

        async def open_sources() -> list[ModbusSource]:  # pymodbus clients need a running loop
            return [await stack.enter_async_context(s) for s in gateway_sources(devices)]

        sources = loop.run_until_complete(open_sources())

        async def poll_all() -> int:
            results = await asyncio.gather(*(s.poll(GROUPS) for s in sources))
            return sum(r.ok for r in results)

        def poll_round() -> int:
            return loop.run_until_complete(poll_all())

        poll_round()  # connect
        assert benchmark(poll_round) == DEVICES
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
