"""``puhui gateway dlt645|cjt188|mbus scan|probe``: commissioning the meters of a shared line.

::

    puhui gateway dlt645 scan  --host H --port P | --serial DEV [--baud 2400 --parity E]
                               [--addresses 000012345601,000012345602]
    puhui gateway dlt645 probe ... --address 000012345678 [--di 00010000]
    puhui gateway cjt188 scan  ... [--addresses 20250000000001,20250000000002]
    puhui gateway cjt188 probe ... --address 20250000000001 [--di 901F]
    puhui gateway mbus scan    ... [--addresses 1-20,48]          (default: every primary address)
    puhui gateway mbus probe   ... --address 5 | --secondary 87654321

The logic lives in :mod:`gateway.dlt645_commission`, :mod:`gateway.cjt188_commission` and
:mod:`drivers.mbus.scan`;
exit status as every gateway command: 0 done, 1 the line or a meter failed, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import TYPE_CHECKING, Any

from drivers.cjt188.frame import DI_METERING, Address
from drivers.contract import Invalid
from drivers.dlt645.errors import Dlt645Error
from drivers.errors import DriverError
from drivers.line.config import SerialLineConfig, TcpServerLineConfig, describe_line
from drivers.line.contract import LineError, LineTimeout
from drivers.line.owner import LineOwner
from drivers.mbus.client import Target, read_heat
from drivers.mbus.frame import MAX_PRIMARY, SecondaryAddress
from gateway.cjt188_commission import MeterSettings, describe_heat, find_meters, probe_identifier
from gateway.cli_args import UsageError, add_line_arguments, bounded, fail, line_settings, seconds
from gateway.dlt645_commission import SCAN_DI, describe_value, find_address, scan_addresses
from gateway.dlt645_commission import probe_identifier as dlt645_probe

if TYPE_CHECKING:  # the M-Bus library (and its crypto stack): imported by the M-Bus commands only
    from drivers.mbus.heat import HeatData
    from drivers.mbus.records import Header
    from drivers.mbus.scan import ScanResult


def add_line_commands(sub: Any) -> None:
    """The ``dlt645``, ``cjt188`` and ``mbus`` subcommands of ``puhui gateway``."""
    p = sub.add_parser("dlt645", help="DL/T 645 meters on a line: find the address, read an identifier")
    p.add_argument(
        "dlt645_action", choices=["scan", "probe"], metavar="scan|probe",
        help="scan: read address (one meter) or energy of --addresses; probe: read --di of --address",
    )  # fmt: skip
    add_line_arguments(p, baud=2400, parity="E")
    p.add_argument(
        "--addresses", type=_dlt645_addresses, help="scan: the installation list (12 digits, commas)"
    )
    p.add_argument("--address", help="probe: the meter's 12-digit address")
    p.add_argument("--di", type=_dlt645_identifier, default=0x00010000, help="probe: e.g. 00010000 (default)")
    p.add_argument("--timeout", type=seconds(10), default=1.0, metavar="S", help="default 1 s")
    p.set_defaults(func=_dlt645)

    p = sub.add_parser("cjt188", help="CJ/T 188 heat meters on a line: find them, read an identifier")
    p.add_argument(
        "cjt188_action", choices=["scan", "probe"], metavar="scan|probe",
        help="scan: read address (one meter) or the data of --addresses; probe: read --di of --address",
    )  # fmt: skip
    add_line_arguments(p, baud=2400, parity="E")
    p.add_argument("--addresses", type=_address_list, help="scan: the installation list (14 digits, commas)")
    p.add_argument("--address", type=_address, help="probe: the meter's 14-digit address")
    p.add_argument("--di", type=_cjt188_identifier, default=DI_METERING, help="probe: e.g. 901F (default)")
    p.add_argument("--type", choices=["heat", "cooling"], default="heat", help="meter type (default heat)")
    p.add_argument("--order", choices=["90 1F", "1F 90"], default="90 1F", help="identifier byte order")
    p.add_argument("--preamble", type=bounded("preamble", 0, 4), default=2, help="FE bytes (default 2)")
    p.add_argument("--timeout", type=seconds(10), default=2.0, metavar="S", help="default 2 s")
    p.set_defaults(func=_cjt188)

    p = sub.add_parser("mbus", help="M-Bus (EN 13757-3) heat meters on a line: find them, read one")
    p.add_argument(
        "mbus_action", choices=["scan", "probe"], metavar="scan|probe",
        help="scan: read each primary address of --addresses (default 0-250); probe: read one meter",
    )  # fmt: skip
    add_line_arguments(p, baud=2400, parity="E")
    p.add_argument("--addresses", type=_primary_addresses, help="scan: e.g. 1-20,48 (default 0-250)")
    p.add_argument("--address", type=bounded("primary address", 0, MAX_PRIMARY), help="probe: primary")
    p.add_argument("--secondary", type=_secondary, help="probe: secondary address, e.g. 87654321")
    p.add_argument("--timeout", type=seconds(10), default=0.5, metavar="S", help="default 0.5 s")
    p.set_defaults(func=_mbus)


def _dlt645_identifier(text: str) -> int:
    digits = text.lower().removeprefix("0x").replace(" ", "")
    if len(digits) != 8 or any(c not in "0123456789abcdef" for c in digits):
        raise argparse.ArgumentTypeError(f"{text!r} is not a data identifier (8 hex digits, e.g. 00010000)")
    return int(digits, 16)


def _dlt645_addresses(text: str) -> list[str]:
    addresses = [part.strip() for part in text.split(",") if part.strip()]
    bad = [a for a in addresses if not re.fullmatch(r"[0-9]{12}", a)]
    if bad or not addresses:
        raise argparse.ArgumentTypeError(
            f"{', '.join(map(repr, bad)) or 'none'}: 12 digits each, as on the nameplate"
        )
    return list(dict.fromkeys(addresses))


def _cjt188_identifier(text: str) -> int:
    digits = text.lower().removeprefix("0x").replace(" ", "")
    if len(digits) != 4 or any(c not in "0123456789abcdef" for c in digits):
        raise argparse.ArgumentTypeError(f"{text!r} is not a CJ/T 188 identifier (4 hex digits, e.g. 901F)")
    return int(digits, 16)


def _address(text: str) -> Address:
    try:
        return Address.parse(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address_list(text: str) -> list[Address]:
    addresses = [_address(part) for part in text.split(",") if part.strip()]
    if not addresses:
        raise argparse.ArgumentTypeError("an empty address list")
    return list(dict.fromkeys(addresses))


def _primary_addresses(text: str) -> list[int]:
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = re.fullmatch(r"([0-9]{1,3})(?:-([0-9]{1,3}))?", part)
        low, high = (int(match[1]), int(match[2] or match[1])) if match else (1, 0)
        if not match or not 0 <= low <= high <= MAX_PRIMARY:
            raise argparse.ArgumentTypeError(f"{part!r}: primary addresses 0-{MAX_PRIMARY}, e.g. 1-20,48")
        out += range(low, high + 1)
    if not out:
        raise argparse.ArgumentTypeError("an empty address list")
    return list(dict.fromkeys(out))


def _secondary(text: str) -> SecondaryAddress:
    try:
        return SecondaryAddress(text.strip().upper())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


COLLIDED = (
    "no clean answer to read address: more than one meter is probably connected (their answers "
    "collide); scan with --addresses from the installation list, or connect one meter at a time"
)


def _error(command: str, exc: DriverError, hint: str = "") -> int:
    print(f"puhui gateway {command}: {exc}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
    return 1


# -- DL/T 645 -------------------------------------------------------------------------------------


def _dlt645(args: argparse.Namespace) -> int:
    try:
        settings = line_settings(args)
        if args.dlt645_action == "probe" and (
            args.address is None or not re.fullmatch(r"[0-9]{12}", args.address)
        ):
            raise UsageError("probe needs --address, the meter's 12 digits (scan finds it)")
    except (UsageError, ValueError) as exc:
        return fail(f"dlt645 {args.dlt645_action}: {exc}")
    try:
        if args.dlt645_action == "scan" and args.addresses is not None:
            return _dlt645_scan_list(settings, args.addresses)
        if args.dlt645_action == "scan":
            return _dlt645_scan_wildcard(settings)
        result = asyncio.run(dlt645_probe(settings, args.address, args.di))
    except DriverError as exc:
        return _error(f"dlt645 {args.dlt645_action}", exc)
    print(
        f"dlt645 probe meter {result.address} DI {result.di:08X}: {result.raw.hex(' ') or '(no value bytes)'}"
    )
    for quantity, value in result.decoded.items():
        print(f"  {quantity:16} {describe_value(value)}")
    return 0


def _dlt645_scan_wildcard(settings: SerialLineConfig | TcpServerLineConfig) -> int:
    try:
        address = asyncio.run(find_address(settings))
    except LineTimeout as exc:
        return _error(
            "dlt645 scan", exc, "no DL/T 645 meter answered read address: check wiring, speed and parity"
        )
    except Dlt645Error as exc:
        return _error("dlt645 scan", exc, COLLIDED)
    print(f"dlt645 scan {describe_line(settings)}: meter {address}")
    return 0


def _dlt645_scan_list(settings: SerialLineConfig | TcpServerLineConfig, addresses: list[str]) -> int:
    print(
        f"dlt645 scan {describe_line(settings)} {settings.baudrate} 8{settings.parity}1: "
        f"reading {SCAN_DI:08X} of {len(addresses)} listed address(es)"
    )
    result = asyncio.run(scan_addresses(settings, addresses))
    for address, energy in result.found.items():
        if not isinstance(energy, Invalid):
            print(f"  meter {address} answers: forward active energy {describe_value(energy)} kWh")
    for problem in result.problems:
        print(f"  {problem}")
    if result.silent:
        print(f"  no answer within {settings.timeout_s:g} s: {', '.join(result.silent)}")
    print(f"{len(result.found)} of {len(addresses)} meter(s) found")
    return 0 if result.found else 1


# -- CJ/T 188 -------------------------------------------------------------------------------------


def _cjt188(args: argparse.Namespace) -> int:
    try:
        settings = line_settings(args)
        if args.cjt188_action == "probe" and args.address is None:
            raise UsageError("probe needs --address, the meter's 14 digits (scan finds it)")
        if args.cjt188_action == "scan" and args.address is not None:
            raise UsageError("scan takes --addresses (the installation list), probe takes --address")
    except (UsageError, ValueError) as exc:
        return fail(f"cjt188 {args.cjt188_action}: {exc}")
    meters = MeterSettings(args.type, args.order, args.preamble)
    try:
        if args.cjt188_action == "scan":
            return _cjt188_scan(settings, args.addresses, meters)
        return _cjt188_probe(settings, args.address, args.di, meters)
    except LineError as exc:  # names meter and line already
        return _error(f"cjt188 {args.cjt188_action}", exc)
    except DriverError as exc:  # the meter answered: say which meter and identifier
        return _error("cjt188 probe", DriverError(f"meter {args.address} DI {args.di:04X}: {exc}"))


def _cjt188_scan(
    settings: SerialLineConfig | TcpServerLineConfig, addresses: list[Address] | None, meters: MeterSettings
) -> int:
    what = (
        "read address to AAAAAAAAAAAAAA (any type)"
        if addresses is None
        else f"reading {meters.order} of {len(addresses)} listed address(es)"
    )
    print(f"cjt188 scan {describe_line(settings)} {settings.baudrate} 8{settings.parity}1: {what}")
    result = asyncio.run(find_meters(settings, addresses, meters))
    found = {m.address for m in result.found}
    for m in result.found:
        print(f"  meter {m.address} answers (type {m.meter_type:02X})")
    for problem in result.problems:
        print(f"  {problem}")
    if result.silent:
        silent = ", ".join(str(a) for a in result.silent)
        print(f"  no answer within {settings.timeout_s:g} s: {silent}")
    total = f" of {len(addresses)}" if addresses is not None else ""
    print(f"{len(found)}{total} meter(s) found")
    return 0 if found else 1


def _cjt188_probe(
    settings: SerialLineConfig | TcpServerLineConfig, address: Address, di: int, meters: MeterSettings
) -> int:
    result = asyncio.run(probe_identifier(settings, address, di, meters))
    print(f"cjt188 probe meter {result.address} DI {result.di:04X}: {len(result.data)} byte(s) after SER")
    for offset in range(0, len(result.data), 16):
        print(f"  {offset:3d}: {result.data[offset : offset + 16].hex(' ').upper()}")
    for name, value in describe_heat(result.heat) if result.heat is not None else ():
        print(f"  {name:20} {value}")
    return 0


# -- M-Bus ----------------------------------------------------------------------------------------


def _mbus(args: argparse.Namespace) -> int:
    try:
        settings = line_settings(args)
        if args.mbus_action == "probe" and (args.address is None) == (args.secondary is None):
            raise UsageError("probe needs --address (primary, 0-250) or --secondary (scan finds primaries)")
        if args.mbus_action == "scan" and (args.address is not None or args.secondary is not None):
            raise UsageError("scan takes --addresses, probe takes --address or --secondary")
    except (UsageError, ValueError) as exc:
        return fail(f"mbus {args.mbus_action}: {exc}")
    try:
        if args.mbus_action == "scan":
            addresses = args.addresses or list(range(MAX_PRIMARY + 1))
            print(f"mbus scan {describe_line(settings)} {settings.baudrate} 8{settings.parity}1: "
                  f"SND_NKE and REQ_UD2 to {len(addresses)} primary address(es)")  # fmt: skip
            return _mbus_scan_report(asyncio.run(_mbus_scan(settings, addresses)))
        target = Target(args.address, args.secondary)
        data = asyncio.run(_mbus_probe(settings, target))
    except DriverError as exc:
        return _error(f"mbus {args.mbus_action}", exc)
    _mbus_probe_report(target, data)
    return 0


async def _mbus_scan(settings: SerialLineConfig | TcpServerLineConfig, addresses: list[int]) -> ScanResult:
    async with LineOwner(settings) as line:
        from drivers.mbus.scan import scan as mbus_scan

        return await mbus_scan(line, addresses, timeout_s=settings.timeout_s)


async def _mbus_probe(settings: SerialLineConfig | TcpServerLineConfig, target: Target) -> HeatData:
    async with LineOwner(settings) as line:
        return await read_heat(line, target, timeout_s=settings.timeout_s)


def _describe_header(h: Header) -> str:
    from drivers.mbus.heat import MEDIA

    medium = MEDIA.get(h.medium, f"medium {h.medium:02X}")
    where = f"secondary {h.secondary_address}"
    return f"{h.manufacturer_code} {h.id_digits} version {h.version:02X}, {medium} ({where})"


def _mbus_scan_report(result: ScanResult) -> int:
    for address, header in result.found:
        print(f"  address {address}: {_describe_header(header)}")
    for problem in result.problems:
        print(f"  {problem}")
    print(f"{len(result.found)} meter(s) found, {result.silent} address(es) silent")
    return 0 if result.found else 1


def _mbus_probe_report(target: Target, data: HeatData) -> None:
    print(f"mbus probe {target.name}: {_describe_header(data.header)}")
    print(f"  {data.status.describe()}, access number {data.header.access}")
    for quantity, value in data.values.items():
        print(f"  {quantity:20} {value}")
    print(f"  {'meter_time':20} {data.meter_time if data.meter_time is not None else '(no record)'}")
    print(f"  {'fabrication_number':20} {data.fabrication_number or '(no record)'}")
    for ignored in data.ignored:
        print(f"  skipped: {ignored}")
    if data.more_records_follow:
        print("  the meter has more records in a next telegram (not read)")
