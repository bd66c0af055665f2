"""Commissioning DL/T 645 meters on a line: find the address, read any data identifier.

``scan`` sends "read address" (0x13) to the wildcard AAAAAAAAAAAA: every meter on the line
answers it, so it finds the address only where one meter is connected (the installer
connects them one at a time, or reads the nameplate); answers of several meters collide
into a frame error, which is reported as such. With the addresses of the installation
list (:func:`scan_addresses`) it reads forward active energy (00010000) of each and
reports who answers, who answers with an error and who stays silent. ``probe`` reads one
identifier of a known address and shows the raw value bytes and, for the identifiers the
driver knows, the decoded values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.contract import Invalid
from drivers.dlt645.errors import Dlt645Error, ErrorAnswer
from drivers.dlt645.frame import decode, read_address_request, read_address_value, read_frame
from drivers.dlt645.identifiers import ENERGY, ITEMS, Value
from drivers.dlt645.source import read_data
from drivers.line.config import SerialLineConfig, TcpServerLineConfig
from drivers.line.contract import LineTimeout
from drivers.line.owner import LineOwner

SCAN_DI = 0x00010000  # forward active total energy: every meter of a metering chain has it

LineSettings = SerialLineConfig | TcpServerLineConfig


async def find_address(settings: LineSettings) -> str:
    """The address of the one meter on the line (raises a :class:`~drivers.errors.DriverError`)."""
    async with LineOwner(settings) as line:
        raw = await line.exchange(
            read_address_request(),
            read_frame,
            timeout_s=settings.timeout_s,
            label="read address (AAAAAAAAAAAA)",
        )
    return read_address_value(decode(raw))


@dataclass
class AddressScan:
    """Which listed meters answered (with their forward energy), and which did not."""

    found: dict[str, Value] = field(default_factory=dict)
    silent: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def scan_addresses(settings: LineSettings, addresses: Sequence[str]) -> AddressScan:
    """Read 00010000 of each address once (raises only ``LineUnreachable``)."""
    result = AddressScan()
    async with LineOwner(settings) as line:
        for address in addresses:
            label = f"meter {address} DI {SCAN_DI:08X}"
            try:
                raw = await read_data(line, address, SCAN_DI, timeout_s=settings.timeout_s, label=label)
            except LineTimeout:
                result.silent.append(address)
                continue
            except ErrorAnswer as exc:
                result.problems.append(f"{address}: answers, but {exc}")
                result.found[address] = Invalid("not_implemented", "error answer")
                continue
            except Dlt645Error as exc:
                result.problems.append(f"{address}: {exc}")
                continue
            result.found[address] = ENERGY.decode(raw)
    return result


@dataclass(frozen=True)
class ProbeResult:
    address: str
    di: int
    raw: bytes  # the value bytes, after the identifier, 0x33 removed
    decoded: dict[str, Value]  # by quantity, for identifiers the driver knows


async def probe_identifier(settings: LineSettings, address: str, di: int) -> ProbeResult:
    """Read identifier ``di`` of the meter at ``address`` once."""
    async with LineOwner(settings) as line:
        raw = await read_data(
            line, address, di, timeout_s=settings.timeout_s, label=f"meter {address} DI {di:08X}"
        )
    decoded: dict[str, Value] = {}
    for item in ITEMS.values():
        if item.dis == (di,):
            decoded |= item.decode([raw])
    return ProbeResult(address, di, raw, decoded)


def describe_value(value: Value) -> str:
    return str(value) if isinstance(value, Invalid) else f"{value:g}"
