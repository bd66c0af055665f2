"""``puhui demo``: three carbon-inclusive sites on one machine, from meter to signed reduction.

What runs (every process on 127.0.0.1, one fast clock shared through a FastClockSpec):

- a private Mosquitto and InfluxDB (:mod:`testbed.servers`), secured as a site is
  (:mod:`puhui.demo.security`): a demo CA, TLS with client certificates and the access list
  on the broker, InfluxDB users with passwords in 0600 files;
- the firmware_sim fleet ``config/fleets/demo.yaml`` in this process: a Zhangjiakou
  clean-heating village (heat pumps, heat meters, electric boilers on RS-485), a rooftop-PV
  street (SunSpec inverters and grid meters, a Tasmota plug) and a charging depot (Alfen,
  ABB), served over Modbus TCP/RTU and MQTT; or another fleet file (``--fleet``), e.g.
  ``config/fleets/village-dlt645-cjt188.yaml``: DL/T 645 and CJ/T 188 meters on one RS-485
  line behind a simulated transparent serial server (:mod:`puhui.demo.lines`);
- the aggregator, ``python -m puhui aggregator run``, with its key (``puhui aggregator
  keygen``), the enrolled gateways (``puhui aggregator gateways add``), evidence store and
  InfluxDB writer;
- one gateway per site, ``python -m puhui gateway run``, with its key (``puhui gateway
  keygen``), enrolment (``puhui gateway enrol``) and a site config from
  :func:`puhui.sitegen.site_for` plus ``clock``/``evidence``/``uplink``/``status`` sections
  (:mod:`puhui.demo.setup`).

Faults injected on the way: a broker outage, a meter replaced (counter reset), a dead meter.
Afterwards the methodology engine computes and signs one statement per scenario from the
aggregator's evidence store (:mod:`puhui.demo.report`), and :mod:`puhui.demo.truth` checks
every ER against ER computed from the simulator's ground truth with the same parameter set.

Everything started here is stopped on exit, Ctrl-C included (``--keep-servers`` leaves
Mosquitto and InfluxDB up). Files are under ``--out`` (default ``demo-out/``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from common.clock import FastClock
from puhui.broker import find_plugin
from puhui.demo import report
from puhui.demo.model import Fault, Run, fmt_time, utc
from puhui.demo.security import (
    AGGREGATOR,
    INFLUX_ADMIN,
    INFLUX_READER,
    INFLUX_WRITER,
    DemoSite,
    InfluxUsers,
    make_demo_site,
    make_influx_users,
    secure_broker,
)
from puhui.demo.setup import (
    INFLUX_DB,
    REPO,
    Child,
    DemoMissing,
    GatewayRun,
    check_alive,
    children,
    drain,
    enrol,
    gateway_status,
    make_gateway,
    make_keys,
    puhui_argv,
    wait_gateways_ready,
    write_aggregator_config,
)
from puhui.pki import PkiError
from testbed.servers import PrivateInfluxDB, PrivateMosquitto, ServerError, find_binary

DEFAULT_FLEET = REPO / "config" / "fleets" / "demo.yaml"
MARKER = ".puhui-demo"
KEPT = "servers-kept.pid"  # PIDs of the servers a --keep-servers run left running
__all__ = [
    "INFLUX_DB",
    "DemoMissing",
    "Fault",
    "Run",
    "add_arguments",
    "fmt_time",
    "main",
    "puhui_argv",
    "utc",
]


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=float, default=3.0, help="simulated days to credit (default 3)")
    parser.add_argument(
        "--speed", type=float, default=1440.0, help="clock factor: simulated s per wall s (default 1440)"
    )
    parser.add_argument("--sites", help="comma-separated fleet sites to run (default: all three)")
    parser.add_argument(
        "--poll", type=float, default=300.0, help="meter poll period, simulated s (default 300)"
    )
    parser.add_argument("--fleet", type=Path, default=DEFAULT_FLEET, help="fleet file (default demo.yaml)")
    parser.add_argument("--no-faults", action="store_true", help="inject no faults")
    parser.add_argument("--keep-servers", action="store_true", help="leave Mosquitto and InfluxDB running")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output directory (default demo-out/)"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    print("puhui demo: meters -> gateways -> aggregator -> InfluxDB -> signed reductions")
    problems = _prerequisites(args)
    if problems:
        print("\nCANNOT RUN THE DEMO:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_demo(args))
    except DemoMissing as exc:
        print(f"\nDEMO INCOMPLETE: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("\ninterrupted: every process the demo started has been stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("\nterminated (SIGTERM): every process the demo started has been stopped", file=sys.stderr)
        return 143


def _prerequisites(args: argparse.Namespace) -> list[str]:
    problems = []
    for binary, package in (("mosquitto", "mosquitto"), ("influxd", "influxdb")):
        try:
            find_binary(binary, package)
        except ServerError as exc:
            problems.append(str(exc))
    try:
        find_plugin()  # the broker's access list runs in Mosquitto's dynamic security plugin
    except PkiError as exc:
        problems.append(str(exc))
    if not args.days > 0 or not args.speed > 0 or not args.poll > 0:
        problems.append("--days, --speed and --poll must be > 0")
    elif 900 % args.poll:
        problems.append(f"--poll {args.poll:g}: must divide the 900 s interval (e.g. 60, 100, 150, 300, 450)")
    if not args.fleet.is_file():
        problems.append(f"{args.fleet}: no such fleet file")
    return problems


def prepare_out(out: Path) -> Path:
    """A fresh output directory; a previous demo's is replaced, anything else is refused."""
    out = out.absolute()
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise DemoMissing(f"{out} exists and is not a demo output directory: choose another --out")
        kept = (out / KEPT).read_text().split() if (out / KEPT).exists() else []
        alive = [p for p in kept if Path(f"/proc/{p}").exists()]
        if alive:
            raise DemoMissing(
                f"the servers a --keep-servers run left in {out} still run: kill {' '.join(alive)}"
            )
        shutil.rmtree(out)
    for sub in ("servers", "aggregator", "gateways", "logs", "statements"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by puhui demo; replaced by the next run\n", encoding="utf-8")
    return out


# -- the run ------------------------------------------------------------------------------------


async def run_demo(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    task = asyncio.current_task()
    if task is not None:  # SIGTERM (timeout, a supervisor) stops everything like Ctrl-C
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    out = prepare_out(args.out)
    log_to_file(out / "logs" / "demo.log")
    keep = bool(args.keep_servers)
    config = load_fleet_config(args.fleet, args.sites, args.poll)
    demo = make_demo_site(out, config)
    # A kept server outlives the demo on every start, the broker's restart after the outage
    # fault included (it used to die with the demo: a printed address nobody answered).
    broker = secure_broker(out / "servers" / "mosquitto", demo, outlive_parent=keep)
    influxd = PrivateInfluxDB(out / "servers" / "influxdb", auth_enabled=True, outlive_parent=keep)
    try:
        broker.start()
        influxd.start()
        users = await make_influx_users(
            influxd.url, INFLUX_DB, out / "aggregator" / "influx.password", out / "servers" / "influxdb-users"
        )
        _print_servers(out, demo, broker, users)
        run = await simulate(args, out, on_broker(config, broker, demo), broker, demo, users, t_start)
        run.wall["report_start"] = time.monotonic() - t_start
        code = await report.report(run)
        run.wall["total"] = time.monotonic() - t_start
        print(
            f"\nwall time: {run.wall['total']:.0f} s (setup {run.wall['setup']:.0f} s, "
            f"simulation {run.wall['simulation']:.0f} s, drain {run.wall['drain']:.0f} s, "
            f"report {run.wall['total'] - run.wall['report_start']:.0f} s)"
        )
        if keep:  # also after a failed check: that is when one wants to look
            _print_kept(out, demo, broker, influxd, users)
            return code
    except BaseException:
        keep = False  # Ctrl-C or failure: stop everything
        raise
    finally:
        if not keep:
            broker.stop()
            influxd.stop()
    return code


def log_to_file(path: Path) -> None:
    """This process's log (the simulated fleet's reconnects and the like) goes to a file:
    the terminal shows the demo's own story; every child process has its own log too."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)


def _print_servers(out: Path, demo: DemoSite, broker: PrivateMosquitto, users: InfluxUsers) -> None:
    site = demo.site
    print(
        f"  servers (private, loopback): mosquitto {broker.host}:{broker.port} (TLS 1.2+, client "
        f"certificates of the demo CA {_rel(demo.layout.ca_cert, out)}, access list for "
        f"{len(site.roster)} identities: {', '.join(site.roster)}), influxd {users.url} "
        f"(authentication on; users {INFLUX_ADMIN}, {INFLUX_WRITER} (write), {INFLUX_READER} (read), "
        f"passwords in 0600 files under {_rel(users.reader.parent, out)}/ and "
        f"{_rel(users.writer, out)})"
    )


def _print_kept(
    out: Path, demo: DemoSite, broker: PrivateMosquitto, influxd: PrivateInfluxDB, users: InfluxUsers
) -> None:
    pids = f"{broker.pid} {influxd.pid}"
    (out / KEPT).write_text(pids + "\n", encoding="utf-8")
    tls = demo.tls(AGGREGATOR)
    print("\nservers left running (--keep-servers):")
    print(
        f"  mosquitto  {broker.host}:{broker.port}  pid {broker.pid}  TLS, client certificate required; the "
        f"aggregator's identity may read the batches (Debian package mosquitto-clients):\n"
        f"    mosquitto_sub -h {broker.host} -p {broker.port} --cafile {tls['ca_file']} "
        f"--cert {tls['cert_file']} --key {tls['key_file']} -t 'puhui/v1/+/batch' -v"
    )
    print(
        f"  influxd    {influxd.url}  pid {influxd.pid}  database {INFLUX_DB}, authentication on; "
        f"as the reader (password in {users.reader}, mode 0600):\n"
        f"    {users.curl('SHOW MEASUREMENTS')}"
    )
    print(f"  stop them: kill {pids}")


def _rel(path: Path, out: Path) -> str:
    try:
        return str(out.name / path.relative_to(out))
    except ValueError:
        return str(path)


def load_fleet_config(path: Path, sites: str | None, poll: float) -> Any:
    """The fleet file, cut to ``sites``, with ground truth logged per poll period (the check
    sums it to 900 s intervals; finer truth also lets it show where the gateway's readings
    fall)."""
    from firmware_sim import load_fleet

    config = load_fleet(path)
    truth_s = math.gcd(int(poll), 900) if float(poll).is_integer() else 900
    if truth_s % config.step_s == 0:
        config = config.model_copy(update={"truth_interval_s": truth_s})
    # The check takes true energy between each record's own readings: a step log per channel
    # (16 bytes a step: 35 meters, a week of 10 s steps, about 40 MB).
    config = config.model_copy(update={"truth_steps": True})
    if sites:
        wanted = [s.strip() for s in sites.split(",") if s.strip()]
        known = [s.name for s in config.sites]
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise DemoMissing(f"--sites: {unknown} not in {path.name} (sites: {', '.join(known)})")
        config = config.model_copy(update={"sites": [s for s in config.sites if s.name in wanted]})
    return config


def on_broker(config: Any, broker: PrivateMosquitto, demo: DemoSite) -> Any:
    """The fleet's MQTT meters publish to the private broker over TLS, as their identity."""
    if config.mqtt is None or demo.meter_publisher is None:
        return config
    mqtt = {"host": broker.host, "port": broker.port, "tls": demo.tls_settings(demo.meter_publisher)}
    return config.model_copy(update={"mqtt": config.mqtt.model_copy(update=mqtt)})


def lead_seconds(n_gateways: int) -> float:
    """Wall seconds between starting the fleet and the first credited interval: enough to
    enrol and start the aggregator and gateways (python start-up on a busy 2-core box)."""
    return 8.0 + 1.5 * n_gateways


async def simulate(
    args: argparse.Namespace,
    out: Path,
    config: Any,
    broker: PrivateMosquitto,
    demo: DemoSite,
    users: InfluxUsers,
    t0: float,
) -> Run:
    from firmware_sim import Fleet

    factor = float(args.speed)
    lead = lead_seconds(len(config.sites))
    clock = FastClock(config.clock.epoch_s, factor, time.time() + lead)
    notes: list[str] = []
    wall: dict[str, float] = {}
    async with Fleet(config, clock=clock) as fleet:
        if fleet.config.mqtt is not None:
            async with asyncio.timeout(20):
                await fleet.wait_mqtt_connected()
        kinds = {name: dev.kind for name, dev in fleet.devices.items()}
        heaters = heaters_of(config)
        agg = write_aggregator_config(out, broker, demo, users)
        gateways = [
            make_gateway(out, fleet, s.name, args.poll, clock, broker, agg, demo) for s in config.sites
        ]
        await make_keys(gateways, agg)
        await enrol(gateways, agg, notes)
        async with children(out, agg, gateways) as procs:
            await wait_gateways_ready(gateways, procs, deadline_s=60 + 5 * len(gateways))
            p0 = period_start(clock, config.clock.epoch_s, notes)
            p1 = p0 + round(args.days * 86_400 / 900) * 900
            if p1 <= p0:
                raise DemoMissing("--days is shorter than one 15-minute interval")
            wall["setup"] = time.monotonic() - t0
            print(
                f"  period: {fmt_time(p0)} .. {fmt_time(p1)} ({(p1 - p0) / 86400:g} simulated days, "
                f"clock x{factor:g}: about {(p1 - clock.now()) / factor:.0f} s of wall time)"
            )
            faults = [] if args.no_faults else plan_faults(p0, p1, fleet.devices, config)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(inject_faults(faults, clock, fleet, broker, gateways), name="demo-faults")
                tg.create_task(progress(clock, p0, p1, faults, procs), name="demo-progress")
            await final_status(gateways)
            wall["simulation"] = time.monotonic() - t0 - wall["setup"]
            await drain(out / "aggregator" / "evidence.sqlite3", gateways, p1, clock, procs, notes)
            wall["drain"] = time.monotonic() - t0 - wall["setup"] - wall["simulation"]
            truth = fleet.truth()
            steps = fleet.step_logs()
        (out / "truth.json").write_text(json.dumps(truth), encoding="utf-8")
    return Run(
        out=out,
        period=(p0, p1),
        factor=factor,
        poll_s=float(args.poll),
        gateways=gateways,
        faults=faults,
        truth=truth,
        fleet_kinds=kinds,
        db=agg["db"],
        aggregator_key=agg["key"],
        aggregator_pub=agg["pub"],
        influx=users,
        notes=notes,
        wall=wall,
        steps=steps,
        heaters=heaters,
    )


def heaters_of(config: Any) -> dict[str, str]:
    """Heating device -> its heater (heat pump or electric boiler), from the fleet config."""
    from firmware_sim.config import HeatingPhysics, expand

    specs = expand(config)
    return {s.name: s.config.physics.heater for s in specs if isinstance(s.config.physics, HeatingPhysics)}


async def final_status(gateways: list[GatewayRun]) -> None:
    """Each gateway's status document at the period's end (what it read, meter by meter)."""
    async with httpx.AsyncClient() as client:
        for gw in gateways:
            gw.final_status = await gateway_status(gw, client)


def period_start(clock: FastClock, epoch: float, notes: list[str]) -> int:
    """The fleet's epoch, or (if set-up took longer than planned) the first interval that
    every gateway saw whole."""
    now = clock.now()
    if now + 60 <= epoch:
        return int(epoch)
    p0 = (math.floor(now / 900) + 2) * 900
    notes.append(
        f"set-up took longer than planned: the period starts at {fmt_time(p0)} instead of {fmt_time(epoch)}"
    )
    return p0


# -- configs, keys, enrolment -------------------------------------------------------------------


# -- processes ----------------------------------------------------------------------------------


# -- faults and progress ------------------------------------------------------------------------


def plan_faults(p0: int, p1: int, devices: Any, config: Any) -> list[Fault]:
    """A broker outage at 25 % of the period (10 %, at most 3 h), a heat pump's meter replaced
    at 45 %, a PV grid meter (else a meter on a shared line) dead from 50 % (15 %, at most
    4 h): on a 3-day run, the outage is on day 1 18:00-21:00, the replacement day 2 08:24,
    the dead meter day 2 12:00-16:00."""
    span = p1 - p0
    faults = [
        Fault(
            "broker_outage", "mosquitto", None, p0 + 0.25 * span, p0 + 0.25 * span + min(3 * 3600, 0.1 * span)
        )
    ]
    sites = {d.name: d.site for d in devices.values()}
    replaced = _pick(devices, "hp-01-elec", lambda d: d.kind == "sdm630" and d.name.endswith("-elec"))
    if replaced is not None:
        t = p0 + 0.45 * span
        faults.append(Fault("meter_replaced", replaced, sites[replaced], t, t))
    dead = _pick(devices, "house-02-grid", lambda d: d.kind == "sunspec_meter")
    if dead is None:  # a fleet on a shared RS-485 line: one meter on it goes silent
        dead = _pick(devices, "hp-02-elec", lambda d: d.endpoint.transport == "line")
    if dead is not None:
        a = p0 + 0.5 * span
        faults.append(Fault("dead_meter", dead, sites[dead], a, a + min(4 * 3600, 0.15 * span)))
    return faults


def _pick(devices: Any, preferred: str, fits: Callable[[Any], bool]) -> str | None:
    if preferred in devices:
        return preferred
    return next((name for name, d in devices.items() if fits(d)), None)


async def inject_faults(
    faults: list[Fault], clock: FastClock, fleet: Any, broker: PrivateMosquitto, gateways: list[GatewayRun]
) -> None:
    events = sorted(
        [(f.start, 0, f) for f in faults] + [(f.end, 1, f) for f in faults if f.end > f.start],
        key=lambda e: (e[0], e[1]),
    )
    async with httpx.AsyncClient() as client:
        for t, phase, f in events:
            await clock.sleep_until(t)
            if phase == 0:
                await _fault_on(f, clock, fleet, broker)
            else:
                await _fault_off(f, clock, fleet, broker, gateways, client)


async def _fault_on(f: Fault, clock: FastClock, fleet: Any, broker: PrivateMosquitto) -> None:
    if f.kind == "broker_outage":
        broker.stop()
    elif f.kind == "meter_replaced":
        dev = fleet.devices[f.target]
        f.seen["counter_before_wh"] = dev.meter().counter_wh()
        dev.reset_counter(now=clock.now())
        f.seen["counter_after_wh"] = dev.meter().counter_wh()
    elif f.kind == "dead_meter":
        fleet.devices[f.target].set_faults(timeout=True)
    f.seen["wall_on"] = time.time()


async def _fault_off(
    f: Fault,
    clock: FastClock,
    fleet: Any,
    broker: PrivateMosquitto,
    gateways: list[GatewayRun],
    client: httpx.AsyncClient,
) -> None:
    if f.kind == "broker_outage":
        depth = {}
        for gw in gateways:  # what waited on disk while the broker was away
            st = await gateway_status(gw, client)
            ev = (st or {}).get("evidence") or {}
            depth[gw.id] = (
                ev.get("outbox_depth_batches"),
                ev.get("oldest_unacked_age_s"),
                ev.get("connected"),
            )
        f.seen["outbox_before_restart"] = depth
        broker.start()
    elif f.kind == "dead_meter":
        fleet.devices[f.target].clear_faults()
    f.seen["wall_off"] = time.time()


async def progress(clock: FastClock, p0: int, p1: int, faults: list[Fault], procs: list[Child]) -> None:
    """A bar on simulated time (stderr on a terminal; a line per simulated 12 h otherwise)."""
    tty = sys.stderr.isatty()
    next_line = p0
    while True:
        now = clock.now()
        check_alive(procs)
        active = [
            f"{f.kind.replace('_', ' ')} ({f.target})"
            for f in faults
            if f.start <= now < max(f.end, f.start + 900)
        ]
        frac = min(1.0, max(0.0, (now - p0) / (p1 - p0)))
        text = f"{_bar(frac)} {frac:4.0%}  {fmt_time(min(now, p1))}  {'; '.join(active)}"
        if tty:
            sys.stderr.write("\r" + text.ljust(110)[:110])
            sys.stderr.flush()
        elif now >= next_line or now >= p1:
            print("  " + text, flush=True)
            next_line = (math.floor(max(now, p0) / 43_200) + 1) * 43_200
        if now >= p1:
            if tty:
                sys.stderr.write("\n")
            return
        await asyncio.sleep(0.5)


def _bar(frac: float, width: int = 30) -> str:
    full = int(frac * width)
    return "[" + "#" * full + "-" * (width - full) + "]"


# -- after the period -----------------------------------------------------------------------------
