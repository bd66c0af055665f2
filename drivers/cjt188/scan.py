"""Find the CJ/T 188 meters on a line, for ``puhui gateway scan``.

Two ways, as on site:

- no address list: "read address" to the wildcard address. Every meter answers it, so it
  only tells an address when exactly one meter is connected (commissioning meter by
  meter); answers of several meters collide and the result says so;
- an address list (the installer's sheet, or the meters' nameplates): read the metering
  data of each; a meter that answers, even "abnormal", is there; one that stays silent
  within the timeout is reported silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.cjt188.client import FoundMeter, Target, read_address, read_heat
from drivers.cjt188.errors import AbnormalAnswer, Cjt188Error
from drivers.cjt188.frame import ANY_TYPE, Address, IdentifierOrder
from drivers.line.contract import Line, LineTimeout


@dataclass(frozen=True, slots=True)
class ScanResult:
    found: tuple[FoundMeter, ...]
    silent: tuple[Address, ...] = ()
    problems: tuple[str, ...] = ()


async def scan(
    line: Line,
    addresses: Iterable[Address] | None = None,
    *,
    meter_type: int = 0x20,
    order: IdentifierOrder = "90 1F",
    preamble: int = 2,
    timeout_s: float = 2.0,
) -> ScanResult:
    """The meters found on ``line`` (see the module docstring). Raises only ``LineUnreachable``."""
    if addresses is None:
        return await _broadcast(line, order=order, preamble=preamble, timeout_s=timeout_s)
    found: list[FoundMeter] = []
    silent: list[Address] = []
    problems: list[str] = []
    for ser, address in enumerate(addresses):
        target = Target(address, meter_type, order, preamble)
        try:
            await read_heat(line, target, ser=ser, timeout_s=timeout_s)
        except LineTimeout:
            silent.append(address)
            continue
        except AbnormalAnswer as exc:
            problems.append(f"{address}: answers, but {exc}")
        except Cjt188Error as exc:
            problems.append(f"{address}: {exc}")
            continue
        found.append(FoundMeter(address, meter_type))
    return ScanResult(tuple(found), tuple(silent), tuple(problems))


async def _broadcast(line: Line, *, order: IdentifierOrder, preamble: int, timeout_s: float) -> ScanResult:
    try:
        meter = await read_address(
            line, meter_type=ANY_TYPE, order=order, preamble=preamble, timeout_s=timeout_s
        )
    except LineTimeout:
        return ScanResult((), problems=(f"no CJ/T 188 meter answered read-address on line {line.id}",))
    except Cjt188Error as exc:
        return ScanResult((), problems=(
            f"read-address on line {line.id} got no clean answer ({exc}): more than one meter is "
            "probably connected; scan with the addresses from the installation list",
        ))  # fmt: skip
    return ScanResult((meter,))
