"""A hostile MQTT payload stops neither the MQTT meters nor the Modbus polling of a gateway.

Issue 15 item 4: a message of ``[`` x 100000 (RecursionError) or a 5000-digit integer
(ValueError) published to an MQTT meter's topic killed the subscriber's task; its task
group then cancelled the gateway, Modbus polling included. Real Mosquitto, a real
firmware_sim Modbus TCP meter, the gateway runtime on a manual clock.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import pytest

from common.clock import ManualClock
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet
from gateway.config import SiteConfig, parse_site
from gateway.runtime import Gateway, MemorySink
from testbed.servers import PrivateMosquitto
from tests.sim.helpers import fleet_config

PERIOD = 10
DEADLINE = 10.0
HOSTILE = [
    b"[" * 100_000,  # RecursionError in json
    b'{"energy_kwh": ' + b"9" * 5000 + b"}",  # over the 4300-digit int limit
    b'{"energy_kwh": 1' + b"0" * 400 + b"}",  # an int too large for a float
    b"\xff\xfe\xfd",
    b'{"energy_kwh": "12"}',
]


def _site(fleet: Fleet, broker: PrivateMosquitto, topic: str) -> SiteConfig:
    port = fleet.devices["hp"].endpoint.port
    nameplate = {"rated_power_kw": 30, "meter_class": "1"}
    data: dict[str, Any] = {
        "gateway": {"id": "gw-hostile-1", "site": "test"},
        "interval_minutes": 1,
        "grace_seconds": 5,
        "status": {"enabled": False},
        "meters": [
            {"id": "hp", "driver": "modbus_tcp", "connection": {"host": "127.0.0.1", "port": port},
             "unit_id": 1, "profile": "sdm630", "scenario": "clean_heating", "counts": ["energy_import"],
             "poll": {"fast": PERIOD, "slow": PERIOD}, "nameplate": nameplate},
            {"id": "plug", "driver": "mqtt", "connection": {"host": broker.host, "port": broker.port},
             "scenario": "clean_heating", "counts": ["energy"], "nameplate": nameplate,
             "source": {"topic": topic, "expected_period_s": PERIOD,
                        "fields": {"energy": {"path": "energy_kwh", "unit": "kWh", "kind": "counter"}}}},
        ],
    }  # fmt: skip
    return parse_site(data, "hostile.yaml", load_profiles())


async def _publish(broker: PrivateMosquitto, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


@pytest.mark.integration
async def test_hostile_payloads_are_counted_and_the_gateway_goes_on(mosquitto: PrivateMosquitto) -> None:
    topic = f"hostile/{id(object())}/plug"
    cfg = fleet_config({"kind": "sdm630", "name": "hp", "unit": 1, "physics": {"model": "heating"}})
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        sink = MemorySink()
        async with Gateway(_site(fleet, mosquitto, topic), clock=clock, sink=sink) as gateway:
            assert gateway.poller is not None
            (sub,) = gateway.subscribers
            async with asyncio.timeout(DEADLINE):
                await sub.wait_until(lambda h: h["plug"].connected)
            good = [json.dumps({"energy_kwh": 100.0 + i}).encode() for i in range(2)]
            await _publish(mosquitto, topic, [*HOSTILE, good[0]])
            n = len(HOSTILE) + 1
            async with asyncio.timeout(DEADLINE):
                await sub.wait_until(lambda h: h["plug"].messages == n)
            plug = sub.health["plug"]
            # The two oversized integers become Invalid samples ("infinite": they flag their
            # interval, as a NaN does); the other hostile messages give none.
            assert (plug.malformed, plug.samples) == (len(HOSTILE), 3), plug
            assert plug.connected and "malformed payload" in (plug.last_error or "")

            # Modbus polling goes on after the hostile messages ...
            polls = gateway.poller.health["hp"].ok
            await clock.advance(PERIOD)
            async with asyncio.timeout(DEADLINE):
                await gateway.poller.wait_until(lambda h: h["hp"].ok > polls)
            # ... and so does the subscriber: the next good message is delivered.
            await _publish(mosquitto, topic, [good[1]])
            async with asyncio.timeout(DEADLINE):
                await sub.wait_until(lambda h: h["plug"].samples == 4)
            assert sub.connects == 1  # the connection itself never dropped
