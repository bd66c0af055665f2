"""Helpers for firmware_sim tests: small fleets built in code, blocking clients, mbpoll."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from firmware_sim import FleetConfig, parse_fleet

T = TypeVar("T")
EPOCH = "2025-01-15T00:00:00+00:00"


def fleet_config(*devices: dict[str, Any], **top: Any) -> FleetConfig:
    """A one-site fleet of ``devices`` (fleet-file dicts), validated."""
    data: dict[str, Any] = {
        "clock": {"epoch": EPOCH, "factor": 1},
        "sites": [{"name": "site", "devices": list(devices)}],
        **top,
    }
    return parse_fleet(data, "test-fleet")


async def run_blocking(fn: Callable[[], T]) -> T:
    """Run a blocking client (pysunspec2) in a thread that is gone when this returns."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="blocking-client") as pool:
        return await loop.run_in_executor(pool, fn)


async def mbpoll(*args: str) -> dict[int, str]:
    """Run Debian's mbpoll once; return {reference: printed value}."""
    proc = await asyncio.create_subprocess_exec(
        "mbpoll", *args, "-1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(15):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode() + out.decode()
    return {int(m[1]): m[2] for m in re.finditer(r"^\[(\d+)\]:\s+(\S+)", out.decode(), re.M)}
