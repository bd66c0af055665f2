"""``puhui sim``: run a fleet, switch faults in a running fleet, check a fleet file.

::

    puhui sim run --fleet config/fleets/pv-street.yaml --factor 1440 \\
        --ports-out /tmp/ports.json --truth-out /tmp/truth.json
    puhui sim fault --control 127.0.0.1:PORT house-03-sdm --timeout on
    puhui sim check config/fleets/*.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from firmware_sim.config import expand, load_fleet
from firmware_sim.control import control_request
from firmware_sim.errors import SimError
from firmware_sim.fleet import Fleet

TRUTH_EVERY_WALL_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach ``run``, ``fault`` and ``check`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="serve a fleet until Ctrl-C")
    run.add_argument("--fleet", required=True, type=Path, help="fleet YAML file")
    run.add_argument("--factor", type=float, help="clock factor (overrides the fleet file)")
    run.add_argument(
        "--epoch", type=_epoch, help="clock start: 'now' or ISO 8601 with offset (overrides the fleet file)"
    )
    run.add_argument(
        "--rtu-link",
        action="append",
        default=[],
        type=_link,
        metavar="BUS=PATH",
        help="a stable path (symlink) to RTU bus BUS's pseudo-terminal, as /dev/serial/by-id gives one; "
        "removed at exit (repeatable)",
    )
    run.add_argument("--mqtt", metavar="HOST:PORT", help="broker (overrides the fleet file)")
    run.add_argument("--truth-out", type=Path, help="write ground truth JSON here")
    run.add_argument("--ports-out", type=Path, help="write endpoints + clock spec JSON here")
    run.set_defaults(func=cmd_run)

    fault = sub.add_parser("fault", help="switch faults of a device in a running fleet")
    fault.add_argument("--control", required=True, help="HOST:PORT of the control endpoint")
    fault.add_argument("device")
    fault.add_argument("--clear", action="store_true", help="all faults off first")
    for flag in ("timeout", "drop-connection", "mqtt-malformed", "mqtt-duplicate"):
        fault.add_argument(f"--{flag}", choices=("on", "off"))
    fault.add_argument("--exception", choices=("busy", "illegal_address", "off"))
    fault.add_argument("--value", choices=("nan", "absurd", "off"))
    fault.add_argument("--clock-jump", type=float, metavar="SECONDS")
    fault.add_argument("--probability", type=float)
    fault.add_argument("--reset-counter", action="store_true", help="one-shot: meter replaced")
    fault.add_argument("--rollover", action="store_true", help="one-shot: counter near wrap")
    fault.set_defaults(func=cmd_fault)

    check = sub.add_parser("check", help="validate fleet files")
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            load_fleet(path)
            print(f"{path}: ok")
        except SimError as exc:
            print(exc, file=sys.stderr)
            status = 2  # a config error, as in puhui gateway and aggregator
    return status


def cmd_run(args: argparse.Namespace) -> int:
    try:
        broker = None
        if args.mqtt:
            host, _, port = args.mqtt.rpartition(":")
            broker = (host or "127.0.0.1", int(port))
        fleet = Fleet.from_file(args.fleet, factor=args.factor, mqtt=broker, epoch=args.epoch)
        unknown = sorted(set(dict(args.rtu_link)) - _rtu_buses(fleet))
        if unknown:
            raise SimError(f"{args.fleet}: --rtu-link names no rtu_bus of the fleet: {', '.join(unknown)}")
    except SimError as exc:
        print(exc, file=sys.stderr)
        return 2
    asyncio.run(_run(fleet, args.truth_out, args.ports_out, dict(args.rtu_link)))
    return 0


def _epoch(text: str) -> datetime.datetime:
    if text == "now":
        return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: 'now' or ISO 8601 with offset") from exc
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a UTC offset (e.g. +08:00)")
    return moment


def _link(text: str) -> tuple[str, Path]:
    bus, sep, path = text.partition("=")
    if not sep or not bus or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BUS=PATH")
    return bus, Path(path)


def _rtu_buses(fleet: Fleet) -> set[str]:
    return {spec.config.rtu_bus for spec in expand(fleet.config) if spec.config.rtu_bus is not None}


@contextlib.contextmanager
def _linked(fleet: Fleet, links: dict[str, Path]) -> Iterator[None]:
    """Symlinks to the buses' pseudo-terminals while the fleet runs; each replaces only a
    symlink (never a file) and is removed at exit."""
    made: list[Path] = []
    paths = {
        spec.config.rtu_bus: fleet.devices[spec.name].endpoint.rtu_path
        for spec in expand(fleet.config)
        if spec.config.rtu_bus is not None
    }
    try:
        for bus, link in links.items():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(str(paths[bus]))
            made.append(link)
            print(f"rtu bus {bus}: {link} -> {paths[bus]}", flush=True)
        yield
    finally:
        for link in made:
            link.unlink(missing_ok=True)


async def _run(fleet: Fleet, truth_out: Path | None, ports_out: Path | None, links: dict[str, Path]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet, contextlib.AsyncExitStack() as stack:
        stack.enter_context(_linked(fleet, links))
        if ports_out is not None:
            fleet.write_endpoints(ports_out)  # before "ready", which readers wait for
        print_table(fleet)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TRUTH_EVERY_WALL_S):
                    await stop.wait()
            if truth_out is not None:
                fleet.write_truth(truth_out)
    print("stopped", flush=True)


def print_table(fleet: Fleet) -> None:
    """What is served where, one device per line."""
    epoch = datetime.datetime.fromtimestamp(fleet.clock.now(), datetime.UTC)
    print(
        f"fleet {fleet.config.name}: {len(fleet.devices)} devices, clock x{fleet.clock.factor:g}"
        f" at {epoch:%Y-%m-%d %H:%M:%S}Z"
    )
    print(f"{'device':<28} {'kind':<17} {'site':<18} where")
    for dev in fleet.devices.values():
        print(f"{dev.name:<28} {dev.kind:<17} {dev.site:<18} {_where(dev.endpoint.to_dict())}")
    if fleet.control is not None:
        print(f"control: {fleet.config.host}:{fleet.control.port}")
    print("ready", flush=True)


def _where(ep: dict[str, Any]) -> str:
    units = ",".join(str(u) for u in ep.get("units", ()))
    if ep["transport"] == "tcp":
        return f"modbus-tcp {ep['host']}:{ep['port']} unit {units}"
    if ep["transport"] == "rtu":
        return f"modbus-rtu {ep['rtu_path']} unit {units}"
    if ep["transport"] == "line":
        where = f"tcp {ep['host']}:{ep['port']}" if "host" in ep else ep.get("rtu_path", "?")
        who = f"address {ep['address']}" if "address" in ep else f"modbus unit {ep.get('unit', '?')}"
        return f"line {ep['line']} ({where}) {who}"
    return f"mqtt {ep['topic']}"


def _fault_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in ("timeout", "drop_connection", "mqtt_malformed", "mqtt_duplicate"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value == "on"
    for name in ("exception", "value"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = None if value == "off" else value
    if args.clock_jump is not None:
        changes["clock_jump_s"] = args.clock_jump
    if args.probability is not None:
        changes["probability"] = args.probability
    return changes


def cmd_fault(args: argparse.Namespace) -> int:
    host, _, port = args.control.rpartition(":")
    requests: list[dict[str, Any]] = [
        {"op": "faults", "device": args.device, "clear": args.clear, "set": _fault_changes(args)}
    ]
    if args.reset_counter:
        requests.append({"op": "reset_counter", "device": args.device})
    if args.rollover:
        requests.append({"op": "rollover", "device": args.device})
    try:
        for req in requests:
            print(json.dumps(asyncio.run(control_request(host or "127.0.0.1", int(port), req))))
    except (SimError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
