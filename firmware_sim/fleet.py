"""A fleet: every device of a fleet file, served over Modbus TCP/RTU and MQTT, one clock.

::

    async with Fleet.from_file("config/fleets/pv-street.yaml", clock=clock) as fleet:
        dev = fleet.devices["house-01-inverter"]
        host, port, unit = dev.endpoint.host, dev.endpoint.port, dev.endpoint.unit
        dev.set_faults(timeout=True)
        truth = dev.ground_truth()

The fleet owns a TaskGroup of named tasks (ticker, MQTT publishers) and the servers it
started (one per TCP port, one per RTU bus with its pty pair, the control endpoint);
leaving the ``async with`` cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.clock import Clock, FastClock
from firmware_sim.build import build_device, line_responder
from firmware_sim.config import MQTT_KINDS, FleetConfig, expand, load_fleet
from firmware_sim.control import ControlServer
from firmware_sim.device import Device
from firmware_sim.errors import UnknownDeviceError
from firmware_sim.line import SimLine, TcpSerialServer, serve_pty, serve_tcp
from firmware_sim.meter import StepLog
from firmware_sim.modbus_server import ModbusPortServer
from firmware_sim.mqtt import MqttPublisher
from firmware_sim.serial import pty_pair

TICK_WALL_S = 0.25  # how often (wall seconds) the ticker integrates every device


class DeviceTable(dict[str, Device]):
    """``fleet.devices[name]`` with an error that names the fleet's devices."""

    def __missing__(self, name: str) -> Device:
        some = ", ".join(list(self)[:8])
        raise UnknownDeviceError(f"no device {name!r} (have: {some}{'...' if len(self) > 8 else ''})")


class Fleet:
    """All simulated devices of a fleet file (async context manager)."""

    def __init__(self, config: FleetConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or FastClock(config.clock.epoch_s, config.clock.factor)
        self.start = math.floor(self.clock.now() / config.step_s) * config.step_s
        self._specs = expand(config)
        self.devices = DeviceTable((s.name, build_device(s, config, self.start)) for s in self._specs)
        self._servers: list[ModbusPortServer] = []
        self._publishers: list[MqttPublisher] = []
        self.lines: dict[str, SimLine] = {}  # "site/line" -> the simulated line
        self.line_servers: dict[str, TcpSerialServer] = {}
        self.control: ControlServer | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        clock: Clock | None = None,
        factor: float | None = None,
        mqtt: tuple[str, int] | None = None,
        epoch: datetime.datetime | None = None,
    ) -> Fleet:
        """Load and validate a fleet file; ``factor``, ``epoch`` (the clock's start) and ``mqtt``
        (host, port) override it."""
        config = load_fleet(path)
        overrides = {k: v for k, v in (("factor", factor), ("epoch", epoch)) if v is not None}
        if overrides:
            config = config.model_copy(update={"clock": config.clock.model_copy(update=overrides)})
        if mqtt is not None and config.mqtt is not None:
            broker = config.mqtt.model_copy(update={"host": mqtt[0], "port": mqtt[1]})
            config = config.model_copy(update={"mqtt": broker})
        return cls(config, clock=clock)

    async def __aenter__(self) -> Fleet:
        await self._stack.__aenter__()
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await self._stack.__aexit__(None, None, None)

    async def _start(self) -> None:
        await self._start_modbus()
        await self._start_lines()
        if self.config.control is not None:
            port = 0 if self.config.control.port == "auto" else self.config.control.port
            server = ControlServer(self.devices, self.clock, self.config.host, port)
            self.control = await self._stack.enter_async_context(server)
        self._make_publishers()  # before any task: a publisher's TLS files may be refused
        group = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._tasks.append(group.create_task(self._tick(), name="sim-ticker"))
        for i, pub in enumerate(self._publishers):
            self._tasks.append(group.create_task(pub.run(), name=f"sim-mqtt-{i}"))

    async def _start_modbus(self) -> None:
        tcp: dict[int, dict[int, Device]] = defaultdict(dict)
        rtu: dict[str, dict[int, Device]] = defaultdict(dict)
        for spec in self._specs:
            dev = self.devices[spec.name]
            units = dict.fromkeys(dev.units, dev)
            if spec.kind in MQTT_KINDS or spec.config.line is not None:
                continue
            if spec.config.rtu_bus is not None:
                rtu[spec.config.rtu_bus].update(units)
            elif spec.port is not None:
                tcp[spec.port].update(units)
            else:
                await self._serve_tcp(units, 0)
        for port, units in tcp.items():
            await self._serve_tcp(units, port)
        for bus, units in rtu.items():
            await self._serve_rtu(bus, units)

    async def _serve_tcp(self, units: dict[int, Device], port: int) -> None:
        server = ModbusPortServer(units, self.clock, host=self.config.host, port=port)
        await server.start()
        self._stack.push_async_callback(server.stop)
        self._servers.append(server)
        for dev in set(units.values()):
            dev.endpoint.port = server.port

    async def _serve_rtu(self, bus: str, units: dict[int, Device]) -> None:
        server_path, client_path = await self._stack.enter_async_context(pty_pair())
        server = ModbusPortServer(units, self.clock, serial_path=server_path)
        await server.start()
        self._stack.push_async_callback(server.stop)
        self._servers.append(server)
        for dev in set(units.values()):
            dev.endpoint.rtu_path = client_path

    async def _start_lines(self) -> None:
        for site in self.config.sites:
            for cfg in site.lines:
                key = f"{site.name}/{cfg.name}"
                line = SimLine(key, self.clock, silence_s=cfg.silence_ms / 1000.0, baudrate=cfg.baudrate)
                on_line = [s for s in self._specs if s.site is site and s.config.line == cfg.name]
                for spec in on_line:
                    line.add(line_responder(self.devices[spec.name], spec))
                self.lines[key] = line
                if cfg.serve == "pty":
                    path = await self._stack.enter_async_context(serve_pty(line))
                    where: dict[str, Any] = {"rtu_path": path}
                else:
                    port = 0 if cfg.port == "auto" else cfg.port
                    server = await self._stack.enter_async_context(serve_tcp(line, self.config.host, port))
                    self.line_servers[key] = server
                    where = {"host": server.host, "port": server.port}
                for spec in on_line:
                    for name, value in where.items():
                        setattr(self.devices[spec.name].endpoint, name, value)

    def _make_publishers(self) -> None:
        mqtt = self.config.mqtt
        meters = [s for s in self._specs if s.kind in MQTT_KINDS]
        if mqtt is None or not meters:
            return
        groups: list[list[tuple[Device, float, int]]] = [[] for _ in range(mqtt.connections)]
        for i, s in enumerate(meters):
            entry = (self.devices[s.name], s.config.interval_s, s.config.energy_decimals)
            groups[i % mqtt.connections].append(entry)
        for i, group in enumerate(g for g in groups if g):
            client_id = f"puhui-sim-{self.config.name}-{os.getpid()}-{i}"
            self._publishers.append(MqttPublisher(group, mqtt, self.clock, client_id))

    async def _tick(self) -> None:
        period = max(float(self.config.step_s), TICK_WALL_S * self.clock.factor)
        while True:
            now = self.clock.now()
            for dev in self.devices.values():
                dev.refresh(now)
            await self.clock.sleep(period)

    async def wait_mqtt_connected(self) -> None:
        """Return once every MQTT publisher is connected (wrap in ``asyncio.timeout``)."""
        for pub in self._publishers:
            await pub.connected.wait()

    # -- reports for other processes ----------------------------------------------------
    def endpoints(self) -> dict[str, Any]:
        """Machine-readable description of what is served where (and the clock)."""
        spec = getattr(self.clock, "spec", None)
        return {
            "fleet": self.config.name,
            "clock": spec.to_dict() if spec is not None else {"factor": self.clock.factor},
            "step_s": self.config.step_s,
            "truth_interval_s": self.config.truth_interval_s,
            "control": None
            if self.control is None
            else {"host": self.config.host, "port": self.control.port},
            "mqtt": None if self.config.mqtt is None else self.config.mqtt.model_dump(),
            "devices": [d.describe() for d in self.devices.values()],
        }

    def truth(self) -> dict[str, Any]:
        """Ground truth of every channel of every device, integrated up to now."""
        now = self.clock.now()
        out: dict[str, Any] = {}
        for name, dev in self.devices.items():
            dev.refresh(now)
            out[name] = {ch: dev.ground_truth(ch).to_dict() for ch in dev.meters}
        return {"as_of": now, "devices": out}

    def step_logs(self) -> dict[tuple[str, str], StepLog]:
        """(device, channel) -> true cumulative energy per step, integrated up to now
        (empty unless the fleet config sets ``truth_steps``)."""
        now = self.clock.now()
        out: dict[tuple[str, str], StepLog] = {}
        for name, dev in self.devices.items():
            dev.refresh(now)
            for ch, meter in dev.meters.items():
                log = meter.step_log()
                if log is not None:
                    out[(name, ch)] = log
        return out

    def write_truth(self, path: str | Path) -> None:
        _write_json_atomic(Path(path), self.truth())

    def write_endpoints(self, path: str | Path) -> None:
        _write_json_atomic(Path(path), self.endpoints())


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)
