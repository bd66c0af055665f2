"""``puhui gateway``: run acquisition, check a site config, create the key, enrol.

::

    puhui gateway check --config site.yaml        # validate; print meters, series, polls
    puhui gateway run --config site.yaml          # until SIGTERM / Ctrl-C
    puhui gateway keygen --config site.yaml       # the gateway's P-256 key (0600, never overwritten)
    puhui gateway enrol --config site.yaml --out enrolment.json

``run`` logs one line per device state change and shuts down cleanly on SIGTERM or
SIGINT: polls are cancelled, closed intervals are already durable, and the interval
builder's state is persisted so the next start resumes the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drivers.profiles import load_profiles
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.errors import EvidenceError
from evidence.keys import GatewayKey
from gateway.config import FastClockConfig, SiteConfig, load_site
from gateway.errors import ConfigError
from gateway.runtime import Gateway, IntervalSink, MemorySink
from gateway.status import StatusServer, gateway_status
from puhui.clock import Clock, FastClock, SystemClock

log = logging.getLogger("puhui.gateway")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("check", help="validate a site config and print what it will poll")
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.set_defaults(func=_check)

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

    p = sub.add_parser("enrol", help="write the enrolment document the aggregator imports")
    p.add_argument("--config", type=Path, required=True, help="site YAML")
    p.add_argument("--out", type=Path, help="file to write (default: stdout)")
    p.set_defaults(func=_enrol)


def _fail(message: str) -> int:
    print(f"puhui gateway: {message}", file=sys.stderr)
    return 2


def _load(path: Path) -> SiteConfig:
    return load_site(path)


def make_clock(site: SiteConfig) -> Clock:
    if isinstance(site.clock, FastClockConfig):
        return FastClock(site.clock.epoch, site.clock.factor, site.clock.wall_start)
    return SystemClock()


def _check(args: argparse.Namespace) -> int:
    try:
        site = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from gateway.runtime import plan_site

    plan = plan_site(site, load_profiles())
    print(f"{args.config}: gateway {site.gateway.id} at {site.gateway.site}: config is valid")
    print(f"  {site.interval_minutes}-minute intervals, {len(plan.series)} series")
    for m in site.meters:
        state = "" if m.enabled else " (disabled)"
        source = getattr(m, "profile", None) or ("inline registers" if m.driver != "mqtt" else "mqtt topic")
        print(f"  {m.id:24} {m.driver:11} {source:22} counts {', '.join(m.counts)}{state}")
    return 0


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
        asyncio.run(run_until_stopped(site, dry_run=args.dry_run))
    except EvidenceError as exc:
        return _fail(f"{args.config}: {exc}")
    return 0


async def run_until_stopped(
    site: SiteConfig, *, dry_run: bool = False, stop: asyncio.Event | None = None
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    clock = make_clock(site)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sink, evidence_status = await _open_sink(stack, site, clock, dry_run)
            gateway = await stack.enter_async_context(Gateway(site, clock=clock, sink=sink))
            if site.status.enabled:
                await stack.enter_async_context(
                    StatusServer(site.status, lambda: status_of(gateway, evidence_status()))
                )
            await stop.wait()
            log.info("gateway %s: stopping", site.gateway.id)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _open_sink(
    stack: contextlib.AsyncExitStack, site: SiteConfig, clock: Clock, dry_run: bool
) -> tuple[IntervalSink, Any]:
    if dry_run:
        log.warning("gateway %s: dry run: intervals stay in memory, nothing is sealed", site.gateway.id)
        return MemorySink(), dict
    evidence = site.evidence
    from evidence.keys import load_private_key
    from gateway.pipeline import EvidencePipeline

    key = load_private_key(Path(evidence.key_file))
    pipeline = EvidencePipeline(evidence, site.uplink, gateway_id=site.gateway.id, key=key, clock=clock)
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
    return gateway_status(gateway.site.gateway.id, gateway.site.gateway.site, devices, mqtt, counts, evidence)


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
        return _fail(f"{path}: {exc}")
    print(f"{path}: new P-256 key, key id {key_id(key.public_key)}")
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
        return _fail(str(exc))
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
        )
        for m in site.meters
        if m.enabled
    ]
    doc = make_enrolment(
        key, gateway=site.gateway.id, site=site.gateway.site, meters=meters, created_ms=created_ms,
        region=site.gateway.grid_region,
    )  # fmt: skip
    return doc.to_bytes()
