"""Commissioning CJ/T 188 heat meters on a line: find them, read any data identifier.

``scan`` without addresses sends "read address" to the wildcard address AA x 7 with the
wildcard meter type AA, the only wildcard the standard gives: every meter answers it, so it
tells an address only where one meter is connected; with the addresses of the installation
list it reads each meter's metering data and reports who answers, who answers abnormally
and who stays silent (:func:`drivers.cjt188.scan.scan`). ``probe`` reads one identifier of
one meter and shows its DATA bytes and, for the metering block 90 1F, every decoded field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.cjt188.client import Target, read_data
from drivers.cjt188.config import METER_TYPES, QUANTITIES
from drivers.cjt188.frame import DI_METERING, Address, IdentifierOrder
from drivers.cjt188.heat import BLOCK_SIZE, HeatData, decode_heat_block
from drivers.cjt188.scan import ScanResult, scan
from drivers.contract import Invalid
from drivers.line.config import SerialLineConfig, TcpServerLineConfig
from drivers.line.owner import LineOwner

LineSettings = SerialLineConfig | TcpServerLineConfig


@dataclass(frozen=True, slots=True)
class MeterSettings:
    """How the meters of a line frame their requests (the site config's connection keys)."""

    meter_type: str = "heat"
    order: IdentifierOrder = "90 1F"
    preamble: int = 2

    @property
    def type_code(self) -> int:
        return METER_TYPES[self.meter_type]


async def find_meters(
    settings: LineSettings, addresses: Sequence[Address] | None, meters: MeterSettings
) -> ScanResult:
    """The meters on the line (raises :class:`~drivers.line.contract.LineUnreachable` only)."""
    async with LineOwner(settings) as line:
        return await scan(
            line, addresses, meter_type=meters.type_code, order=meters.order,
            preamble=meters.preamble, timeout_s=settings.timeout_s,
        )  # fmt: skip


@dataclass(frozen=True)
class ProbeResult:
    address: str
    di: int
    data: bytes  # after identifier and SER
    heat: HeatData | None  # the decoded block, for 90 1F


async def probe_identifier(
    settings: LineSettings, address: Address, di: int, meters: MeterSettings
) -> ProbeResult:
    """Read identifier ``di`` of the meter at ``address`` once (raises a
    :class:`~drivers.errors.DriverError` naming meter and line on failure)."""
    target = Target(address, meters.type_code, meters.order, meters.preamble)
    async with LineOwner(settings) as line:
        data = await read_data(line, target, di, ser=1, timeout_s=settings.timeout_s)
    heat = decode_heat_block(data) if di == DI_METERING and len(data) == BLOCK_SIZE else None
    return ProbeResult(str(address), di, data, heat)


def describe_heat(heat: HeatData) -> list[tuple[str, str]]:
    """(name, value with unit) lines of a decoded 90 1F block, in the block's order."""
    lines = [(q, _value(v, QUANTITIES[q].unit)) for q, v in heat.values.items()]
    when = heat.meter_time
    lines.append(("meter_time", str(when) if isinstance(when, Invalid) else _clock(when)))
    lines.append(("status", heat.status.describe()))
    return lines


def _value(value: float | Invalid, unit: str) -> str:
    if isinstance(value, Invalid):
        return str(value)
    return f"{value:.10g} {unit}".rstrip()


def _clock(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S") + " (the meter's clock)"
