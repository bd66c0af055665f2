"""A virtual null-modem cable: two pseudo-terminals bridged by the event loop.

``async with pty_pair() as (a, b):`` gives two device paths; whatever is written to one
comes out of the other, byte for byte (both ends raw, no echo, no line discipline).
Serve Modbus RTU on ``a`` and point a serial client (pymodbus, mbpoll) at ``b``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator


def _open_raw_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def _pump(src: int, dst: int) -> None:
    try:
        data = os.read(src, 4096)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:  # EIO: transient when an end is being reopened
        return
    with contextlib.suppress(BlockingIOError):
        os.write(dst, data)


@contextlib.asynccontextmanager
async def pty_pair() -> AsyncIterator[tuple[str, str]]:
    """Yield two pseudo-terminal paths connected to each other."""
    loop = asyncio.get_running_loop()
    m1, s1, p1 = _open_raw_pty()
    m2, s2, p2 = _open_raw_pty()
    # Our own slave fds stay open so the masters never see EIO when a user closes its end.
    loop.add_reader(m1, _pump, m1, m2)
    loop.add_reader(m2, _pump, m2, m1)
    try:
        yield p1, p2
    finally:
        loop.remove_reader(m1)
        loop.remove_reader(m2)
        for fd in (m1, s1, m2, s2):
            os.close(fd)
