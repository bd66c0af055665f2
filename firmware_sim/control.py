"""The control endpoint: switch faults and read ground truth from another process.

A tiny line protocol on loopback TCP: one JSON object per line in, one per line out.

====================================================  ====================================
request                                               effect
====================================================  ====================================
``{"op": "status"}``                                  clock, devices, request counts, faults
``{"op": "faults", "device": D, "set": {...}}``       merge fault switches (FaultState names)
``{"op": "faults", "device": D, "clear": true}``      all faults off
``{"op": "reset_counter", "device": D}``              one-shot: meter replaced (+ "channel")
``{"op": "rollover", "device": D}``                   one-shot: counter near wrap (+ "margin_wh")
``{"op": "truth", "device": D}``                      ground truth (+ "channel")
====================================================  ====================================

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from common.clock import Clock
from firmware_sim.device import Device
from firmware_sim.errors import ControlError, SimError

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    """Serves the control protocol for a set of devices (async context manager)."""

    def __init__(
        self, devices: Mapping[str, Device], clock: Clock, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._devices, self._clock = devices, clock
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise ControlError("control endpoint not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> ControlServer:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name("sim-control-conn")
        self._conns.add(task)
        try:
            while line := await reader.readline():
                writer.write(json.dumps(self.handle_line(line)).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ControlError("request must be a JSON object")
            return {"ok": True, **self.handle(req)}
        except (ValueError, SimError, ValidationError, KeyError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return self._status()
        dev = self._device(req.get("device"))
        now = self._clock.now()
        if op == "faults":
            if req.get("clear"):
                dev.clear_faults()
            state = dev.set_faults(**req.get("set", {}))
            return {"device": dev.name, "faults": state.model_dump()}
        if op == "reset_counter":
            dev.reset_counter(req.get("channel"), now=now)
            return {"device": dev.name}
        if op == "rollover":
            dev.rollover(req.get("channel"), req.get("margin_wh"), now=now)
            return {"device": dev.name}
        if op == "truth":
            dev.refresh(now)
            return {"device": dev.name, "truth": dev.ground_truth(req.get("channel")).to_dict()}
        raise ControlError(f"unknown op {op!r} (status, faults, reset_counter, rollover, truth)")

    def _device(self, name: object) -> Device:
        if not isinstance(name, str) or name not in self._devices:
            raise ControlError(f"unknown device {name!r}")
        return self._devices[name]

    def _status(self) -> dict[str, Any]:
        devices = {
            n: {
                "requests": d.request_count,
                "published": d.publish_count,
                "faults": d.faults.model_dump(exclude_defaults=True),
            }
            for n, d in self._devices.items()
        }
        return {"now": self._clock.now(), "devices": devices}


async def control_request(host: str, port: int, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request to a control endpoint and return its reply."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        reply = json.loads(await reader.readline())
    finally:
        writer.close()
        await writer.wait_closed()
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "control request failed"))
    return dict(reply)
