"""MQTT meters: JSON readings published to a broker through a few shared connections.

Two payload styles:

- ``mqtt_tasmota`` (smart plug, Tasmota-like), topic default ``tele/{name}/SENSOR``::

    {"Time": "2025-01-15T08:00:00", "ENERGY": {"TotalStartTime": "...", "Total": 1234.567,
     "Power": 812, "ApparentPower": 845, "ReactivePower": 234, "Factor": 0.96,
     "Voltage": 230, "Current": 3.674}}

  ``Time`` is local time (UTC+8) without zone, ``Total`` kWh rounded to
  ``energy_decimals``, ``Power`` whole watts, like Tasmota's defaults.
- ``mqtt_plain``, topic default ``puhui/{site}/{name}/reading``::

    {"ts": 1736899200.0, "energy_kwh": 1234.5678901, "power_w": 812.345}

Each meter publishes at clock-aligned multiples of its interval (simulated seconds); the
timestamp is the time of the counter it carries (a step boundary), so a reading can be
compared exactly with ground truth. Faults: ``mqtt_malformed`` (truncated JSON),
``mqtt_duplicate`` (sent twice), ``clock_jump_s`` (timestamp shifted), ``value``
(NaN literals or absurd numbers).
"""

from __future__ import annotations

import asyncio
import datetime
import heapq
import json
import math
import random
import ssl
from typing import Any

import aiomqtt

from common.aio import publish
from common.backoff import Backoff
from common.clock import Clock
from common.mqtt import run_reconnecting
from common.tls import SecretError, client_context
from firmware_sim.config import MqttConfig
from firmware_sim.device import Device
from firmware_sim.errors import ServeError

LOCAL_TZ = datetime.timezone(datetime.timedelta(hours=8))
NOMINAL_V = 230.0


def _local_iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, LOCAL_TZ).strftime("%Y-%m-%dT%H:%M:%S")


def tasmota_payload(power_w: float, total_kwh: float, ts: float, decimals: int) -> dict[str, Any]:
    current = abs(power_w) / NOMINAL_V if math.isfinite(power_w) else power_w
    apparent = abs(power_w) / 0.96 if math.isfinite(power_w) else power_w
    reactive = math.sqrt(max(0.0, apparent**2 - power_w**2)) if math.isfinite(power_w) else power_w
    energy = {
        "TotalStartTime": "2024-01-01T00:00:00",
        "Total": round(total_kwh, decimals) if math.isfinite(total_kwh) else total_kwh,
        "Power": round(power_w) if math.isfinite(power_w) else power_w,
        "ApparentPower": round(apparent) if math.isfinite(apparent) else apparent,
        "ReactivePower": round(reactive) if math.isfinite(reactive) else reactive,
        "Factor": 0.96,
        "Voltage": round(NOMINAL_V),
        "Current": round(current, 3) if math.isfinite(current) else current,
    }
    return {"Time": _local_iso(ts), "ENERGY": energy}


def plain_payload(power_w: float, total_kwh: float, ts: float) -> dict[str, Any]:
    return {"ts": ts, "energy_kwh": total_kwh, "power_w": power_w}


def payloads(dev: Device, now: float, decimals: int) -> list[bytes]:
    """The messages ``dev`` publishes at clock time ``now`` (0, 1 or 2 with faults)."""
    r = dev.readout(0, now)
    ch = r.main()
    f = dev.faults
    ts = r.t + f.clock_jump_s
    total_kwh = ch.counter_wh / 1000.0
    if dev.kind == "mqtt_tasmota":
        body = tasmota_payload(ch.power_w, total_kwh, ts, decimals)
    else:
        body = plain_payload(ch.power_w, total_kwh, ts)
    raw = json.dumps(body, separators=(",", ":")).encode()
    if f.mqtt_malformed and dev.fault_fires():
        raw = raw[: len(raw) // 2]
    return [raw, raw] if f.mqtt_duplicate and dev.fault_fires() else [raw]


class MqttPublisher:
    """Publishes a group of MQTT meters over one broker connection (reconnecting)."""

    def __init__(
        self,
        devices: list[tuple[Device, float, int]],  # (device, interval_s, decimals)
        cfg: MqttConfig,
        clock: Clock,
        client_id: str,
    ) -> None:
        self._devices = devices
        self._cfg = cfg
        self._clock = clock
        self._client_id = client_id
        self._tls = _tls_context(cfg)  # certificates read once, at start
        # seeded by the client id: the publishers of one fleet retry at different moments
        self._backoff = Backoff(0.2, 10.0, rng=random.Random(client_id))
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Publish forever; reconnect with jittered exponential backoff on broker loss."""
        await run_reconnecting(self._client, self._session, backoff=self._backoff, name=self._client_id,
                               on_lost=self._connection_lost)  # fmt: skip

    def _client(self) -> aiomqtt.Client:
        cfg = self._cfg
        return aiomqtt.Client(cfg.host, cfg.port, identifier=self._client_id, timeout=CLIENT_TIMEOUT_S,
                              tls_context=self._tls)  # fmt: skip

    async def _session(self, client: aiomqtt.Client) -> None:
        self.connected.set()
        await self._publish_loop(client)

    async def _connection_lost(self, error: aiomqtt.MqttError, delay: float) -> None:
        self.connected.clear()

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        now = self._clock.now()
        heap = [(_next_slot(now, iv), i) for i, (_, iv, _) in enumerate(self._devices)]
        heapq.heapify(heap)
        while heap:
            due, i = heap[0]
            await self._clock.sleep_until(due)
            now = self._clock.now()
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                dev, interval, decimals = self._devices[i]
                for raw in payloads(dev, due, decimals):
                    await publish(client, dev.endpoint.topic or "", raw, qos=self._cfg.qos)
                    dev.publish_count += 1
                heapq.heappush(heap, (_next_slot(max(due, now - interval), interval), i))


CLIENT_TIMEOUT_S = 3.0  # bounds aiomqtt's connect, QoS 1 acknowledgements and graceful disconnect


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    try:
        return client_context(cfg.tls, "mqtt.tls")
    except SecretError as exc:
        raise ServeError(f"MQTT meters: {exc}") from exc


def _next_slot(t: float, interval: float) -> float:
    return (math.floor(t / interval) + 1) * interval
