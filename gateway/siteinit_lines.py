"""``puhui gateway init`` on a shared line: find the DL/T 645 and CJ/T 188 meters, render them.

The scans are the line commands' (``puhui gateway dlt645|cjt188 scan``): read address to
the wildcard when no installation list is given (one meter per protocol on the line), or
one read of each listed address. A CJ/T 188 heat meter that answers is read once more for
its metering block, whose heat-energy unit code tells the ``energy_unit``. What answered
becomes a ``lines:`` entry and one meter per address, with the driver's default items and
``TODO`` where only the installer knows; a listed meter that stayed silent is written
commented out, so the installer sees it and can enable it once it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from drivers.cjt188.client import Target, read_address, read_data
from drivers.cjt188.config import DEFAULT_QUANTITIES
from drivers.cjt188.errors import Cjt188Error
from drivers.cjt188.frame import ANY_TYPE, DI_METERING, HEAT_METER, Address
from drivers.cjt188.heat import BLOCK_SIZE, UNIT_FIELDS, decode_heat_block
from drivers.cjt188.scan import scan as cjt188_scan
from drivers.cjt188.units import unit_of
from drivers.contract import Invalid
from drivers.dlt645.errors import Dlt645Error
from drivers.dlt645.identifiers import DEFAULT_READ
from drivers.line.config import SerialLineConfig, TcpServerLineConfig, describe_line
from drivers.line.contract import LineTimeout, LineUnreachable
from drivers.line.owner import LineOwner
from gateway.cli_args import UsageError
from gateway.config import CJT188_ENERGY_UNITS
from gateway.dlt645_commission import SCAN_DI, find_address, scan_addresses

LINE_ID = "line-1"
HEAT_OFFSET = next(off for name, off, _, _ in UNIT_FIELDS if name == "heat_energy")
HEAT_COUNTS = ("heat_energy", "flow_temperature", "return_temperature")

LineSettings = SerialLineConfig | TcpServerLineConfig
LineProtocol = Literal["dlt645", "cjt188"]


class LineScanRefused(Exception):
    """The line cannot be reached, or the wildcard answers collided: nothing to write."""


@dataclass(frozen=True)
class LineScanRequest:
    """What to look for on which line: the installation list per protocol, or None
    (read address to the wildcard) for each protocol asked for."""

    settings: LineSettings  # its timeout_s is the DL/T 645 one
    dlt645: bool
    cjt188: bool
    dlt645_addresses: tuple[str, ...] | None = None
    cjt188_addresses: tuple[str, ...] | None = None
    cjt188_timeout_s: float = 2.0


@dataclass(frozen=True)
class LineMeterScan:
    """One address on the line: what it said (or why it is not there)."""

    protocol: LineProtocol
    address: str
    answered: bool
    said: str  # for the printout and the config's comment
    energy_unit: str | None = None  # CJ/T 188: from the meter's unit code, when it told it
    unit_code: int | None = None
    problem: str | None = None  # answered, but with an error or abnormal answer


def scan_line(request: LineScanRequest) -> list[LineMeterScan]:
    """Scan the line for what ``request`` asks; prints each meter as it is found.
    Raises :class:`LineScanRefused`."""
    try:
        return asyncio.run(_scan(request))
    except LineUnreachable as exc:  # names the line and the request
        raise LineScanRefused(f"{exc}: nothing written") from exc


async def _scan(request: LineScanRequest) -> list[LineMeterScan]:
    found: list[LineMeterScan] = []
    if request.dlt645:
        found += await _scan_dlt645(request.settings, request.dlt645_addresses)
    if request.cjt188:
        settings = request.settings.model_copy(update={"timeout_s": request.cjt188_timeout_s})
        found += await _scan_cjt188(settings, request.cjt188_addresses)
    return found


def _heading(settings: LineSettings, what: str) -> None:
    s = settings
    print(f"init: scanning {describe_line(s)} {s.baudrate} {s.bytesize}{s.parity}{s.stopbits} for {what}, "
          f"{s.timeout_s:g} s each", flush=True)  # fmt: skip


# -- arguments -----------------------------------------------------------------------------------


def line_request(args: argparse.Namespace) -> LineScanRequest:
    """The line ``puhui gateway init --dlt645/--cjt188`` scans, from its arguments as the line
    commands take them (2400 8E1 unless --baud/--parity); raises :class:`UsageError`."""
    if args.units is not None:
        raise UsageError("--units is for a Modbus scan; a line scan takes --addresses")
    if (args.host is None) == (args.serial is None):
        raise UsageError("give either --host and --port (a serial server) or --serial for the line")
    if args.host is not None and args.port is None:
        raise UsageError("--host needs --port (the serial server's TCP port for the line)")
    dlt645, cjt188 = _split_addresses(args)
    common: dict[str, Any] = {
        "id": LINE_ID, "baudrate": args.baud or 2400, "parity": args.parity or "E",
        "stopbits": args.stopbits or 1, "timeout_s": args.timeout or 1.0,
    }  # fmt: skip
    settings: SerialLineConfig | TcpServerLineConfig
    if args.host is not None:
        settings = TcpServerLineConfig(kind="tcp_server", host=args.host, port=args.port, **common)
    else:
        settings = SerialLineConfig(kind="serial", port=args.serial, **common)
    return LineScanRequest(settings, args.dlt645, args.cjt188, dlt645, cjt188, args.timeout or 2.0)


def _split_addresses(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """--addresses by protocol (None: read address to the wildcard); each listed protocol asked for."""
    if args.addresses is None:
        return None, None
    dlt645 = tuple(a for a in args.addresses if len(a) == 12)
    cjt188 = tuple(a for a in args.addresses if len(a) == 14)
    protocols = ((dlt645, args.dlt645, "--dlt645", "12 digits: DL/T 645"),
                 (cjt188, args.cjt188, "--cjt188", "14 digits: CJ/T 188"))  # fmt: skip
    for listed, asked, flag, what in protocols:
        if listed and not asked:
            raise UsageError(f"--addresses {listed[0]} ({what}) needs {flag}")
    for listed, asked, flag, what in protocols:
        if asked and not listed:
            raise UsageError(f"{flag} with --addresses: list its meters too ({what}), or scan them apart")
    return dlt645 or None, cjt188 or None


def line_addresses(text: str) -> list[str]:
    """An argparse type: --addresses, 12 (DL/T 645) or 14 (CJ/T 188) digits each, commas."""
    addresses = [part.strip() for part in text.split(",") if part.strip()]
    bad = [a for a in addresses if not re.fullmatch(r"[0-9]{12}|[0-9]{14}", a)]
    if bad or not addresses:
        raise argparse.ArgumentTypeError(
            f"{', '.join(map(repr, bad)) or 'none'}: 12 digits (DL/T 645) or 14 (CJ/T 188) each, as on the "
            "nameplate"
        )
    return list(dict.fromkeys(addresses))


# -- DL/T 645 --------------------------------------------------------------------------------------


async def _scan_dlt645(settings: LineSettings, addresses: Sequence[str] | None) -> list[LineMeterScan]:
    if addresses is None:
        _heading(settings, "DL/T 645 meters: read address to AAAAAAAAAAAA")
        try:
            addresses = [await find_address(settings)]
        except LineTimeout:
            print("  no DL/T 645 meter answered read address", flush=True)
            return []
        except Dlt645Error as exc:
            raise LineScanRefused(
                f"DL/T 645 read address on {describe_line(settings)} got no clean answer ({exc}): more "
                "than one meter is probably connected; give the installation list with --addresses, "
                "or connect one meter at a time: nothing written"
            ) from exc
    else:
        _heading(settings, f"DL/T 645 meters: reading {SCAN_DI:08X} of {len(addresses)} listed address(es)")
    result = await scan_addresses(settings, addresses)
    problems = {p.partition(":")[0]: p.partition(": ")[2] for p in result.problems}
    out = []
    for address in addresses:
        value = result.found.get(address)
        if value is not None and not isinstance(value, Invalid):
            said = f"forward active energy {value:g} kWh"
            out.append(LineMeterScan("dlt645", address, True, said))
        elif value is not None:  # an error answer: there, but say what it said
            out.append(LineMeterScan("dlt645", address, True, problems[address], problem=problems[address]))
        elif address in problems:
            out.append(LineMeterScan("dlt645", address, False, problems[address]))
        else:
            out.append(LineMeterScan("dlt645", address, False, f"no answer within {settings.timeout_s:g} s"))
        _print(out[-1])
    return out


# -- CJ/T 188 --------------------------------------------------------------------------------------


async def _scan_cjt188(settings: LineSettings, addresses: Sequence[str] | None) -> list[LineMeterScan]:
    timeout = settings.timeout_s
    async with LineOwner(settings) as line:
        if addresses is None:
            _heading(settings, "CJ/T 188 meters: read address to AAAAAAAAAAAAAA (any type)")
            try:
                meter = await read_address(line, meter_type=ANY_TYPE, timeout_s=timeout)
            except LineTimeout:
                print("  no CJ/T 188 meter answered read address", flush=True)
                return []
            except Cjt188Error as exc:
                raise LineScanRefused(
                    f"CJ/T 188 read address on {describe_line(settings)} got no clean answer ({exc}): "
                    "more than one meter is probably connected; give the installation list with "
                    "--addresses, or connect one meter at a time: nothing written"
                ) from exc
            if meter.meter_type != HEAT_METER:
                print(f"  CJ/T 188 meter {meter.address} is of type {meter.meter_type:02X}, not a heat "
                      "meter (20): init writes heat meters only; add it by hand", flush=True)  # fmt: skip
                return []
            listed = [meter.address]
        else:
            what = f"CJ/T 188 heat meters: reading 90 1F of {len(addresses)} listed address(es)"
            _heading(settings, what)
            listed = [Address.parse(a) for a in addresses]
        result = await cjt188_scan(line, listed, meter_type=HEAT_METER, timeout_s=timeout)
        found = {m.address for m in result.found}
        problems = {p.partition(":")[0]: p.partition(": ")[2] for p in result.problems}
        out = []
        for ser, address in enumerate(listed):
            if address in found:
                out.append(await _heat_meter(line, address, ser, timeout, problems.get(str(address))))
            else:
                why = problems.get(str(address), f"no answer within {timeout:g} s")
                out.append(LineMeterScan("cjt188", str(address), False, why))
            _print(out[-1])
    return out


async def _heat_meter(
    line: LineOwner, address: Address, ser: int, timeout_s: float, problem: str | None
) -> LineMeterScan:
    """A heat meter that answered: its heat energy and the unit its counter counts in, read
    from its metering block (unknown when it answers abnormally)."""
    if problem is not None:
        return LineMeterScan("cjt188", str(address), True, problem, problem=problem)
    try:
        data = await read_data(line, Target(address), DI_METERING, ser=ser, timeout_s=timeout_s)
    except (LineTimeout, Cjt188Error) as exc:  # it answered the scan: keep it, without the unit
        return LineMeterScan("cjt188", str(address), True, str(exc), problem=str(exc))
    if len(data) != BLOCK_SIZE:
        why = f"a 90 1F block of {len(data)} bytes ({BLOCK_SIZE} expected)"
        return LineMeterScan("cjt188", str(address), True, why, problem=why)
    heat = decode_heat_block(data).values["heat_energy"]
    code = data[HEAT_OFFSET + 4]
    unit = unit_of(code, "energy")
    symbol = unit.symbol if not isinstance(unit, str) and unit.symbol in CJT188_ENERGY_UNITS else None
    shown = str(heat) if isinstance(heat, Invalid) else f"{heat:.10g} kWh"
    counts_in = f"counts in {symbol}" if symbol else (unit if isinstance(unit, str) else "unit not known")
    said = f"heat energy {shown} (unit code {code:02X}: {counts_in})"
    return LineMeterScan("cjt188", str(address), True, said, energy_unit=symbol, unit_code=code)


def _print(scan: LineMeterScan) -> None:
    name = "DL/T 645" if scan.protocol == "dlt645" else "CJ/T 188"
    state = "answers" if scan.answered else "not found"
    print(f"  {name} meter {scan.address} {state}: {scan.said}", flush=True)


# -- rendering -------------------------------------------------------------------------------------


def line_entry(settings: LineSettings) -> list[str]:
    """The ``lines:`` entry of the scanned line (with its id, LINE_ID)."""
    s = settings
    where = (f"kind: serial, port: {_quote(s.port)}" if isinstance(s, SerialLineConfig)
             else f"kind: tcp_server, host: {_quote(s.host)}, port: {s.port}")  # fmt: skip
    return [
        "lines:",
        "  # every device on the line at the same speed and parity (2400 8E1: the DL/T 645 and",
        "  # CJ/T 188 default); behind a serial server, as set on its RS-485 side",
        f"  - {{id: {LINE_ID}, {where}, baudrate: {s.baudrate}, parity: {s.parity}, "
        f"stopbits: {s.stopbits}, timeout_s: {s.timeout_s:g}}}",
    ]


def line_meter_lines(
    settings: LineSettings, scans: Sequence[LineMeterScan], cjt188_timeout_s: float
) -> list[str]:
    """The meter entries of what the scan found (silent ones commented out)."""
    out: list[str] = []
    for scan in scans:
        body = _dlt645_meter(scan) if scan.protocol == "dlt645" else _cjt188_meter(scan, cjt188_timeout_s)
        name = "DL/T 645 meter" if scan.protocol == "dlt645" else "CJ/T 188 heat meter"
        if scan.answered:
            out.append(f"  # {name} {scan.address} answered on {describe_line(settings)}: {scan.said}")
            if scan.problem is not None:
                out.append(f"  # TODO: it answered with an error: see what it reads (puhui gateway "
                           f"{scan.protocol} probe --address {scan.address})")  # fmt: skip
            out += body
        else:
            out.append(f"  # {name} {scan.address} did not answer ({scan.said}): check its address and")
            out.append("  # wiring, then uncomment it")
            out += ["  # " + line[2:] for line in body]
    if scans:
        out += [
            f"  # Modbus RTU meters on {LINE_ID} (same speed and parity) hang on it too:",
            f"  #   driver: modbus_rtu, connection: {{line: {LINE_ID}}}, unit_id: N, profile: ...",
        ]
    return out


def _dlt645_meter(scan: LineMeterScan) -> list[str]:
    return [
        f"  - id: elec-{scan.address}      # TODO: a name the operator recognises",
        "    driver: dlt645",
        f"    connection: {{line: {LINE_ID}, address: {_quote(scan.address)}}}",
        f"    read: [{', '.join(DEFAULT_READ)}]   # the driver's default items",
        "    scenario: clean_heating      # TODO: pv, ev_charging or clean_heating",
        '    nameplate: {rated_power_kw: 10, meter_class: "2"}   # TODO: rated kW, class from the plate',
        "    counts: [energy_import]      # the counter that is credited",
    ]


def _cjt188_meter(scan: LineMeterScan, timeout_s: float) -> list[str]:
    if scan.energy_unit is not None:
        unit = f"    energy_unit: {scan.energy_unit}      # from the meter's unit code {scan.unit_code:02X}"
    else:
        unit = "    energy_unit: kWh      # TODO: the unit its display counts heat in (kWh, MWh, GJ)"
    return [
        f"  - id: heat-{scan.address}    # TODO: a name the operator recognises",
        "    driver: cjt188",
        f"    connection: {{line: {LINE_ID}, address: {_quote(scan.address)}}}",
        f"    quantities: [{', '.join(DEFAULT_QUANTITIES)}]   # the driver's default",
        unit,
        f"    policy: {{timeout_s: {timeout_s:g}, retries: 1}}",
        "    scenario: clean_heating      # a heat meter",
        "    nameplate: {rated_power_kw: 10, meter_class: heat_2}   # TODO: rated heat kW, class heat_1-3",
        f"    counts: [{', '.join(HEAT_COUNTS)}]   # heat is credited; temperatures as evidence",
    ]


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML string


__all__ = ["LINE_ID", "LineMeterScan", "LineScanRefused", "LineScanRequest", "line_addresses", "line_entry",
           "line_meter_lines", "line_request", "scan_line"]  # fmt: skip
