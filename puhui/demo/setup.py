"""The processes and files of ``puhui demo``: keys, configs, enrolment, children, delivery.

- :func:`write_aggregator_config` and :func:`make_gateway`: the aggregator's key and YAML,
  each gateway's key and site config (:func:`puhui.sitegen.site_for` plus the ``clock``,
  ``evidence``, ``uplink`` and ``status`` sections), validated like any site file; every
  broker link is TLS with the client's certificate (:mod:`puhui.demo.security`);
- :func:`enrol`: ``puhui gateway enrol`` then ``puhui aggregator gateways add`` per gateway;
- :func:`children`: the aggregator and gateways as ``python -m puhui ...`` processes, each
  with its log, stopped on exit (SIGTERM, then SIGKILL) and dying with the demo (Linux);
- :func:`wait_gateways_ready` and :func:`drain`: the gateways' status endpoints, and the
  aggregator's store read-only, to know when to start and when everything has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import yaml

from common.clock import FastClock
from puhui.demo.security import AGGREGATOR, INFLUX_WRITER, DemoSite, InfluxUsers, gateway_id
from testbed.servers import PrivateMosquitto, free_ports

REPO = Path(__file__).resolve().parents[2]
INFLUX_DB = "puhui_demo"
REGION = "hebei"  # Zhangjiakou: the enrolments name the Hebei grid
CALIBRATION_YEARS = 2  # the demo's meters were verified (检定) recently: valid this long after the epoch
STOP_WAIT_S = 20.0
DRAIN_WAIT_S = 90.0


class DemoMissing(Exception):
    """A piece the demo needs is not available (yet): say exactly which, never fake it."""


@dataclass
class Child:
    """A ``python -m puhui ...`` child process with its log file."""

    name: str
    argv: list[str]
    log: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL: the exit status (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> Callable[[], None] | None:
    """Children get SIGTERM if the demo dies (Linux), so a killed demo leaves nothing behind."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def puhui_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "puhui", *args]


@dataclass
class GatewayRun:
    """One site's gateway: id, files, status port, process."""

    id: str
    site: str
    dir: Path
    status_port: int
    config: dict[str, Any] = field(default_factory=dict)
    child: Child | None = None
    final_status: dict[str, Any] | None = None  # its status document at the period's end

    @property
    def config_path(self) -> Path:
        return self.dir / "site.yaml"

    @property
    def key_path(self) -> Path:
        return self.dir / "gateway-key.pem"

    @property
    def enrolment_path(self) -> Path:
        return self.dir / "enrolment.txt"


def write_aggregator_config(
    out: Path, broker: PrivateMosquitto, demo: DemoSite, influx: InfluxUsers
) -> dict[str, Path]:
    """The aggregator's YAML: TLS to the broker with its certificate, InfluxDB as its own user
    (WRITE only; the database exists), its password named by file, never inline."""
    d = out / "aggregator"
    config = {
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "tls": demo.tls(AGGREGATOR),
            "client_id": "puhui-demo-aggregator",
            "reconnect_initial_s": 0.2,
            "reconnect_max_s": 1.0,
        },
        "store": {"path": "evidence.sqlite3"},
        "influx": {
            "url": influx.url,
            "database": influx.database,
            "username": INFLUX_WRITER,
            "password": {"file": os.path.relpath(influx.writer, d)},
            "create_database": False,
            "retry_max_s": 2.0,
        },
        "key_file": "aggregator-key.pem",
        # The platform API (puhui aggregator api), HTTPS with the site CA's server certificate
        # (names localhost and 127.0.0.1); port 0: a free one, printed when it starts.
        "api": {
            "host": "127.0.0.1",
            "port": 0,
            "tls": {"cert_file": str(demo.layout.server_cert), "key_file": str(demo.layout.server_key)},
        },
    }
    (d / "aggregator.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return {
        "config": d / "aggregator.yaml",
        "key": d / "aggregator-key.pem",
        "pub": d / "aggregator.pub.pem",
        "db": d / "evidence.sqlite3",
    }


GRACE_WALL_S = 0.25  # wall time the boundary poll's answers get before an interval closes


def demo_grace_s(factor: float) -> float:
    """Grace (simulated s) of the demo's gateways: 0.25 s of wall time, at least the usual
    30 s, at most the config's 600 s. A polled reading closes its interval by its slot only
    while that interval is open; an answer after that goes by its time and opens the next
    one, so a latency that wanders across the grace splits intervals into one sample too
    many and one too few. On a fast clock the boundary poll's answers come 10-280 simulated
    seconds late (x 2880 on a busy 2-core machine: 3-100 ms of wall time), past the usual
    30 s: the grace must sit above nearly all of them."""
    return max(30.0, min(GRACE_WALL_S * factor, 600.0))


LINE_TIMEOUT_WALL_S = (0.02, 0.1)  # bounds of a shared line's per-request timeout, wall s


def demo_line_timeout_s(factor: float, poll_s: float) -> float:
    """Per-request timeout (wall s) on the demo's shared lines. A line's timeout is wall time,
    so on a fast clock a dead meter costs the meters queued behind it timeout x factor
    simulated seconds per poll (x 2880: 0.1 s is 288 s). Kept under 3/4 of the poll period
    (a reading delayed by one timeout still lands before the meter's next slot and inside
    the grace) and within 20-100 ms: the simulated line answers in a few milliseconds."""
    low, high = LINE_TIMEOUT_WALL_S
    return max(low, min(high, 0.75 * poll_s / factor))


def make_gateway(
    out: Path,
    fleet: Any,
    site: str,
    poll: float,
    clock: FastClock,
    broker: PrivateMosquitto,
    agg: dict[str, Path],
    demo: DemoSite,
) -> GatewayRun:
    """Key, site config (sitegen + evidence + uplink + clock) of one site's gateway; its
    uplink and its MQTT meters' connection go over TLS with the gateway's certificate."""
    from gateway.config import parse_site
    from gateway.errors import ConfigError
    from puhui.sitegen import site_for

    gw = GatewayRun(gateway_id(site), site, out / "gateways" / site, free_ports(1)[0])
    gw.dir.mkdir(parents=True, exist_ok=True)
    data = site_for(fleet, site, gw.id, poll_s=poll, timeout_s=0.5, mqtt=(broker.host, broker.port),
                    mqtt_tls=demo.tls(gw.id), grace_s=demo_grace_s(clock.factor),
                    line_timeout_s=demo_line_timeout_s(clock.factor, poll))  # fmt: skip
    _check_meter_topics(data, demo, gw.id)
    data["gateway"]["description"] = f"puhui demo, fleet {fleet.config.name}"
    data["gateway"]["grid_region"] = REGION
    for meter in data["meters"]:  # the 2.0.0 parameter sets credit calibrated meters only
        meter["nameplate"]["calibrated_until"] = calibrated_until(clock.spec.epoch)
    data["clock"] = {"mode": "fast", **clock.spec.to_dict()}
    data["evidence"] = {
        "key_file": str(gw.key_path),
        "state_dir": str(gw.dir / "state"),
        "sealing": {"max_records": 500, "max_age_s": 900.0},
        "outbox": {"cap_bytes": 64 * 1024 * 1024, "policy": "drop_oldest"},
    }
    data["uplink"] = {  # no client_id: a fresh random one per connection (docs/security.md)
        "host": broker.host,
        "port": broker.port,
        "tls": demo.tls(gw.id),
        "aggregator_public_key": str(agg["pub"]),
        "inflight": 8,
        "resend_after_s": 5.0,
        "reconnect": {"initial_s": 0.2, "max_s": 1.0},
        "reject_backoff": {"initial_s": 0.5, "max_s": 2.0},
    }
    data["status"] = {"enabled": True, "host": "127.0.0.1", "port": gw.status_port}
    try:
        parse_site(data, gw.config_path.name, _profiles())
    except ConfigError as exc:
        raise DemoMissing(f"the generated site config of {site} does not validate:\n{exc}") from exc
    gw.config = data
    gw.config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return gw


def _check_meter_topics(data: dict[str, Any], demo: DemoSite, gateway: str) -> None:
    """The broker's access list lets the gateway read exactly its MQTT meters' topics."""
    wanted = {m["source"]["topic"] for m in data["meters"] if m["driver"] == "mqtt"}
    granted = {m.topic for m in demo.site.meters if m.gateway == gateway}
    if wanted != granted:
        raise DemoMissing(
            f"{gateway}: its MQTT meters publish on {sorted(wanted)}, the broker's access list "
            f"lets it read {sorted(granted)}"
        )


def calibrated_until(epoch: float) -> str:
    """The demo meters' calibration date: the epoch's day (China time) plus CALIBRATION_YEARS."""
    day = datetime.fromtimestamp(epoch, timezone(timedelta(hours=8))).date()
    return (day + timedelta(days=365 * CALIBRATION_YEARS)).isoformat()


def _profiles() -> Any:
    from drivers.modbus.profiles import load_profiles

    return load_profiles()


async def make_keys(gateways: list[GatewayRun], agg: dict[str, Path]) -> None:
    """``puhui aggregator keygen`` and ``puhui gateway keygen`` (all at once)."""
    from evidence.keys import load_private_key, public_key_pem

    logs = agg["config"].parent.parent / "logs"
    jobs = [(puhui_argv("aggregator", "keygen", "--out", str(agg["key"])), logs / "keygen-aggregator.log")]
    jobs += [
        (puhui_argv("gateway", "keygen", "--config", str(gw.config_path)), logs / f"keygen-{gw.site}.log")
        for gw in gateways
    ]
    results = await asyncio.gather(*(_run_cli(argv, log) for argv, log in jobs))
    for (argv, _), (code, text) in zip(jobs, results, strict=True):
        if code != 0:
            raise DemoMissing(f"`puhui {' '.join(argv[3:5])}` failed (exit {code}):\n{text}")
    agg["pub"].write_bytes(public_key_pem(load_private_key(agg["key"]).public_key))


async def enrol(gateways: list[GatewayRun], agg: dict[str, Path], notes: list[str]) -> None:
    """Each gateway's enrolment document, then ``puhui aggregator gateways add`` for it."""
    for gw in gateways:
        await _enrolment_document(gw, notes)
    results = await asyncio.gather(
        *(
            _run_cli(
                puhui_argv(
                    "aggregator", "gateways", "--config", str(agg["config"]), "add", str(gw.enrolment_path)
                ),
                gw.dir.parent.parent / "logs" / f"enrol-{gw.site}.log",
            )
            for gw in gateways
        )
    )
    for gw, (code, text) in zip(gateways, results, strict=True):
        if code != 0:
            raise DemoMissing(f"`puhui aggregator gateways add` failed for {gw.id} (exit {code}):\n{text}")
        print(f"  {text.strip()}")


async def _enrolment_document(gw: GatewayRun, notes: list[str]) -> None:
    log = gw.dir.parent.parent / "logs" / f"enrol-{gw.site}.log"
    code, text = await _run_cli(
        puhui_argv("gateway", "enrol", "--config", str(gw.config_path), "--out", str(gw.enrolment_path)), log
    )
    if code == 0 and gw.enrolment_path.exists():
        return
    # `puhui gateway enrol` is still a placeholder: build the same document with the shared
    # evidence package (what the CLI will call) and say so.
    from evidence.enrolment import EnrolledMeter, make_enrolment
    from evidence.keys import load_private_key

    meters = [
        EnrolledMeter(
            m["id"],
            m["scenario"],
            float(m["nameplate"]["rated_power_kw"]),
            str(m["nameplate"]["meter_class"]),
            date.fromisoformat(m["nameplate"]["calibrated_until"]),
        )
        for m in gw.config["meters"]
    ]
    doc = make_enrolment(
        load_private_key(gw.key_path),
        gateway=gw.id,
        site=gw.site,
        meters=meters,
        created_ms=time.time_ns() // 1_000_000,
        region=REGION,
    )
    gw.enrolment_path.write_bytes(doc.to_bytes())
    last = text.strip().splitlines()[-1] if text.strip() else f"exit {code}"
    note = (
        f"`puhui gateway enrol` is not usable yet ({last}); enrolment documents built with evidence.enrolment"
    )
    if note not in notes:
        notes.append(note)


async def _run_cli(argv: list[str], log: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_die_with_parent(),
    )
    try:
        output, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = output.decode(errors="replace")
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(argv[1:])}\n{text}")
    return int(proc.returncode or 0), text


@contextlib.asynccontextmanager
async def children(out: Path, agg: dict[str, Path], gateways: list[GatewayRun]) -> AsyncIterator[list[Child]]:
    """The aggregator and the gateways as processes; all stopped on exit (Ctrl-C too)."""
    logs = out / "logs"
    procs = [
        Child(
            "aggregator",
            puhui_argv("aggregator", "run", "--config", str(agg["config"])),
            logs / "aggregator.log",
        )
    ]
    for gw in gateways:
        gw.child = Child(
            gw.id, puhui_argv("gateway", "run", "--config", str(gw.config_path)), logs / f"{gw.id}.log"
        )
        procs.append(gw.child)
    try:
        for child in procs:
            await child.start()
        print(
            f"  started: aggregator (pid {procs[0].proc.pid if procs[0].proc else '?'}), "
            + ", ".join(
                f"{gw.id} (pid {gw.child.proc.pid if gw.child and gw.child.proc else '?'})" for gw in gateways
            )
        )
        yield procs
    finally:
        # Gateways first (they persist their interval state), then the aggregator.
        await asyncio.shield(_stop_all(procs[1:]))
        await asyncio.shield(procs[0].stop())


async def _stop_all(procs: list[Child]) -> None:
    await asyncio.gather(*(c.stop() for c in procs))


def check_alive(procs: list[Child]) -> None:
    dead = [c for c in procs if c.proc is not None and c.proc.returncode is not None]
    if dead:
        c = dead[0]
        raise DemoMissing(
            f"{c.name} exited with status {c.proc.returncode if c.proc else '?'}; "
            f"last lines of {c.log}:\n{c.tail()}"
        )


async def gateway_status(gw: GatewayRun, client: httpx.AsyncClient) -> dict[str, Any] | None:
    try:
        r = await client.get(f"http://127.0.0.1:{gw.status_port}/status", timeout=2.0)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


async def wait_gateways_ready(gateways: list[GatewayRun], procs: list[Child], deadline_s: float) -> None:
    """Until every gateway answers on its status endpoint and has read each of its meters once."""
    waiting = {gw.id for gw in gateways}
    async with httpx.AsyncClient() as client:
        end = time.monotonic() + deadline_s
        while waiting and time.monotonic() < end:
            check_alive(procs)
            for gw in gateways:
                st = await gateway_status(gw, client) if gw.id in waiting else None
                if st is not None and _all_read(st):
                    waiting.discard(gw.id)
            await asyncio.sleep(0.3)
    if waiting:
        print(f"  warning: {sorted(waiting)} not reading every meter after {deadline_s:.0f} s; going on")


def _all_read(status: dict[str, Any]) -> bool:
    devices = status.get("devices") or {}
    mqtt = status.get("mqtt") or {}
    return (
        bool(devices)
        and all(int(d.get("ok", 0)) > 0 for d in devices.values())
        and (not mqtt or all(bool(m) for m in mqtt.values()))
    )


async def drain(
    db: Path, gateways: list[GatewayRun], p1: int, clock: FastClock, procs: list[Child], notes: list[str]
) -> None:
    """Until the aggregator has stored every series' interval ending at the period's end and
    InfluxDB has been written (or a deadline passes: then say so)."""
    deadline = time.monotonic() + 90
    missing: dict[str, int] = {}
    while time.monotonic() < deadline:
        check_alive(procs)
        missing, backlog = _delivery_state(db, [g.id for g in gateways], p1)
        if not missing and backlog == 0:
            return
        await asyncio.sleep(0.5)
    notes.append(
        f"not everything arrived within 90 s after the period: series missing their last interval "
        f"per gateway {missing}"
    )


def _delivery_state(db: Path, gateway_ids: list[str], p1: int) -> tuple[dict[str, int], int]:
    if not db.exists():
        return dict.fromkeys(gateway_ids, -1), -1
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        series = dict(
            con.execute(
                "SELECT gateway, count(*) FROM (SELECT DISTINCT gateway, meter, quantity FROM intervals)"
                " GROUP BY gateway"
            ).fetchall()
        )
        done = dict(
            con.execute(
                'SELECT gateway, count(*) FROM intervals WHERE "end" = ? GROUP BY gateway', (p1,)
            ).fetchall()
        )
        [(backlog,)] = con.execute("SELECT coalesce(sum(influx_state = 0), 0) FROM batches").fetchall()
    except sqlite3.Error:
        return dict.fromkeys(gateway_ids, -1), -1
    finally:
        con.close()
    missing = {g: int(series.get(g, 0)) - int(done.get(g, 0)) for g in gateway_ids}
    return {g: n for g, n in missing.items() if n != 0 or g not in series}, int(backlog)
