"""Argument parsing shared by the ``puhui gateway`` commands: bounded numbers, seconds, line
settings, and the usage-error exit (status 2)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from drivers.line.config import SerialLineConfig, TcpServerLineConfig

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class UsageError(ValueError):
    """Arguments that do not fit together (exit status 2)."""


def fail(message: str) -> int:
    """Print a usage or config error and return exit status 2."""
    print(f"puhui gateway: {message}", file=sys.stderr)
    return 2


def bounded(what: str, low: int, high: int) -> Any:
    """An argparse type: an integer (decimal or 0x hex) in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} (decimal or 0x hex)") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} {value} is not in {low}..{high}")
        return value

    return parse


def seconds(high: float) -> Any:
    """An argparse type: seconds in (0, ``high``]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"{value:g} s is not in (0, {high:g}]")
        return value

    return parse


def add_line_arguments(parser: argparse.ArgumentParser, *, baud: int, parity: str) -> None:
    """Where a shared line is: a transparent serial server (--host, --port) or a local port."""
    where = parser.add_argument_group("where (give --host and --port of a serial server, or --serial)")
    where.add_argument("--host", help="transparent serial server")
    where.add_argument("--port", type=bounded("TCP port", 1, 65535), help="its TCP port for the line")
    where.add_argument("--serial", metavar="DEV", help="RS-485 adapter, e.g. /dev/ttyUSB0")
    where.add_argument("--baud", type=int, choices=BAUDRATES, default=baud, help=f"default {baud}")
    where.add_argument("--parity", choices=["N", "E", "O"], default=parity, help=f"default {parity}")


def line_settings(args: argparse.Namespace) -> SerialLineConfig | TcpServerLineConfig:
    """The line ``args`` name; :class:`UsageError` when --host/--port/--serial do not fit."""
    common = {"id": "commissioning", "baudrate": args.baud, "parity": args.parity, "timeout_s": args.timeout}
    if (args.host is None) == (args.serial is None):
        raise UsageError("give either --host and --port (a transparent serial server) or --serial")
    if args.host is not None:
        if args.port is None:
            raise UsageError("--host needs --port (the serial server's TCP port for the line)")
        return TcpServerLineConfig(kind="tcp_server", host=args.host, port=args.port, **common)
    return SerialLineConfig(kind="serial", port=args.serial, **common)
