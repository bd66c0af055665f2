"""The gateway's local status endpoint: JSON status and Prometheus-format metrics.

``GET /status`` returns JSON (gateway, per-device health, interval builder counters, the
evidence pipeline's status); ``GET /metrics`` the same numbers in the Prometheus text
exposition format (version 0.0.4); ``GET /healthz`` answers ``ok``. Bound to loopback by
default: an installer reaches it over SSH or the site LAN when configured so.

A deliberately small HTTP/1.0 responder on ``asyncio.start_server`` (one request per
connection, GET only): the gateway needs three read-only pages, not a web framework.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

StatusSource = Callable[[], Mapping[str, Any]]


class StatusSettings(BaseModel):
    """Where the status endpoint listens (port 0: any free port)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


# -- Prometheus text format ---------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """Accumulates metric families and renders the exposition text."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        family = self._families.setdefault(name, (kind, help_, []))
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        family[2].append(f"{name}{{{label_text}}} {_number(value)}" if labels else f"{name} {_number(value)}")

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_, samples) in self._families.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


_DEVICE_COUNTERS = {
    "polls": "polls done, skipped ones included",
    "ok": "successful polls",
    "failed": "failed polls",
    "skipped": "polls skipped because the circuit breaker was open",
    "missed_slots": "poll slots missed while a poll was still running",
    "requests": "Modbus request attempts sent, retries included",
}
_BREAKER_STATES = ("closed", "open", "half_open")


def prometheus_text(status: Mapping[str, Any]) -> str:
    """Render a :func:`gateway_status` mapping as Prometheus metrics."""
    m = Metrics()
    gw = str(status.get("gateway", ""))
    m.add("puhui_gateway_info", "gauge", "gateway identity", 1, gateway=gw, site=str(status.get("site", "")))
    for meter, h in sorted(status.get("devices", {}).items()):
        for key, help_ in _DEVICE_COUNTERS.items():
            m.add(f"puhui_device_{key}_total", "counter", help_, h.get(key), meter=meter)
        m.add("puhui_device_up", "gauge", "1 when the last poll succeeded", float(h.get("state") == "up"),
              meter=meter)  # fmt: skip
        m.add("puhui_device_consecutive_failures", "gauge", "failed polls in a row",
              h.get("consecutive_failures"), meter=meter)  # fmt: skip
        m.add("puhui_device_last_latency_seconds", "gauge", "wall time of the last poll",
              h.get("last_latency_s"), meter=meter)  # fmt: skip
        for state in _BREAKER_STATES:
            m.add("puhui_device_breaker_state", "gauge", "circuit breaker state (1 = current)",
                  float(h.get("breaker") == state), meter=meter, state=state)  # fmt: skip
    for meter, h in sorted(status.get("mqtt", {}).items()):
        for key in ("messages", "samples", "malformed", "rejected"):
            if key in h:
                m.add(f"puhui_mqtt_{key}_total", "counter", f"MQTT meter {key}", h[key], meter=meter)
        if "connected" in h:
            m.add(
                "puhui_mqtt_connected", "gauge", "1 when subscribed", float(bool(h["connected"])), meter=meter
            )
    for key, value in sorted(status.get("intervals", {}).items()):
        if isinstance(value, int | float):
            m.add(f"puhui_intervals_{key}_total", "counter", f"interval builder: {key}", value)
    clock = status.get("clock", {})
    if "ok" in clock:
        m.add(
            "puhui_clock_good",
            "gauge",
            "1 while the clock is trusted to stamp and seal",
            float(bool(clock["ok"])),
        )
    for key, value in sorted(status.get("evidence", {}).items()):
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float):
            m.add(f"puhui_evidence_{key}", "gauge", f"evidence pipeline: {key}", value)
    return m.render()


def plain(obj: Any) -> Any:
    """Dataclasses, enums and mappings as JSON-ready values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
        state = getattr(obj, "state", None)
        if isinstance(state, str):
            out["state"] = state
        return out
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


# -- HTTP -------------------------------------------------------------------------------------


class StatusServer:
    """Serves ``source()`` at /status, /metrics, /healthz (async context manager)."""

    def __init__(self, settings: StatusSettings, source: StatusSource) -> None:
        self.settings = settings
        self._source = source
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("status server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> StatusServer:
        self._server = await asyncio.start_server(self._handle, self.settings.host, self.settings.port)
        log.info("status endpoint on http://%s:%d/status", self.settings.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()  # handlers end within their 5 s deadline

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                request = await reader.readline()
                while request.strip() and (await reader.readline()).strip():
                    pass  # headers are not needed
            status, ctype, body = self._respond(request.decode("latin-1").split())
            head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("status request dropped: %s", exc)
        finally:
            writer.close()

    def _respond(self, parts: list[str]) -> tuple[str, str, bytes]:
        if len(parts) < 2:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/status":
            body = json.dumps(plain(self._source()), indent=1, sort_keys=True, default=str)
            return "200 OK", "application/json", body.encode() + b"\n"
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", prometheus_text(plain(self._source())).encode()
        return "404 Not Found", "text/plain", b"try /status, /metrics or /healthz\n"


def gateway_status(
    gateway: str,
    site: str,
    devices: Mapping[str, Any],
    mqtt: Mapping[str, Any],
    intervals: Any,
    evidence: Mapping[str, Any] | None,
    *,
    clock: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document (see module docstring)."""
    return {
        "gateway": gateway,
        "site": site,
        "devices": plain(devices),
        "mqtt": plain(mqtt),
        "intervals": plain(intervals),
        "evidence": plain(evidence or {}),
        "clock": plain(clock or {}),
    }


__all__ = [
    "Metrics",
    "StatusServer",
    "StatusSettings",
    "gateway_status",
    "plain",
    "prometheus_text",
]
