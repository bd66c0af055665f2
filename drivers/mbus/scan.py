"""Find the M-Bus meters on a line by primary address, for ``puhui gateway mbus scan``.

Each address in turn is woken (SND_NKE) and read (REQ_UD2): a meter that answers tells its
identification number, manufacturer and medium; one whose answer is garbled is there all
the same (two meters sharing an address collide); silence within the timeout is nobody.
A meter with no primary address set (0 from the factory, or several at 0) is read by its
secondary address instead (``probe --secondary``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.line.contract import Line, LineTimeout
from drivers.mbus.client import Target, read_telegram
from drivers.mbus.errors import MbusError
from drivers.mbus.records import Header


@dataclass(frozen=True, slots=True)
class ScanResult:
    found: tuple[tuple[int, Header], ...]  # primary address, the answer's header
    silent: int  # addresses nobody answered
    problems: tuple[str, ...] = ()  # addresses that answered with a frame that cannot be used


async def scan(line: Line, addresses: Iterable[int], *, timeout_s: float = 0.5) -> ScanResult:
    """The meters at ``addresses`` on ``line``. Raises only ``LineUnreachable``."""
    found: list[tuple[int, Header]] = []
    problems: list[str] = []
    silent = 0
    for address in addresses:
        try:
            telegram = await read_telegram(line, Target(address), timeout_s=timeout_s)
        except LineTimeout:
            silent += 1
            continue
        except MbusError as exc:
            problems.append(f"address {address} answers, but {exc} (two meters with this address?)")
            continue
        found.append((address, telegram.header))
    return ScanResult(tuple(found), silent, tuple(problems))
