"""Gateway resources a Raspberry Pi must afford: RSS with 50 and 500 meters, CPU at 1 s polls, a soak.

Run: ``.venv/bin/python -m bench.bench_resources [--meters 50,500] [--window 60] [--soak-days 2]``.

The real gateway (``puhui gateway run``, its own process) polls simulated SDM630 meters over
Modbus TCP (firmware_sim in this process, one port each), builds intervals, seals batches
and sends them through a private Mosquitto to an acking stand-in aggregator
(tests/gateway/ack_subscriber.py), as on site. With two cores or more the gateway runs on
the first core (``taskset``) and this process (simulator, broker, acker) on the others, so
the gateway's CPU is its own. Everything is read from ``/proc/<pid>``.

1. **RSS and CPU, 50 and 500 meters, 1 s polls** (system clock, 1-minute intervals and
   batches sealed 30 s after their first record, so the window holds intervals closing and
   batches sealed, sent and acknowledged: more work per minute than the 15-minute default).
   After the warm-up (every meter up, a batch acknowledged) the peak is reset (``clear_refs``
   5), then ``--window`` seconds: ``VmHWM`` at the end is the peak RSS, ``utime + stime``
   the CPU. Floors: the RSS of the
   same interpreter with the gateway's modules imported and nothing running; the CPU of
   the driver's reads alone (the same SDM630 requests every second from a process that
   does nothing else), per 1,000 Modbus requests.
2. **Soak** on the fast clock (x``--soak-factor``, 20 meters polled every 60 simulated
   seconds, 15-minute intervals, batches sealed every 300 simulated seconds): RSS and open
   file descriptors sampled every wall second for ``--soak-days`` simulated days; the first
   quarter is warm-up. Least-squares slope per simulated hour; **flat** when the growth the
   slope gives over the measured span is under max(1 MiB, 2 % of the mean RSS) and under
   one descriptor. The fast clock multiplies events (polls, intervals, batches, acks) per
   wall second; a leak per event shows, a leak per wall second would be understated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import Figure
from common.clock import FastClock
from firmware_sim import Fleet, parse_fleet
from puhui.sitegen import site_for
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber
from tests.gateway.evidence_helpers import make_keys

ROOT = Path(__file__).resolve().parents[1]
EPOCH = "2026-01-12T00:00:00+08:00"
GATEWAY = "gw-bench-res"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 180.0


# -- /proc -------------------------------------------------------------------------------------


def proc_status_kib(pid: int) -> dict[str, int]:
    """The ``kB`` lines of /proc/<pid>/status (VmRSS, VmHWM, ...), in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB$", text, re.M)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (its threads included), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (proc(5), clear_refs: 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def flat(growth_mib: float, mean_mib: float, fd_growth: float) -> bool:
    """The soak's verdict (module docstring)."""
    return growth_mib < max(1.0, 0.02 * mean_mib) and fd_growth < 1.0


# -- cores ------------------------------------------------------------------------------------------


def split_cores() -> tuple[list[str], set[int] | None]:
    """(taskset prefix for the gateway, cores for this process), or no pinning."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return [], None
    return ["taskset", "-c", str(cores[0])], set(cores[1:])


# -- the site -------------------------------------------------------------------------------------


def fleet_data(meters: int) -> dict[str, Any]:
    return {
        "name": "resources-bench",
        "clock": {"epoch": EPOCH, "factor": 1},
        "control": None,
        "sites": [{"name": "bench", "devices": [
            {"kind": "sdm630", "name": "sdm-{i:03d}", "count": meters, "seed": 1000,
             "physics": {"model": "heating"}},
        ]}],
    }  # fmt: skip


@dataclass
class Run:
    """A running gateway: its pid and status port, the clock it runs on."""

    pid: int
    port: int
    clock: FastClock | None
    log: Path
    devices: list[dict[str, Any]] = field(default_factory=list)

    async def status(self, client: httpx.AsyncClient) -> dict[str, Any]:
        result: dict[str, Any] = (await client.get(f"http://127.0.0.1:{self.port}/status")).json()
        return result


def site_config(fleet: Fleet, tmp: Path, broker: PrivateMosquitto, *, poll_s: float, fast: FastClock | None,
                interval_minutes: int, seal_age_s: float) -> tuple[dict[str, Any], Any]:  # fmt: skip
    keys = make_keys(tmp / "keys")
    data = site_for(fleet, "bench", GATEWAY, poll_s=poll_s, timeout_s=2.0, interval_minutes=interval_minutes,
                    grace_s=None if fast is None else min(600.0, 0.25 * fast.factor))  # fmt: skip
    clock: dict[str, Any] = {"mode": "system", "require_sync": False}
    if fast is not None:
        clock = {"mode": "fast", **fast.spec.to_dict()}
    data.update({
        "clock": clock,
        "status": {"host": "127.0.0.1", "port": 0},
        "evidence": {"key_file": str(keys.gateway_file), "state_dir": str(tmp / "state"),
                     "sealing": {"max_records": 500, "max_age_s": seal_age_s}},
        "uplink": {"host": broker.host, "port": broker.port, "tls": None,
                   "aggregator_public_key": str(keys.aggregator_pub_file), "inflight": 8,
                   "resend_after_s": 5.0},
    })  # fmt: skip
    return data, keys


@contextlib.asynccontextmanager
async def gateway(
    meters: int,
    *,
    poll_s: float,
    fast: FastClock | None = None,
    interval_minutes: int = 1,
    seal_age_s: float = 30.0,
) -> AsyncIterator[Run]:
    """Simulator, broker and acker here; the gateway in its own (pinned) process."""
    pin, mine = split_cores()
    before = os.sched_getaffinity(0)
    if mine:
        os.sched_setaffinity(0, mine)  # the broker started below inherits it
    cfg = parse_fleet(fleet_data(meters), "resources-bench")
    try:
        with tempfile.TemporaryDirectory(prefix="puhui-bench-res-") as tmp_dir, PrivateMosquitto() as broker:
            tmp = Path(tmp_dir)
            async with Fleet(cfg, clock=fast) as fleet:
                data, keys = site_config(fleet, tmp, broker, poll_s=poll_s, fast=fast,
                                         interval_minutes=interval_minutes,
                                         seal_age_s=seal_age_s)  # fmt: skip
                config, log = tmp / "site.yaml", tmp / "gateway.log"
                config.write_text(yaml.safe_dump(data, sort_keys=False))
                acker = AckSubscriber(broker.host, broker.port, tmp / "agg.sqlite",
                                      gateway_keys={GATEWAY: keys.gateway.public_key},
                                      aggregator_key=keys.aggregator)  # fmt: skip
                async with acker:
                    with log.open("wb") as out:
                        proc = await asyncio.create_subprocess_exec(
                            *pin, sys.executable, "-m", "puhui", "gateway", "run", "--config", str(config),
                            cwd=ROOT, stdout=out, stderr=out,
                        )  # fmt: skip
                    try:
                        port = await _status_port(log, proc)
                        yield Run(proc.pid, port, fast, log, data["meters"])
                    finally:
                        if proc.returncode is None:
                            proc.send_signal(signal.SIGTERM)
                        async with asyncio.timeout(60):
                            await proc.wait()
    finally:
        os.sched_setaffinity(0, before)


async def _status_port(log: Path, proc: asyncio.subprocess.Process) -> int:
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            text = log.read_text(errors="replace")  # noqa: ASYNC240 - a small log file
            found = re.search(r"status endpoint on http://127\.0\.0\.1:(\d+)/", text)
            if found:
                return int(found[1])
            if proc.returncode is not None:
                raise RuntimeError(f"the gateway exited ({proc.returncode}):\n{text[-3000:]}")
            await asyncio.sleep(0.2)  # a log file has no event to wait on


async def until(run: Run, client: httpx.AsyncClient, ready: Any, timeout_s: float) -> dict[str, Any]:
    status: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                status = await run.status(client)
                if ready(status):
                    return status
                await asyncio.sleep(0.5)
    except TimeoutError:
        states = {d.get("state") for d in status.get("devices", {}).values()}
        log = run.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"the gateway did not settle in {timeout_s:.0f} s: device states {states}, evidence "
            f"{status.get('evidence')}, intervals {status.get('intervals')}; its log:\n{log}"
        ) from None


def _steady(meters: int) -> Any:
    def ready(status: dict[str, Any]) -> bool:
        devices = status["devices"]
        up = sum(d.get("state") == "up" for d in devices.values())
        return up == meters and (status["evidence"].get("acked_total") or 0) >= 1

    return ready


def _requests(status: dict[str, Any]) -> int:
    return sum(int(d.get("requests") or 0) for d in status["devices"].values())


# -- 1. RSS and CPU at 1 s polls ---------------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    meters: int
    peak_rss_kib: int
    median_rss_kib: int
    cpu_s: float
    window_s: float
    requests: int
    fds: int

    @property
    def cpu_per_1000_requests_ms(self) -> float:
        return 1000 * 1000 * self.cpu_s / self.requests


async def footprint(meters: int, window_s: float) -> Footprint:
    async with gateway(meters, poll_s=1.0) as run, httpx.AsyncClient(timeout=10) as client:
        await until(run, client, _steady(meters), 150 + 0.2 * meters)
        reset_peak(run.pid)
        first = await run.status(client)
        cpu0, t0 = cpu_seconds(run.pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < window_s:
            rss.append(proc_status_kib(run.pid)["VmRSS"])
            await asyncio.sleep(1.0)
        cpu, wall = cpu_seconds(run.pid) - cpu0, time.monotonic() - t0
        last = await run.status(client)
        peak, fds = proc_status_kib(run.pid)["VmHWM"], open_fds(run.pid)
    requests = _requests(last) - _requests(first)
    return Footprint(meters, peak, int(statistics.median(rss)), cpu, wall, requests, fds)


def interpreter_floor_kib() -> int:
    """Peak RSS of this interpreter importing what ``puhui gateway run`` imports, doing nothing."""
    code = ("import puhui.cli, gateway.cli, gateway.runtime, gateway.pipeline, drivers.modbus_tcp.driver; "
            "from pathlib import Path; import re; "
            "print(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1])")  # fmt: skip
    out = _run_python(code)
    return int(out)


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    return done.stdout.strip()


async def driver_floor(meters: int, window_s: float) -> tuple[float, int]:
    """(CPU s, requests) of the SDM630 reads alone, every second, in a process of their own."""
    pin, mine = split_cores()
    before = os.sched_getaffinity(0)
    if mine:
        os.sched_setaffinity(0, mine)
    cfg = parse_fleet(fleet_data(meters), "resources-bench")
    try:
        async with Fleet(cfg) as fleet:
            ports = [(dev.endpoint.port, dev.endpoint.unit or 1) for dev in fleet.devices.values()]
            proc = await asyncio.create_subprocess_exec(
                *pin, sys.executable, "-m", "bench.bench_resources", "reads-only", json.dumps(ports),
                str(window_s), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"the reads-only process failed ({proc.returncode})")
    finally:
        os.sched_setaffinity(0, before)
    result = json.loads(out)
    return float(result["cpu_s"]), int(result["requests"])


async def reads_only(ports: list[tuple[int, int]], window_s: float) -> dict[str, float]:
    """The floor's own process: poll every device once a second, concurrently, as the gateway's
    poller does; report its CPU over the window after a warm-up second."""
    from bench.bench_acquisition import GROUPS, Device, gateway_sources

    sources = gateway_sources([Device(f"m{i}", port, unit) for i, (port, unit) in enumerate(ports)])
    async with contextlib.AsyncExitStack() as stack:
        for s in sources:
            await stack.enter_async_context(s)
        await asyncio.gather(*(s.poll() for s in sources))  # connect, identity
        per_cycle = sum(len(s.plan(GROUPS)) for s in sources)
        cpu0, t0, requests = cpu_seconds(os.getpid()), time.monotonic(), 0
        next_slot = t0
        while time.monotonic() - t0 < window_s:
            results = await asyncio.gather(*(s.poll(GROUPS) for s in sources))
            if not all(r.ok for r in results):
                raise RuntimeError(f"a read failed: {next(r.error for r in results if not r.ok)}")
            requests += per_cycle
            next_slot += 1.0
            await asyncio.sleep(max(0.0, next_slot - time.monotonic()))
        return {"cpu_s": cpu_seconds(os.getpid()) - cpu0, "requests": requests}


# -- 2. soak on the fast clock ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Soak:
    sim_hours: float
    rss_slope_mib_per_h: float
    fd_slope_per_h: float
    rss_growth_mib: float
    fd_growth: float
    mean_rss_mib: float
    fds: tuple[int, int]
    rss_kib: tuple[int, int]
    samples: int
    counts: dict[str, int]

    @property
    def flat(self) -> bool:
        return flat(self.rss_growth_mib, self.mean_rss_mib, self.fd_growth)


async def soak(meters: int, days: float, factor: float) -> Soak:
    cfg = parse_fleet(fleet_data(meters), "resources-bench")
    fast = FastClock(cfg.clock.epoch_s, factor, time.time() + 3.0)
    async with (
        gateway(meters, poll_s=60.0, fast=fast, interval_minutes=15, seal_age_s=300.0) as run,
        httpx.AsyncClient(timeout=10) as client,
    ):
        start = await until(run, client, _steady(meters), 150)
        t_start = fast.now()
        end = t_start + days * 86_400
        samples: list[tuple[float, int, int]] = []
        while fast.now() < end:
            samples.append((fast.now(), proc_status_kib(run.pid)["VmRSS"], open_fds(run.pid)))
            await asyncio.sleep(1.0)
        last = await run.status(client)
    counts = {
        "polls": sum(int(d.get("polls") or 0) for d in last["devices"].values())
        - sum(int(d.get("polls") or 0) for d in start["devices"].values()),
        "intervals_closed": int(last["intervals"].get("closed") or 0)
        - int(start["intervals"].get("closed") or 0),
        "batches_acked": int(last["evidence"].get("acked_total") or 0)
        - int(start["evidence"].get("acked_total") or 0),
    }
    kept = samples[len(samples) // 4 :]
    hours = [(t - t_start) / 3600 for t, _, _ in kept]
    rss_mib = [r / 1024 for _, r, _ in kept]
    fds = [float(f) for _, _, f in kept]
    span = hours[-1] - hours[0]
    rss_slope, fd_slope = slope(hours, rss_mib), slope(hours, fds)
    rss_range = (min(r for _, r, _ in kept), max(r for _, r, _ in kept))
    return Soak((samples[-1][0] - t_start) / 3600, rss_slope, fd_slope, rss_slope * span, fd_slope * span,
                statistics.fmean(rss_mib), (int(min(fds)), int(max(fds))), rss_range, len(kept),
                counts)  # fmt: skip


# -- report ------------------------------------------------------------------------------------------------


def figures(
    prints: list[Footprint], floor_kib: int, floors: dict[int, tuple[float, int]], s: Soak | None
) -> list[Figure]:
    out = []
    for p in prints:
        name = f"gateway peak RSS, {p.meters} SDM630 over Modbus TCP, 1 s polls"
        out.append(
            Figure(
                name, p.peak_rss_kib / 1024, "MiB", "interpreter + gateway modules, idle", floor_kib / 1024
            )
        )
    if len(prints) >= 2:
        lo, hi = prints[0], prints[-1]
        per = (hi.peak_rss_kib - lo.peak_rss_kib) / (hi.meters - lo.meters)
        out.append(Figure(f"gateway RSS per added meter ({lo.meters} -> {hi.meters})", per, "KiB"))
    for p in prints:
        out.append(Figure(f"gateway CPU at 1 s polls, {p.meters} meters", p.cpu_s / p.window_s * 100,
                          "% of one core"))  # fmt: skip
        if p.meters in floors:
            cpu, requests = floors[p.meters]
            name = f"gateway CPU per 1,000 Modbus requests, {p.meters} meters"
            alone = 1000 * 1000 * cpu / requests
            out.append(Figure(name, p.cpu_per_1000_requests_ms, "ms", "the reads alone", alone))
    if s is not None:
        verdict = "flat" if s.flat else "NOT flat"
        out.append(Figure(f"soak RSS slope ({s.sim_hours:.0f} simulated h, {verdict})",
                          s.rss_slope_mib_per_h * 1024, "KiB per simulated h"))  # fmt: skip
        out.append(Figure(f"soak open fds slope ({verdict})", s.fd_slope_per_h, "fds per simulated h"))
    return out


async def measure(args: argparse.Namespace) -> tuple[list[Figure], dict[str, Any]]:
    notes: dict[str, Any] = {}
    prints, floors = [], {}
    for meters in args.meters:
        p = await footprint(meters, args.window)
        prints.append(p)
        notes[f"{meters} meters"] = (
            f"peak {p.peak_rss_kib / 1024:.1f} MiB, median {p.median_rss_kib / 1024:.1f} MiB, {p.fds} fds, "
            f"CPU {p.cpu_s:.2f} s in {p.window_s:.0f} s, {p.requests} requests"
        )
        floors[meters] = await driver_floor(meters, min(args.window, 30.0))
        notes[f"{meters} meters, reads alone"] = (
            f"CPU {floors[meters][0]:.2f} s for {floors[meters][1]} requests"
        )
    floor = interpreter_floor_kib()
    notes["interpreter + gateway modules"] = f"{floor / 1024:.1f} MiB"
    s = None
    if args.soak_days > 0:
        s = await soak(args.soak_meters, args.soak_days, args.soak_factor)
        notes["soak"] = (
            f"{args.soak_meters} meters, x{args.soak_factor:g}, {s.sim_hours:.1f} simulated h, {s.samples} "
            f"samples after warm-up; RSS {s.rss_kib[0]}..{s.rss_kib[1]} KiB, growth by the slope "
            f"{s.rss_growth_mib * 1024:+.1f} KiB over the span; fds {s.fds[0]}..{s.fds[1]}, growth "
            f"{s.fd_growth:+.2f}; {s.counts}"
        )
    pin, _ = split_cores()
    notes["pinning"] = " ".join(pin) if pin else "none"
    return figures(prints, floor, floors, s), notes


def run() -> list[Figure]:
    """``make bench``-style entry point (not in its list: this takes several minutes)."""
    figs, _ = asyncio.run(measure(parser().parse_args([])))
    return figs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--meters", type=lambda v: [int(x) for x in v.split(",")], default=[50, 500],
                   help="meter counts for RSS and CPU (default 50,500)")  # fmt: skip
    p.add_argument("--window", type=float, default=60.0, help="wall seconds measured after the warm-up")
    p.add_argument("--soak-days", type=float, default=2.0, help="simulated days (0: no soak)")
    p.add_argument("--soak-factor", type=float, default=1440.0, help="fast clock factor of the soak")
    p.add_argument("--soak-meters", type=int, default=20)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reads-only"]:  # the CPU floor's own process (driver_floor)
        ports = [(int(a), int(b)) for a, b in json.loads(argv[1])]
        print(json.dumps(asyncio.run(reads_only(ports, float(argv[2])))))
        return 0
    figs, notes = asyncio.run(measure(parser().parse_args(argv)))
    for f in figs:
        ratio = "" if f.ratio is None else f"  ({f.ratio:.2f} x {f.compared_with}: {f.peer_value:,.2f})"
        print(f"{f.name}: {f.value:,.3f} {f.unit}{ratio}")
    for key, value in notes.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
