"""Peers side by side: puhui's gateway, ThingsBoard IoT Gateway, collectd and a bare pymodbus
loop read the same simulated SDM630 fleet; CPU, peak RSS and values delivered over a window.

Run: ``make bench-peers`` or ``.venv/bin/python -m bench.peers [--configs 50x5,200x5,200x1]
[--warmup 30] [--window 120] [--budget 25] [--quick] [--write-results]``.

The fleet (firmware_sim, one Modbus TCP port per meter) runs in this process on a
:class:`~common.clock.ManualClock` that never moves: every read of a meter returns the same
13 float32 values, so the harness can check each contender's values exactly against the
simulator's own registers (a contender that decodes a word order wrong, or drops a field,
fails the check). With two cores or more, this process (simulator, broker, counters) runs on
the other cores and each contender alone on the first (``taskset``), one after the other.

Per contender: its process tree's CPU time (each thread's schedstat) from /proc over
``--window`` seconds after it delivered its first values and ``--warmup`` seconds more;
peak RSS = VmHWM at the end of the window after a reset at its start (``clear_refs`` 5),
summed over the tree; values delivered in the window, counted where each puts them (see
CONTENDERS); Modbus requests the simulator served in the window.
Kept up: delivered >= 95 % of meters x 13 x window / period.

The Pi-class budget repeats the largest configuration with each contender in a cgroup whose
CPU quota is ``--budget`` % of one core (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``)
as well as pinned to one core.
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
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import httpx
import yaml

from bench.__main__ import machine
from bench.bench_resources import GATEWAY, _status_port, fleet_data, site_config
from bench.peers.pure import (
    SESSION_LIMITS_TOPIC,
    TELEMETRY_TOPIC,
    Field,
    Meter,
    Result,
    collectd_conf,
    collectd_csv_name,
    collectd_csv_rows,
    compare,
    decode_block,
    schedstat_ns,
    session_limits,
    stat_cpu_ticks,
    stat_ppid,
    status_kib,
    table,
    tb_gateway_json,
    tb_logs_json,
    tb_modbus_json,
    tb_telemetry_values,
)
from common.clock import ManualClock
from drivers.modbus.profiles import load_profiles
from evidence.records import IntervalRecord
from firmware_sim import Fleet, parse_fleet
from firmware_sim.registers.base import FC_INPUT
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber

ROOT = Path(__file__).resolve().parents[2]
TB_VENV = Path(os.environ.get("TB_VENV", ROOT / "build" / "bench-peers" / "tb-venv"))
COLLECTD = shutil.which("collectd") or "/usr/sbin/collectd"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FLOOR = "bare pymodbus loop"
START_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 180.0  # a 1-minute interval closes and is sealed (seal_age_s 10 s)
RESULTS = ROOT / "bench" / "results.md"


def sdm630_fields() -> list[Field]:
    """The 13 float32 fields of the gateway's SDM630 profile (config/profiles/sdm630.yaml)."""
    profile = load_profiles()["sdm630"]
    return [Field(f.name, f.address) for f in profile.fields if f.type == "float32"]


# -- /proc, process trees, cgroups ------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = stat_ppid(Path(f"/proc/{entry}/stat").read_text())
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds of the processes' live threads (schedstat, ns). A thread that ends inside the
    window takes its time with it: :func:`tree_ticks_s` (/proc/<pid>/stat, dead threads
    included, 10 ms ticks) is reported beside it as a cross-check."""
    ns = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    ns += schedstat_ns(Path(f"/proc/{p}/task/{tid}/schedstat").read_text())
    return ns / 1e9


def tree_ticks_s(pids: Sequence[int]) -> float:
    ticks = 0
    for p in pids:
        with contextlib.suppress(OSError):
            ticks += stat_cpu_ticks(Path(f"/proc/{p}/stat").read_text())
    return ticks / CLK_TCK


def tree_hwm_kib(pids: Sequence[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            total += status_kib(Path(f"/proc/{p}/status").read_text(), "VmHWM")
    return total


def reset_peaks(pids: Sequence[int]) -> None:
    for p in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{p}/clear_refs").write_text("5")


class CpuQuota:
    """A child cgroup holding its processes to ``percent`` % of one core (100 ms period)."""

    def __init__(self, percent: float) -> None:
        self.percent = percent
        name = f"puhui-bench-peers-{os.getpid()}"
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
        quota_us = int(percent * 1000)
        if "cpu" in _read(v2 / "cgroup.controllers").split():
            self.dir, self.files = v2 / name, {"cpu.max": f"{quota_us} 100000"}
            if "cpu" not in _read(v2 / "cgroup.subtree_control").split():
                (v2 / "cgroup.subtree_control").write_text("+cpu")
        elif (v1 / "cpu.cfs_quota_us").exists():
            self.dir, self.files = (
                v1 / name,
                {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(quota_us)},
            )
        else:
            raise RuntimeError("no cgroup CPU controller here (neither v2 cpu.max nor v1 cpu.cfs_quota_us)")

    @property
    def kind(self) -> str:
        return "v2 cpu.max" if "cpu.max" in self.files else "v1 cpu.cfs_quota_us"

    def __enter__(self) -> CpuQuota:
        self.dir.mkdir(exist_ok=True)
        for name, value in self.files.items():
            (self.dir / name).write_text(value)
        return self

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exc: object) -> None:
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.1)  # its last process is still exiting


def quota_available() -> str:
    """Why a CPU quota cannot be set here, or "" when it can."""
    try:
        with CpuQuota(25):
            return ""
    except (OSError, RuntimeError) as exc:
        return str(exc)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# -- the bench's world: fleet, broker, ground truth --------------------------------------------------------


@dataclass
class World:
    fleet: Fleet
    clock: ManualClock
    broker: PrivateMosquitto
    meters: list[Meter]
    fields: list[Field]
    period_s: float
    tmp: Path

    def truth(self) -> dict[str, dict[str, float]]:
        """What every meter serves (its registers, decoded): the same for the whole run."""
        out = {}
        for m in self.meters:
            image = self.fleet.devices[m.name].render(m.unit, self.clock.now())
            block, words = next((b, w) for b, w in image.items() if b.fc == FC_INPUT and b.start == 0)
            out[m.name] = decode_block(words, self.fields, block.start)
        return out

    def requests(self) -> int:
        return sum(d.request_count for d in self.fleet.devices.values())


@contextlib.asynccontextmanager
async def world(meters: int, period_s: float, tmp: Path) -> AsyncIterator[World]:
    cfg = parse_fleet(fleet_data(meters), "peers-bench")
    clock = ManualClock(cfg.clock.epoch_s)
    with PrivateMosquitto() as broker:
        async with Fleet(cfg, clock=clock) as fleet:
            found = [
                Meter(name, d.endpoint.port or 0, d.endpoint.unit or 1) for name, d in fleet.devices.items()
            ]
            yield World(fleet, clock, broker, found, sdm630_fields(), period_s, tmp)


# -- contenders ---------------------------------------------------------------------------------------


class Contender:
    """Start with :meth:`start` (an async context manager yielding the pid to measure);
    :meth:`delivered` counts values delivered so far; :meth:`seen` the values after it stopped."""

    name = ""
    requests_note = ""
    output_note = ""

    def __init__(self, w: World) -> None:
        self.w = w

    def start(self, pin: list[str]) -> contextlib.AbstractAsyncContextManager[int]:
        raise NotImplementedError

    async def delivered(self) -> int:
        raise NotImplementedError

    def seen(self) -> dict[str, dict[str, float]]:
        raise NotImplementedError

    async def settle(self) -> None:
        """After the window, before it stops (not measured): wait until what :meth:`seen`
        reads is there. Most contenders deliver each value as it is read."""


@contextlib.asynccontextmanager
async def _process(argv: list[str], log: Path, *, env: dict[str, str] | None = None,
                   cwd: Path = ROOT) -> AsyncIterator[asyncio.subprocess.Process]:  # fmt: skip
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, stdout=out, stderr=out,
                                                    env={**os.environ, **(env or {})})  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                for p in tree(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                await proc.wait()


class Bare(Contender):
    name = FLOOR
    requests_note = (
        "one request per meter per period for the block 0x0000-0x004B (76 registers), all concurrently"
    )
    output_note = "none: values decoded with struct and dropped (counted by the loop itself)"

    @contextlib.asynccontextmanager
    async def _start(self, pin: list[str]) -> AsyncIterator[int]:
        d = self.w.tmp / "bare"
        d.mkdir()
        self.counts, self.values = d / "counts", d / "values.json"
        spec = {"meters": [m.__dict__ for m in self.w.meters], "fields": [f.__dict__ for f in self.w.fields],
                "period_s": self.w.period_s, "counts_file": str(self.counts),
                "values_file": str(self.values)}  # fmt: skip
        (d / "spec.json").write_text(json.dumps(spec))
        argv = [*pin, sys.executable, "-m", "bench.peers.bare", str(d / "spec.json")]
        async with _process(argv, d / "log") as proc:
            self.log = d / "log"
            yield proc.pid

    def start(self, pin: list[str]) -> contextlib.AbstractAsyncContextManager[int]:
        return self._start(pin)

    async def delivered(self) -> int:
        text = _read(self.counts)
        return int(text) if text else 0

    def seen(self) -> dict[str, dict[str, float]]:
        if not self.values.exists():
            raise RuntimeError(f"the bare loop wrote no values; its log:\n{_read(self.log)[-2000:]}")
        data: dict[str, dict[str, float]] = json.loads(self.values.read_text())
        return data


class Puhui(Contender):
    name = "puhui gateway"
    requests_note = ("one request per meter per period (the profile's fields merged into 0x0000-0x004B), "
                     "all meters concurrently; the serial number once at connect")  # fmt: skip
    output_note = ("samples -> 1-minute interval records (energy_import counter, power stats) -> "
                   "batches sealed (ECDSA, "
                   "10 s) -> MQTT to an acking stand-in aggregator; values counted from its /status "
                   "(successful polls x 13)")  # fmt: skip

    @contextlib.asynccontextmanager
    async def _start(self, pin: list[str]) -> AsyncIterator[int]:
        d = self.w.tmp / "puhui"
        d.mkdir()
        data, keys = site_config(self.w.fleet, d, self.w.broker, poll_s=self.w.period_s, fast=None,
                                 interval_minutes=1, seal_age_s=10.0)  # fmt: skip
        config, log = d / "site.yaml", d / "gateway.log"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.acker = AckSubscriber(self.w.broker.host, self.w.broker.port, d / "agg.sqlite",
                                   gateway_keys={GATEWAY: keys.gateway.public_key},
                                   aggregator_key=keys.aggregator)  # fmt: skip
        async with self.acker, httpx.AsyncClient(timeout=10) as self.client:
            argv = [*pin, sys.executable, "-m", "puhui", "gateway", "run", "--config", str(config)]
            async with _process(argv, log) as proc:
                self.port = await _status_port(log, proc)
                yield proc.pid
            self.records = self.acker.records(GATEWAY)

    def start(self, pin: list[str]) -> contextlib.AbstractAsyncContextManager[int]:
        return self._start(pin)

    async def delivered(self) -> int:
        status = (await self.client.get(f"http://127.0.0.1:{self.port}/status")).json()
        return len(self.w.fields) * sum(int(d.get("ok") or 0) for d in status["devices"].values())

    async def settle(self) -> None:
        """Interval records are sealed once a minute closes (and ``seal_age_s`` later): a short
        window (``--quick``) ends before the first, so wait for one per meter (up to 3 min)."""
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            want = {m.name for m in self.w.meters}
            while not want <= {r.meter for r in self.acker.records(GATEWAY) if isinstance(r, IntervalRecord)}:  # noqa: ASYNC110
                await asyncio.sleep(1.0)

    def seen(self) -> dict[str, dict[str, float]]:
        """Values in the interval records the aggregator stand-in stored: counter readings, and
        the min, mean and max of gauges (all equal to the value served: it does not move)."""
        out: dict[str, dict[str, float]] = {}
        for r in self.records:
            if not isinstance(r, IntervalRecord):
                continue
            got = out.setdefault(r.meter, {})
            if r.counter_end is not None:
                got[r.quantity] = r.counter_end
            if r.stats is not None:
                # A counter's stats are of its companion gauge (the SDM630 profile's power, W).
                name = r.quantity if r.kind != "counter" else "power" if r.stats.unit == "W" else ""
                got[name or f"{r.quantity} stats ({r.stats.unit})"] = r.stats.avg
                if not r.stats.min == r.stats.avg == r.stats.max:  # a value the simulator never served
                    got[f"{name} (min {r.stats.min}, max {r.stats.max})"] = r.stats.max
        return out


class Thingsboard(Contender):
    name = "ThingsBoard IoT Gateway"
    requests_note = ("one request per timeseries key: 13 per meter per period (2 registers each), "
                     "sequential within a meter; one thread and asyncio loop per connector")  # fmt: skip
    output_note = ("JSON telemetry {device: [{ts, values}]} on v1/gateway/telemetry, QoS 1, to the private "
                   "Mosquitto; values counted at the broker by a subscriber that also answers "
                   "getSessionLimits "
                   "(no rate limits)")  # fmt: skip

    @contextlib.asynccontextmanager
    async def _start(self, pin: list[str]) -> AsyncIterator[int]:
        d = self.w.tmp / "tb"
        (d / "config").mkdir(parents=True)
        (d / "logs").mkdir()
        b = self.w.broker
        files = {"tb_gateway.json": tb_gateway_json(b.host, b.port, "bench-token"),
                 "modbus.json": tb_modbus_json(self.w.meters, self.w.fields, self.w.period_s),
                 "logs.json": tb_logs_json(str(d / "logs" / "tb.log"))}  # fmt: skip
        for name, data in files.items():
            (d / "config" / name).write_text(json.dumps(data, indent=1))
        self.count, self.answered = 0, 0
        self.last: dict[str, dict[str, float]] = {}
        python = TB_VENV / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"no ThingsBoard gateway virtualenv at {TB_VENV}: run scripts/bench-deps.sh")
        async with aiomqtt.Client(b.host, b.port, identifier="bench-tb-platform") as client:
            await client.subscribe(TELEMETRY_TOPIC, qos=1)
            await client.subscribe(SESSION_LIMITS_TOPIC, qos=1)
            listener = asyncio.create_task(self._listen(client), name="tb-platform")
            argv = [*pin, str(python), "-c", "from thingsboard_gateway.tb_gateway import daemon; daemon()"]
            self.log = d / "logs" / "stdout.log"
            try:
                async with _process(
                    argv, self.log, env={"TB_GW_CONFIG_DIR": str(d / "config")}, cwd=d
                ) as proc:
                    yield proc.pid
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
            if topic == TELEMETRY_TOPIC:
                values = tb_telemetry_values(payload)
                for device, got in values.items():
                    self.count += sum(1 for k in got if k in self._names)
                    self.last.setdefault(device, {}).update(got)
            elif topic.startswith("v1/devices/me/rpc/request/"):
                request = json.loads(payload)
                if request.get("method") == "getSessionLimits":
                    reply = topic.replace("/request/", "/response/")
                    await client.publish(reply, json.dumps(session_limits()), qos=1)
                    self.answered += 1

    @property
    def _names(self) -> set[str]:
        return {f.name for f in self.w.fields}

    def start(self, pin: list[str]) -> contextlib.AbstractAsyncContextManager[int]:
        return self._start(pin)

    async def delivered(self) -> int:
        return self.count

    def seen(self) -> dict[str, dict[str, float]]:
        return self.last


class Collectd(Contender):
    name = "collectd modbus plugin"
    requests_note = ("one request per <Data> block: 13 per meter per period (2 registers each), sequential "
                     "within a meter; meters spread over 5 read threads (libmodbus, C)")  # fmt: skip
    output_note = (
        "CSV plugin: one line per value to a file per meter and field; values counted from the files"
    )

    @contextlib.asynccontextmanager
    async def _start(self, pin: list[str]) -> AsyncIterator[int]:
        d = self.w.tmp / "collectd"
        self.data = d / "csv"
        self.data.mkdir(parents=True)
        conf = d / "collectd.conf"
        conf.write_text(
            collectd_conf(self.w.meters, self.w.fields, self.w.period_s, self.data, d / "collectd.log")
        )
        if not Path(COLLECTD).exists():  # noqa: ASYNC240 - one stat before it starts
            raise RuntimeError(f"no collectd at {COLLECTD}: run scripts/bench-deps.sh")
        async with _process([*pin, COLLECTD, "-f", "-C", str(conf)], d / "stdout.log") as proc:
            yield proc.pid

    def start(self, pin: list[str]) -> contextlib.AbstractAsyncContextManager[int]:
        return self._start(pin)

    def _files(self) -> list[tuple[Path, tuple[str, str]]]:
        out = []
        for path in self.data.rglob("gauge-*"):
            name = collectd_csv_name(path)
            if name is not None:
                out.append((path, name))
        return out

    async def delivered(self) -> int:
        return await asyncio.to_thread(self._count)

    def _count(self) -> int:
        total = 0
        for path, _ in self._files():
            with path.open("rb") as f:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b"")) - 1  # header
        return total

    def seen(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for path, (meter, name) in self._files():
            rows = collectd_csv_rows(path.read_text())
            if rows:
                out.setdefault(meter, {})[name] = rows[-1][1]
        return out


CONTENDERS: dict[str, Callable[[World], Contender]] = {
    "bare": Bare, "puhui": Puhui, "thingsboard": Thingsboard, "collectd": Collectd,
}  # fmt: skip


# -- one window ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    window_s: float
    pin: list[str]
    budget: float | None  # % of one core, or None


async def measure_one(w: World, make: Callable[[World], Contender], plan: Plan) -> Result:
    c = make(w)
    budget = "one core" if plan.budget is None else f"{plan.budget:g} % of one core"
    quota = CpuQuota(plan.budget) if plan.budget is not None else None
    with quota or contextlib.nullcontext():
        async with c.start(plan.pin) as pid:
            if quota is not None:
                quota.add(pid)  # its threads and later children follow it
            t_start = time.monotonic()
            async with asyncio.timeout(START_TIMEOUT_S):
                while await c.delivered() == 0:  # noqa: ASYNC110 - counts in files, /status: no event
                    await asyncio.sleep(0.5)
            startup = time.monotonic() - t_start
            await asyncio.sleep(plan.warmup_s)
            pids = tree(pid)
            reset_peaks(pids)
            cpu0, v0, r0, t0 = tree_cpu_s(pids), await c.delivered(), w.requests(), time.monotonic()
            ticks0 = tree_ticks_s(pids)
            await asyncio.sleep(plan.window_s)
            pids = tree(pid)
            cpu1, v1, r1, t1 = tree_cpu_s(pids), await c.delivered(), w.requests(), time.monotonic()
            ticks = tree_ticks_s(pids) - ticks0
            hwm = tree_hwm_kib(pids)
            await c.settle()
        check = compare(c.seen(), w.truth())
    return Result(c.name, len(w.meters), w.period_s, budget, t1 - t0, cpu1 - cpu0, v1 - v0, hwm, r1 - r0,
                  check, len(w.fields),
                  note=f"first values after {startup:.1f} s; {len(pids)} processes; "
                       f"CPU {cpu1 - cpu0:.3f} s by schedstat, {ticks:.2f} s by stat ticks")  # fmt: skip


# -- the run -------------------------------------------------------------------------------------------


def parse_configs(text: str) -> list[tuple[int, float]]:
    out = []
    for item in text.split(","):
        meters, _, period = item.partition("x")
        out.append((int(meters), float(period)))
    return out


def split_cores() -> tuple[list[str], set[int] | None]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return [], None
    return ["taskset", "-c", str(cores[0])], set(cores[1:])


async def run(args: argparse.Namespace) -> tuple[list[Result], dict[str, str]]:
    pin, mine = split_cores()
    notes = {"pinning": f"contender on core {pin[-1]}, simulator + broker + harness on {sorted(mine)}"
             if mine else "none (one core)"}  # fmt: skip
    if mine:
        os.sched_setaffinity(0, mine)
    results: list[Result] = []
    runs = [(m, p, None) for m, p in args.configs]
    if args.budget:
        why = quota_available()
        if why:
            notes["budget"] = f"not measured: {why}"
        else:
            m, p = max(args.configs, key=lambda c: c[0] / c[1])
            runs.append((m, p, args.budget))
            kind = CpuQuota(args.budget).kind
            notes["budget"] = (f"{args.budget:g} % of one core by a child cgroup's {kind} (100 ms period), "
                               f"the contender pinned to one core as well, at {m} x {p:g} s")  # fmt: skip
    for meters, period, budget in runs:
        with tempfile.TemporaryDirectory(prefix="puhui-bench-peers-") as tmp_dir:
            tmp = Path(tmp_dir)
            async with world(meters, period, tmp) as w:
                for key in args.contenders:
                    print(
                        f"{meters} x {period:g} s, {key}, budget {budget or 'none'} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    sub = tmp / f"{key}-{budget or 'full'}"
                    sub.mkdir()
                    plan = Plan(args.warmup, args.window, pin, budget)
                    try:
                        r = await measure_one(replace(w, tmp=sub), CONTENDERS[key], plan)
                    except Exception as exc:  # noqa: BLE001 - reported in the table's notes, the run goes on
                        notes[f"{key}, {meters} x {period:g} s, budget {budget or 'none'}"] = (
                            f"FAILED: {exc!r}"[:2000]
                        )
                        print(f"  failed: {exc!r}", file=sys.stderr)
                        continue
                    results.append(r)
                    print(f"  {r.values:,} values, {r.cpu_s:.2f} CPU s, {r.peak_rss_kib / 1024:.0f} MiB, "
                          f"{r.requests} requests; {r.check.describe()}; {r.note}",
                          file=sys.stderr, flush=True)  # fmt: skip
    return results, notes


def versions() -> str:
    tb = next(TB_VENV.glob("lib/python*/site-packages/thingsboard_gateway-*.dist-info"), None)
    tb_v = tb.name.removesuffix(".dist-info").split("-")[1] if tb else "not installed"
    collectd = "not installed"
    with contextlib.suppress(OSError):
        import subprocess

        out = subprocess.run([COLLECTD, "-h"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"collectd (\d+\.\d+\.\d+)", out)
        collectd = found[1] if found else "?"
    import pymodbus

    pm = pymodbus.__version__
    return f"ThingsBoard IoT Gateway {tb_v}, collectd {collectd}, pymodbus {pm} (puhui, bare loop)"


def section(results: list[Result], notes: dict[str, str], args: argparse.Namespace, command: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"## Peers side by side ({stamp})", "",
        f"`{command}`; {machine()} (shared: other sessions ran tests on the same 2 cores during the run; "
        f"load average at the end {load}); {versions()}.", "",
        f"Warm-up {args.warmup:g} s after the first values, window {args.window:g} s; one run per row. "
        "Ratios are to the bare loop measured in the same run, same configuration and budget.", "",
        table(results, FLOOR), "",
        "What differs:", "",
    ]  # fmt: skip
    for key in args.contenders:
        c = CONTENDERS[key]
        lines.append(f"- **{c.name}**: requests: {c.requests_note}; output: {c.output_note}.")  # type: ignore[attr-defined]
    lines += ["", "Notes:", ""]
    lines += [f"- {k}: {v}" for k, v in notes.items()]
    lines += [f"- {r.contender}, {r.meters} x {r.period_s:g} s, {r.budget}: {r.note}; {r.check.describe()}"
              for r in results]  # fmt: skip
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--configs", type=parse_configs, default=parse_configs("50x5,200x5,200x1"),
                   help="meters x period in seconds, comma-separated (default 50x5,200x5,200x1)")  # fmt: skip
    p.add_argument("--contenders", type=lambda v: v.split(","), default=list(CONTENDERS),
                   help=f"some of {','.join(CONTENDERS)}")  # fmt: skip
    p.add_argument("--warmup", type=float, default=30.0)
    p.add_argument("--window", type=float, default=120.0)
    p.add_argument(
        "--budget", type=float, default=25.0, help="%% of one core for the Pi-class runs (0: none)"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 20x2 only, 5 s warm-up, 15 s window")
    p.add_argument("--write-results", action="store_true", help="append the section to bench/results.md")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.quick:
        args.configs, args.warmup, args.window = [(20, 2.0)], 5.0, 15.0
    bad = [c for c in args.contenders if c not in CONTENDERS]
    if bad:
        print(f"unknown contender(s) {bad}; have {list(CONTENDERS)}", file=sys.stderr)
        return 2
    results, notes = asyncio.run(run(args))
    shown = [a for a in argv if a != "--write-results"]
    command = "make bench-peers" + (f" BENCH_PEERS_ARGS='{' '.join(shown)}'" if shown else "")
    text = section(results, notes, args, command)
    print(text)
    if args.write_results:
        with RESULTS.open("a") as f:
            f.write("\n" + text)
    failed = [r for r in results if not r.check.ok]
    return 1 if failed or any(v.startswith("FAILED") for v in notes.values()) else 0
