"""The gateway's local status endpoint: the installer's page, JSON status, Prometheus metrics.

``GET /`` is the installer's page (HTML for a phone, :mod:`gateway.status_page`);
``GET /status`` returns JSON (gateway, per-device health, interval builder counters, the
evidence pipeline's status); ``GET /metrics`` the same numbers in the Prometheus text
exposition format (version 0.0.4); ``GET /healthz`` answers ``ok``. Bound to loopback by
default. Bound anywhere else it must have ``password_file``: every path but ``/healthz``
then asks for HTTP Basic authentication (any user name, that password), so a phone on the
site LAN gets a login prompt and Prometheus a ``basic_auth`` scrape. Plain HTTP: the LAN
sees the password; use it on a site network, not across the internet.

A deliberately small HTTP/1.0 responder on ``asyncio.start_server`` (one request per
connection, GET only): the gateway needs three read-only pages, not a web framework.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hmac
import ipaddress
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import StatusSetupError
from gateway.status_page import render_page

log = logging.getLogger(__name__)

StatusSource = Callable[[], Mapping[str, Any]]


class StatusSettings(BaseModel):
    """Where the status endpoint listens (port 0: any free port)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    password_file: str | None = Field(default=None, description="HTTP Basic password; needed off loopback")

    @model_validator(mode="after")
    def _protected_off_loopback(self) -> StatusSettings:
        if self.password_file is None and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not loopback: set password_file (the page then asks for it)"
            )
        return self


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


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
        if key == "last_end":
            m.add("puhui_last_interval_end_seconds", "gauge", "end of the latest closed interval", value)
        elif isinstance(value, int | float):
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
        self._password: bytes | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("status server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> StatusServer:
        self._password = self._read_password()
        self._server = await asyncio.start_server(self._handle, self.settings.host, self.settings.port)
        log.info("status endpoint on http://%s:%d/status", self.settings.host, self.port)
        return self

    def _read_password(self) -> bytes | None:
        path = self.settings.password_file
        if path is None:
            return None
        try:
            password = Path(path).read_bytes().strip()
        except OSError as exc:
            raise StatusSetupError(f"status.password_file: {path}: {exc.strerror or exc}") from exc
        if not password:
            raise StatusSetupError(f"status.password_file: {path}: empty")
        return password

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()  # handlers end within their 5 s deadline

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                request = await reader.readline()
                authorization = await self._authorization(reader) if request.strip() else b""
            parts = request.decode("latin-1").split()
            if self._allowed(parts, authorization):
                status, ctype, body = self._respond(parts)
                extra = "Cache-Control: no-store\r\n"
            else:
                status, ctype, body = "401 Unauthorized", "text/plain", b"password needed\n"
                extra = 'WWW-Authenticate: Basic realm="puhui gateway", charset="UTF-8"\r\n'
            head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    f"{extra}\r\n")  # fmt: skip
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("status request dropped: %s", exc)
        finally:
            writer.close()

    @staticmethod
    async def _authorization(reader: asyncio.StreamReader) -> bytes:
        """The Authorization header's value (the other headers are read and dropped; at most 100)."""
        found = b""
        for _ in range(100):
            line = await reader.readline()
            if not line.strip():
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                found = value.strip()
        return found

    def _allowed(self, parts: list[str], authorization: bytes) -> bool:
        if self._password is None or (len(parts) >= 2 and parts[1].split("?", 1)[0] == "/healthz"):
            return True
        scheme, _, encoded = authorization.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            _, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(password, self._password)

    def _respond(self, parts: list[str]) -> tuple[str, str, bytes]:
        if len(parts) < 2:
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path in ("/", "/index.html"):
            return "200 OK", "text/html; charset=utf-8", render_page(plain(self._source())).encode()
        if path == "/status":
            body = json.dumps(plain(self._source()), indent=1, sort_keys=True, default=str)
            return "200 OK", "application/json", body.encode() + b"\n"
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", prometheus_text(plain(self._source())).encode()
        return "404 Not Found", "text/plain", b"try /, /status, /metrics or /healthz\n"


def gateway_status(
    gateway: str,
    site: str,
    devices: Mapping[str, Any],
    mqtt: Mapping[str, Any],
    intervals: Any,
    evidence: Mapping[str, Any] | None,
    *,
    clock: Mapping[str, Any] | None = None,
    readings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document (see module docstring); ``readings``: meter -> quantity ->
    {value, unit, at}, the last reading of each."""
    return {
        "gateway": gateway,
        "site": site,
        "devices": plain(devices),
        "mqtt": plain(mqtt),
        "intervals": plain(intervals),
        "evidence": plain(evidence or {}),
        "clock": plain(clock or {}),
        "readings": plain(readings or {}),
    }


__all__ = [
    "Metrics",
    "StatusServer",
    "StatusSettings",
    "gateway_status",
    "plain",
    "prometheus_text",
]
