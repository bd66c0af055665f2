"""``puhui gateway``: run acquisition, check a site config, create the key, enrol, commission.

::

    puhui gateway check --config site.yaml        # validate; print meters, series, polls
    puhui gateway check --config site.yaml --live # ... then read every meter once (exit 1 on failure)
    puhui gateway probe --host H --unit 1 --address 0x48 --count 4 --table input
                                                  # one block: raw words and every decoding
    puhui gateway scan --serial /dev/ttyUSB0 --baud 9600 --units 1-32
                                                  # which unit ids answer on a bus
    puhui gateway dlt645 scan|probe --host H --port P [--address A --di 00010000]
    puhui gateway cjt188 scan|probe --host H --port P [--addresses A,B | --address A --di 901F]
                                                  # meters of a shared line (gateway.line_cli)
    puhui gateway init --serial /dev/ttyUSB0 --gateway-id gw-1 --site s --owner puhui
                                                  # config from a scan, key, enrolment
    puhui gateway init --host H --port P --dlt645 --cjt188 [--addresses A,B] --gateway-id gw-1 --site s
                                                  # ... of the meters of a shared line
    puhui gateway run --config site.yaml          # until SIGTERM / Ctrl-C
    puhui gateway keygen --config site.yaml       # the gateway's P-256 key (0600, never overwritten)
    puhui gateway enrol --config site.yaml --out enrolment.json

``probe``, ``scan`` and ``check --live`` are the installer's commissioning tools
(docs/commissioning.md); their logic lives in :mod:`gateway.commission`.

``run`` logs one line per device state change and shuts down cleanly on SIGTERM or
SIGINT: polls are cancelled, closed intervals are already durable, and the interval
builder's state is persisted so the next start resumes the counters. ``check`` builds
the same plan and interval builder as ``run`` does, so a config it accepts runs.

Exit status (every action; the aggregator's commands use the same): 0 done; 1 something
outside the config failed (a device, bus or meter does not answer, the state directory
cannot be written: disk full, read-only, permission denied); 2 a usage or config error
(bad arguments, a config file or a file it names that is unreadable or invalid). Each
error is one message naming the file and field, device or path; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.clock import Clock, FastClock, SystemClock
from common.sdnotify import NotifyError, ServiceNotifier
from drivers.contract import Invalid
from drivers.errors import DriverError
from drivers.modbus.decode import ProbeLine, RegisterType, probe
from drivers.modbus.profiles import Profile, load_profiles
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.errors import EvidenceError
from evidence.keys import GatewayKey
from gateway.cli_args import BAUDRATES, UsageError, bounded, fail, seconds
from gateway.clock_guard import AssumeSynchronised, ClockGuard, KernelSync, SyncSource, build_floor
from gateway.commission import (
    LINK_FAILURES,
    Answer,
    BlockRead,
    Link,
    MeterCheck,
    SerialTarget,
    Target,
    TcpTarget,
    UnitScan,
    check_live,
    exception_meaning,
    scan_units,
)
from gateway.config import (
    Cjt188Meter,
    Dlt645Meter,
    FastClockConfig,
    MbusMeter,
    MqttMeter,
    OcppMeter,
    SiteConfig,
    load_site,
)
from gateway.errors import ConfigError, EvidenceStoreError, GatewayError, IntervalError
from gateway.evidence_config import DEFAULT_KEY_FILE, DEFAULT_STATE_DIR
from gateway.line_cli import add_line_commands
from gateway.runtime import Gateway, IntervalSink, MemorySink
from gateway.siteinit_lines import line_addresses, line_request
from gateway.status import StatusServer, gateway_status

log = logging.getLogger("puhui.gateway")


EXIT_STATUS = (
    "exit status: 0 done; 1 a device, bus, meter or the state directory failed (disk full, "
    "read-only, permission denied); 2 a usage or config error (the message names the file and field)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("check", help="validate a site config and print what it will poll")
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.add_argument("--live", action="store_true", help="then read every enabled meter once")
    p.add_argument(
        "--mqtt-wait", type=seconds(600), default=30.0, metavar="S", help="with --live: seconds to wait "
        "for one message per MQTT meter (default 30)",
    )  # fmt: skip
    p.set_defaults(func=_check)

    p = sub.add_parser("probe", help="read one register block once; print raw words and decodings")
    _add_target_arguments(p)
    p.add_argument("--unit", type=bounded("unit id", 0, 255), required=True)
    p.add_argument("--address", type=bounded("address", 0, 0xFFFF), required=True, help="0-based; 72 or 0x48")
    p.add_argument("--count", type=bounded("count", 1, 125), required=True, help="registers (1-125)")
    p.add_argument("--table", choices=["holding", "input"], default="holding", help="default holding (fc3)")
    p.add_argument("--all", action="store_true", help="print every decoding, not only plausible ones")
    p.add_argument("--timeout", type=seconds(10), default=2.0, metavar="S", help="default 2 s")
    p.set_defaults(func=_probe)

    p = sub.add_parser("scan", help="find the unit ids that answer on a TCP gateway or serial bus")
    _add_target_arguments(p)
    p.add_argument(
        "--units", type=_unit_list, default=list(range(1, 248)), help="e.g. 1-247 (default), 1,3,10-20"
    )
    p.add_argument("--address", type=bounded("address", 0, 0xFFFF), default=0, help="default 0")
    p.add_argument("--count", type=bounded("count", 1, 125), default=1, help="default 1")
    p.add_argument("--table", choices=["holding", "input"], default="holding", help="default holding (fc3)")
    p.add_argument("--timeout", type=seconds(10), default=0.3, metavar="S", help="per unit, default 0.3 s")
    p.add_argument("--sunspec", action="store_true", help="look for the SunSpec marker on units that answer")
    p.set_defaults(func=_scan)

    add_line_commands(sub)

    _add_init_parser(sub)

    p = sub.add_parser("run", help="run acquisition (and the evidence pipeline) until stopped")
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.add_argument(
        "--dry-run", action="store_true", help="keep intervals in memory: no key, no outbox, no uplink"
    )
    p.add_argument("--status-port", type=int, help="override status.port (0: any free port)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_run)

    p = sub.add_parser("keygen", help="create the gateway's private key at evidence.key_file")
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.set_defaults(func=_keygen)

    p = sub.add_parser(
        "rotate-key", help="announce a new signing key in the chain and switch to it (gateway stopped)"
    )
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.set_defaults(func=_rotate_key)

    p = sub.add_parser("enrol", help="write the enrolment document the aggregator imports")
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.add_argument("--out", type=Path, help="file to write (default: stdout)")
    p.set_defaults(func=_enrol)


def _add_init_parser(sub: Any) -> None:
    p = sub.add_parser(
        "init", help="write a first site config from a scan, create the key, write the enrolment"
    )
    _add_target_arguments(p)
    p.add_argument("--units", type=_unit_list, help="Modbus unit ids to scan, default 1-247")
    line = p.add_argument_group(
        "a shared line (DL/T 645, CJ/T 188; --host/--port of its serial server or --serial, 2400 8E1 "
        "unless --baud/--parity)"
    )
    line.add_argument("--dlt645", action="store_true", help="scan the line for DL/T 645 meters")
    line.add_argument("--cjt188", action="store_true", help="scan the line for CJ/T 188 heat meters")
    line.add_argument(
        "--addresses", type=line_addresses, help="the installation list: 12 digits (DL/T 645) or 14 "
        "(CJ/T 188), commas; default: read address to the wildcard (one meter per protocol on the line)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=seconds(10), metavar="S",
        help="per Modbus unit (default 0.3 s), DL/T 645 meter (1 s), CJ/T 188 meter (2 s)",
    )  # fmt: skip
    p.add_argument("--gateway-id", required=True, help="letters, digits, . _ - (used in MQTT topics)")
    p.add_argument("--site", required=True, help="the site's name, as the operator knows it")
    p.add_argument("--config", type=Path, default=Path("/etc/puhui/site.yaml"), help="file to write")
    p.add_argument("--key-file", default=DEFAULT_KEY_FILE, help=f"default {DEFAULT_KEY_FILE}")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}")
    p.add_argument("--enrolment", type=Path, help="default: enrolment.json beside the config")
    p.add_argument("--owner", help="the services' user (puhui): owns the key, reads the config")
    p.add_argument("--force", action="store_true", help="replace an existing config (never the key)")
    p.add_argument("--mqtt-host", help="also list the MQTT topics published on this broker")
    p.add_argument("--mqtt-port", type=bounded("TCP port", 1, 65535), default=1883)
    p.add_argument("--mqtt-wait", type=seconds(600), default=10.0, metavar="S", help="default 10 s")
    p.set_defaults(func=_init, address=0, count=1)


def _init(args: argparse.Namespace) -> int:
    from gateway.siteinit import init_site

    try:
        line = line_request(args) if args.dlt645 or args.cjt188 else None
        target = _init_target(args) if line is None else None
    except (UsageError, ValueError) as exc:
        return fail(f"init: {exc}")
    _quiet_pymodbus()
    return init_site(args, target, on_unit=_print_unit, enrol=enrolment_for, line=line)


def _init_target(args: argparse.Namespace) -> Target:
    """The Modbus bus init scans (and its defaults: units 1-247, 0.3 s each)."""
    if args.addresses is not None:
        raise UsageError("--addresses goes with --dlt645 or --cjt188 (the meters of a shared line)")
    if args.host is None and args.serial is None:
        raise UsageError(
            "give --host (Modbus TCP) or --serial (Modbus RTU) to scan; with --dlt645 / --cjt188, the line "
            "of DL/T 645 / CJ/T 188 meters"
        )
    args.units = list(range(1, 248)) if args.units is None else args.units
    args.timeout = 0.3 if args.timeout is None else args.timeout
    return _target(args)


def _load(path: Path) -> SiteConfig:
    return load_site(path)


def make_clock(site: SiteConfig) -> Clock:
    if isinstance(site.clock, FastClockConfig):
        return FastClock(site.clock.epoch, site.clock.factor, site.clock.wall_start)
    return SystemClock()


def _source_name(meter: object) -> str:
    """What a meter without a profile reads: inline registers, an MQTT topic, a line address."""
    if isinstance(meter, Dlt645Meter | Cjt188Meter):
        return f"address {meter.connection.address}"
    if isinstance(meter, MbusMeter):
        c = meter.connection
        return f"mbus address {c.address}" if c.address is not None else f"mbus {c.secondary_address}"
    if isinstance(meter, OcppMeter):
        return f"ocpp {meter.connection.charger} #{meter.connection.connector}"
    return "mqtt topic" if getattr(meter, "driver", "") == "mqtt" else "inline registers"


def make_clock_guard(site: SiteConfig, clock: Clock, source: SyncSource | None = None) -> ClockGuard | None:
    """The guard of a system clock (kernel sync state unless ``require_sync: false``, and the
    build floor); None for simulated time, which is what the simulation says it is."""
    if isinstance(site.clock, FastClockConfig):
        return None
    if source is None:
        source = KernelSync() if site.clock.require_sync else AssumeSynchronised()
    return ClockGuard(clock, source, floor=build_floor(), gateway=site.gateway.id)


def _check(args: argparse.Namespace) -> int:
    try:
        site = _load(args.config)
        # What run builds before it connects (plan, interval builder), so check accepts
        # only what run runs.
        plan = Gateway(site, clock=make_clock(site), sink=MemorySink()).plan
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except IntervalError as exc:
        return fail(f"{args.config.name}: {exc}")
    print(f"{args.config}: gateway {site.gateway.id} at {site.gateway.site}: config is valid")
    print(f"  {site.interval_minutes}-minute intervals, {len(plan.series)} series")
    for m in site.meters:
        state = "" if m.enabled else " (disabled)"
        source = getattr(m, "profile", None) or _source_name(m)
        print(f"  {m.id:24} {m.driver:11} {source:22} counts {', '.join(m.counts)}{state}")
    for note in unconfirmed_notes(site, load_profiles()):
        print(f"  note: {note}")
    for spec in plan.series:
        if spec.per_session:  # valid, but what most EV methodologies will not credit: say so now
            print(
                f"  note: {spec.meter} counts {spec.quantity}, a per-session counter (it restarts with "
                "every charging session): parameter sets that require a lifetime register refuse it "
                "(config/methodologies/ev-charging-jjj*.yaml: per_session_counters: refuse); count the "
                "charger's lifetime energy register where it has one"
            )
    if args.live:
        if any(isinstance(m, OcppMeter) and m.enabled for m in site.meters):
            print("  note: OCPP connectors are not read by --live (their chargers connect to the running "
                  "gateway and push): start it and watch its status page")  # fmt: skip
        return _check_live(site, args.mqtt_wait)
    return 0


def unconfirmed_notes(site: SiteConfig, profiles: Mapping[str, Profile]) -> list[str]:
    """What a profile says it could not confirm about a quantity a meter counts."""
    notes = []
    for m in site.meters:
        name = getattr(m, "profile", None)
        if not m.enabled or name is None or name not in profiles:
            continue
        fields = profiles[name].quantities
        for q in m.counts:
            f = fields.get(q)
            if f is not None and f.unconfirmed:
                notes.append(
                    f"{m.id} counts {q}: profile {name} says it is unconfirmed ({f.unconfirmed}); "
                    "check it against the meter's display once (puhui gateway check --live)"
                )
    return notes


def _run(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(args.log_level)  # handler set up by puhui.cli
    logging.getLogger("pymodbus").setLevel(logging.ERROR)  # device failures: one line per state change
    try:
        site = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.status_port is not None:
        site = site.model_copy(update={"status": site.status.model_copy(update={"port": args.status_port})})
    try:
        asyncio.run(run_until_stopped(site, dry_run=args.dry_run, own_process=True))
    except (EvidenceError, GatewayError, DriverError, NotifyError, BaseExceptionGroup) as exc:
        return _failed_run(args.config, exc)
    return 0


def _failed_run(config: Path, exc: BaseException) -> int:
    """Report why ``run`` stopped, one line per distinct error (tasks that failed together
    arrive as an exception group). Not our error: re-raised, a bug shows its traceback."""
    errors = _leaves(exc)
    if not all(isinstance(e, EvidenceError | GatewayError | DriverError | NotifyError) for e in errors):
        raise exc
    for message in dict.fromkeys(str(e) for e in errors):
        print(f"puhui gateway: {config}: {message}", file=sys.stderr)
    if any(isinstance(e, NotifyError) for e in errors):
        return 1  # systemd's socket, not the config
    if any(isinstance(e, EvidenceStoreError) for e in errors):
        print(
            "puhui gateway: stopped; what was committed stays in the state directory and the counters "
            "resume from it at the next start (energy metered while stopped is counted then)",
            file=sys.stderr,
        )
        return 1
    return 2  # a key, password or certificate file the config names, or the config itself


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def tune_gc() -> None:
    """Once polling: what start-up loaded (modules, config models, plans) moves out of the
    collector's sight, and young objects are collected every 10,000 allocations instead of
    700. A poll allocates a few dozen short-lived objects and almost no cycles; the default
    ran a collection every few dozen polls over all of them (bench_resources: CPU per read)."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def run_until_stopped(
    site: SiteConfig,
    *,
    dry_run: bool = False,
    stop: asyncio.Event | None = None,
    sync_source: SyncSource | None = None,
    own_process: bool = False,
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set). ``sync_source``: where the
    clock guard reads the clock's sync state (default: the kernel). ``own_process``: the
    process is the gateway's (``puhui gateway run``): its garbage collector is tuned."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clock = make_clock(site)
    guard = make_clock_guard(site, clock, sync_source)
    notifier = ServiceNotifier()  # systemd Type=notify: READY=1 once polling, then watchdog pings
    try:
        async with contextlib.AsyncExitStack() as stack:
            sink, evidence_status = await _open_sink(stack, site, clock, guard, dry_run)
            gateway = await stack.enter_async_context(
                Gateway(site, clock=clock, sink=sink, clock_guard=guard)
            )
            if site.status.enabled:
                await stack.enter_async_context(
                    StatusServer(site.status, lambda: status_of(gateway, evidence_status()))
                )
            await stack.enter_async_context(notifier)
            notifier.ready(f"gateway {site.gateway.id}: polling {len(site.meters)} meter(s)")
            if own_process:
                tune_gc()
            await stop.wait()
            log.info("gateway %s: stopping", site.gateway.id)
            notifier.stopping()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _open_sink(
    stack: contextlib.AsyncExitStack, site: SiteConfig, clock: Clock, guard: ClockGuard | None, dry_run: bool
) -> tuple[IntervalSink, Any]:
    if dry_run:
        log.warning("gateway %s: dry run: intervals stay in memory, nothing is sealed", site.gateway.id)
        return MemorySink(), dict
    evidence = site.evidence
    from evidence.keys import load_private_key
    from gateway.pipeline import EvidencePipeline
    from gateway.rotation import finish_rotation
    from gateway.store import EvidenceStore

    store = EvidenceStore.open(evidence.state_dir, gateway_id=site.gateway.id)
    try:
        finish_rotation(evidence, store)  # a rotation interrupted after its batch was sealed
    finally:
        store.close()
    key = load_private_key(Path(evidence.key_file))
    pipeline = EvidencePipeline(
        evidence, site.uplink, gateway_id=site.gateway.id, key=key, clock=clock, clock_guard=guard
    )
    await stack.enter_async_context(pipeline)
    return pipeline, pipeline.status


def status_of(gateway: Gateway, evidence: Mapping[str, Any] | None) -> dict[str, Any]:
    """The status document of a running gateway."""
    devices = gateway.poller.health if gateway.poller is not None else {}
    mqtt: dict[str, Any] = {}
    for subscriber in gateway.subscribers:
        mqtt.update(subscriber.health)
    counts = dict(vars(gateway.builder.counts))
    counts["closed"] = gateway.closed_intervals
    counts["held_back_samples"] = gateway.held_back_samples
    counts["last_end"] = gateway.last_closed_end
    if gateway.ocpp_sessions is not None:  # OCPP: session records and what the endpoint saw
        c = gateway.ocpp_sessions.counts
        counts.update(ocpp_sessions_started=c.started, ocpp_sessions_closed=c.closed,
                      ocpp_sessions_meter_signed=c.meter_signed, ocpp_frame_problems=c.problems,
                      ocpp_unconfigured_samples=c.unconfigured_samples)  # fmt: skip
        endpoint = gateway.ocpp
        connected = getattr(endpoint, "connected", None)  # the controller's set; the tap's links say
        if connected is None and endpoint is not None:
            connected = {name for name, link in getattr(endpoint, "links", {}).items() if link.connected}
        counts["ocpp_chargers_connected"] = len(connected or ())
    guard = gateway.clock_guard
    clock = guard.status() if guard is not None else {"ok": True, "detail": "simulated time (fast clock)"}
    return gateway_status(
        gateway.site.gateway.id, gateway.site.gateway.site, devices, mqtt, counts, evidence, clock=clock,
        readings=_readings(gateway),
    )  # fmt: skip


def _readings(gateway: Gateway) -> dict[str, dict[str, dict[str, Any]]]:
    units = gateway.reading_units()
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for meter, samples in gateway.last_readings.items():
        out[meter] = {
            q: {"value": s.value if not isinstance(s.value, Invalid) else str(s.value),
                "unit": units.get((meter, q), ""), "at": s.time}
            for q, s in samples.items()
        }  # fmt: skip
    return out


def _keygen(args: argparse.Namespace) -> int:
    from evidence.keys import generate_key, key_id, save_private_key

    try:
        site = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    evidence = site.evidence
    path = Path(evidence.key_file)
    key = generate_key()
    try:
        save_private_key(key, path)
    except (EvidenceError, FileExistsError) as exc:
        return fail(f"{path}: {exc}")
    print(f"{path}: new P-256 key, key id {key_id(key.public_key)}")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from gateway.rotation import rotate_key

    try:
        site = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        done = rotate_key(site.evidence, gateway_id=site.gateway.id, clock=make_clock(site))
    except GatewayError as exc:
        print(f"puhui gateway: {exc}", file=sys.stderr)
        return 1
    print(
        f"{site.evidence.key_file}: key {done.old_key_id} -> {done.new_key_id}; announced in batch "
        f"seq {done.batch_seq} (signed by the old key), new key from seq {done.effective_seq}"
    )
    return 0


def _enrol(args: argparse.Namespace) -> int:
    from evidence.keys import load_private_key

    try:
        site = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    evidence = site.evidence
    try:
        key = load_private_key(Path(evidence.key_file))
    except EvidenceError as exc:
        return fail(str(exc))
    document = enrolment_for(site, key, created_ms=int(time.time() * 1000))
    if args.out is None:
        sys.stdout.buffer.write(document)
    else:
        args.out.write_bytes(document)
        print(f"{args.out}: enrolment of {site.gateway.id}, key {key.key_id}, {len(site.meters)} meters")
    return 0


def enrolment_for(site: SiteConfig, key: GatewayKey, *, created_ms: int) -> bytes:
    """The signed enrolment document of this gateway: id, site, grid region, public key
    and every enabled meter with its scenario and nameplate."""
    meters = [
        EnrolledMeter(
            id=m.id,
            scenario=m.scenario,
            rated_power_kw=m.nameplate.rated_power_kw,
            meter_class=m.nameplate.meter_class,
            calibrated_until=m.nameplate.calibrated_until,
        )
        for m in site.meters
        if m.enabled
    ]
    doc = make_enrolment(
        key, gateway=site.gateway.id, site=site.gateway.site, meters=meters, created_ms=created_ms,
        region=site.gateway.grid_region,
    )  # fmt: skip
    return doc.to_bytes()


# -- commissioning: probe, scan, check --live (logic in gateway.commission) -------------------


def _unit_list(text: str) -> list[int]:
    """``1-247`` or ``1,3,10-20`` -> unit ids in order, each once."""
    units: dict[int, None] = {}
    unit = bounded("unit id", 0, 255)
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        first, last = unit(low), unit(high) if dash else unit(low)
        if first > last:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: empty range")
        units.update(dict.fromkeys(range(first, last + 1)))
    return list(units)


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where (give --host for Modbus TCP or --serial for Modbus RTU)")
    where.add_argument("--host", help="Modbus TCP device or TCP-to-RTU gateway")
    where.add_argument("--port", type=bounded("TCP port", 1, 65535), help="TCP port (default 502)")
    where.add_argument("--serial", metavar="DEV", help="RS-485 adapter, e.g. /dev/ttyUSB0")
    where.add_argument("--baud", type=int, choices=BAUDRATES, help="serial speed (default 9600)")
    where.add_argument("--parity", choices=["N", "E", "O"], help="serial parity (default N)")
    where.add_argument("--stopbits", type=int, choices=[1, 2], help="serial stop bits (default 1)")


def _target(args: argparse.Namespace) -> Target:
    """Where ``probe`` and ``scan`` read (and that the block they read exists)."""
    if args.address + args.count > 0x10000:
        raise UsageError(f"--address {args.address} + --count {args.count} runs past register 65535")
    serial_options = [f"--{n}" for n in ("baud", "parity", "stopbits") if getattr(args, n) is not None]
    if (args.host is None) == (args.serial is None):
        raise UsageError("give either --host (Modbus TCP) or --serial (Modbus RTU)")
    if args.host is not None:
        if serial_options:
            raise UsageError(f"{', '.join(serial_options)} only go with --serial")
        return TcpTarget(args.host, 502 if args.port is None else args.port)
    if args.port is not None:
        raise UsageError("--port goes with --host; a serial line has --baud, --parity, --stopbits")
    return SerialTarget(args.serial, args.baud or 9600, args.parity or "N", args.stopbits or 1)


def _quiet_pymodbus() -> None:
    # Every failed read is reported by the command itself, in one line naming the device.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _probe(args: argparse.Namespace) -> int:
    try:
        target = _target(args)
    except UsageError as exc:
        return fail(f"probe: {exc}")
    _quiet_pymodbus()
    read = asyncio.run(_read_once(target, args))
    if read.answer is not Answer.DATA:
        print(f"puhui gateway probe: {read.error}", file=sys.stderr)
        return 1
    print(f"{read.where}: {read.count} register(s) in {read.latency_s * 1000:.0f} ms")
    _print_words(read)
    lines = probe(read.registers, base_address=read.address)
    shown = lines if args.all else [line for line in lines if line.plausible]
    which = "every decoding" if args.all else "plausible decodings"
    print(f"{which} ({len(shown)} of {len(lines)}{'' if args.all else '; --all for every one'}):")
    print(f"    {'address':>7} {'type':<8} {'order':<5} value")
    for line in shown:
        print(f"  {'*' if line.plausible else ' '} {line.address:7d} {line.type.value:<8} "
              f"{line.order.value:<5} {_probe_value(line)}")  # fmt: skip
    return 0


async def _read_once(target: Target, args: argparse.Namespace) -> BlockRead:
    async with Link(target, timeout_s=args.timeout) as link:
        return await link.read_block(args.unit, args.table, args.address, args.count)


def _print_words(read: BlockRead) -> None:
    base = 30001 if read.table == "input" else 40001
    print(f"  {'address':>14} {'ref':>6} {'hex':>6} {'dec':>6}")
    for offset, word in enumerate(read.registers):
        address = read.address + offset
        ref = str(base + address) if address < 9999 else ""  # 3xxxx / 4xxxx, as manuals print them
        print(f"  0x{address:04X} ({address:5d}) {ref:>6} 0x{word:04X} {word:6d}")


def _probe_value(line: ProbeLine) -> str:
    value = line.value
    if isinstance(value, Invalid):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    if line.type is RegisterType.FLOAT32:
        return f"{value:.7g}"  # float32 carries about 7 significant digits
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def _scan(args: argparse.Namespace) -> int:
    try:
        target = _target(args)
    except UsageError as exc:
        return fail(f"scan: {exc}")
    _quiet_pymodbus()
    units = args.units
    print(f"scan {target}: unit(s) {_ranges(units)}, reading {args.table} 0x{args.address:04X} "
          f"({args.address}) x{args.count}, {args.timeout:g} s per unit")  # fmt: skip
    results = asyncio.run(_scan_all(target, args))
    silent = [r.unit for r in results if r.read.answer is Answer.TIMEOUT]
    found = [r.unit for r in results if r.read.present]
    if results and results[-1].read.answer in LINK_FAILURES:
        print(f"puhui gateway scan: {results[-1].read.error}", file=sys.stderr)
        return 1
    if silent:
        print(f"  no answer within {args.timeout:g} s: unit(s) {_ranges(silent)}")
    print(f"{len(found)} device(s) found" + (f": unit(s) {_ranges(found)}" if found else ""))
    return 0 if found else 1


async def _scan_all(target: Target, args: argparse.Namespace) -> list[UnitScan]:
    results: list[UnitScan] = []
    async with Link(target, timeout_s=args.timeout) as link:
        scan = scan_units(
            link, args.units, table=args.table, address=args.address, count=args.count, sunspec=args.sunspec
        )
        async for result in scan:
            results.append(result)
            if result.read.answer not in LINK_FAILURES:
                _print_unit(result)
    return results


def _print_unit(result: UnitScan) -> None:
    read = result.read
    if read.answer is Answer.DATA:
        words = " ".join(f"0x{w:04X}" for w in read.registers[:8])
        print(f"  unit {result.unit:3d}  answers: {words}{' ...' if read.count > 8 else ''}", flush=True)
    elif read.answer is Answer.EXCEPTION:
        meaning = exception_meaning(read.exception_code)
        state = "answers with exception" if read.present else "gateway reports no device, exception"
        print(f"  unit {result.unit:3d}  {state} {meaning}", flush=True)
    elif read.answer is Answer.ERROR:
        print(f"  unit {result.unit:3d}  garbled answer: {read.error}", flush=True)
    finding = result.sunspec
    if finding is None:
        return
    if finding.chain is not None:
        models = ", ".join(str(b.id) for b in finding.chain.blocks)
        print(f"            SunSpec marker 'SunS' at {finding.chain.base}: models {models}", flush=True)
    else:
        print(f"            {finding.error or 'no SunSpec marker at 40000, 0 or 50000'}", flush=True)


def _ranges(units: list[int]) -> str:
    """[1, 2, 3, 7] -> ``1-3, 7``."""
    out: list[str] = []
    start = prev = None
    for u in [*units, None]:
        if u is not None and prev is not None and u == prev + 1:
            prev = u
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = u
    return ", ".join(out)


def _check_live(site: SiteConfig, mqtt_wait_s: float) -> int:
    _quiet_pymodbus()
    clock = SystemClock()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock.now()))
    mqtt = any(isinstance(m, MqttMeter) and m.enabled for m in site.meters)
    wait = f", up to {mqtt_wait_s:g} s for one message per MQTT meter" if mqtt else ""
    print(f"live check at {when} (system clock): each Modbus, DL/T 645 and CJ/T 188 meter read once{wait}")
    checks = asyncio.run(check_live(site, load_profiles(), clock, mqtt_wait_s=mqtt_wait_s))
    for check in checks:
        _print_check(check)
    print(_key_line(site))
    failed = [c.meter for c in checks if not c.ok]
    warned = sum(len(c.warnings) for c in checks)
    summary = f"{len(checks) - len(failed)} of {len(checks)} meter(s) ok, {warned} warning(s)"
    print(summary + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _key_line(site: SiteConfig) -> str:
    """The signing key the gateway will use, by the id its enrolment carries."""
    from evidence.keys import load_private_key

    path = site.evidence.key_file
    try:
        return f"  key {path}: key id {load_private_key(Path(path)).key_id} (compare with the enrolment)"
    except EvidenceError as exc:
        return f"  key: {exc} (puhui gateway keygen makes one)"


def _print_check(check: MeterCheck) -> None:
    if check.ok:
        state = "ok" + (f" ({check.latency_s * 1000:.0f} ms)" if check.latency_s is not None else "")
    else:
        state = "FAILED"
    print(f"  {check.meter:24} {check.driver:11} {check.where}: {state}")
    if check.error is not None:
        print(f"      {check.error}")
    if check.missing:
        print(f"      no reading of counted quantity {', '.join(check.missing)}")
    for r in check.readings:
        value = str(r.value) if isinstance(r.value, Invalid) else _number(r.value)
        print(f"      {r.quantity:22} {value:>14} {r.unit:<5} {'counted' if r.counted else ''}".rstrip())
    for warning in check.warnings:
        print(f"      warning: {warning}")


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 1e6 else f"{value:.7g}"  # float32 holds ~7 digits
