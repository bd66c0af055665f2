"""MQTT meters through the session's private Mosquitto."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import aiomqtt
import pytest

from common.clock import ManualClock
from firmware_sim import Fleet
from testbed.servers import PrivateMosquitto
from tests.sim.helpers import fleet_config

pytestmark = pytest.mark.integration
DEADLINE = 10.0


def _config(broker: PrivateMosquitto, prefix: str) -> Any:
    return fleet_config(
        {
            "kind": "mqtt_plain",
            "name": "plain",
            "interval_s": 900,
            "topic": prefix + "/{site}/{name}",
            "physics": {"model": "heating"},
        },
        {
            "kind": "mqtt_tasmota",
            "name": "plug",
            "interval_s": 900,
            "topic": prefix + "/tele/{name}/SENSOR",
            "physics": {"model": "load"},
        },
        mqtt={"host": broker.host, "port": broker.port},
    )


async def _next(client: aiomqtt.Client, n: int = 1) -> list[aiomqtt.Message]:
    out: list[aiomqtt.Message] = []
    async with asyncio.timeout(DEADLINE):
        async for msg in client.messages:
            out.append(msg)
            if len(out) == n:
                return out
    raise AssertionError("subscription ended")


async def test_mqtt_meters_publish_ground_truth_counters(mosquitto: PrivateMosquitto) -> None:
    prefix = f"simtest/{id(object())}"
    cfg = _config(mosquitto, prefix)
    clock = ManualClock(cfg.clock.epoch_s)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sub:
        await sub.subscribe(prefix + "/#")
        async with Fleet(cfg, clock=clock) as fleet:
            async with asyncio.timeout(DEADLINE):
                await fleet.wait_mqtt_connected()
            for _ in range(3):
                await clock.advance(900)
                msgs = {str(m.topic): json.loads(m.payload) for m in await _next(sub, 2)}  # type: ignore[arg-type]
                plain = msgs[f"{prefix}/site/plain"]
                truth = fleet.devices["plain"].ground_truth().intervals[-1]
                assert plain["ts"] == truth.end == clock.now()
                assert plain["energy_kwh"] * 1000 == pytest.approx(truth.counter_end_wh, rel=1e-12)

                plug = msgs[f"{prefix}/tele/plug/SENSOR"]["ENERGY"]
                ptruth = fleet.devices["plug"].ground_truth().intervals[-1]
                assert plug["Total"] == round(ptruth.counter_end_wh / 1000, 3)
                local = datetime.datetime.fromtimestamp(
                    ptruth.end, datetime.timezone(datetime.timedelta(hours=8))
                )
                assert msgs[f"{prefix}/tele/plug/SENSOR"]["Time"] == local.strftime("%Y-%m-%dT%H:%M:%S")
            assert fleet.devices["plain"].publish_count == 3


async def test_mqtt_faults_fire_and_stop(mosquitto: PrivateMosquitto) -> None:
    prefix = f"simtest/{id(object())}"
    cfg = _config(mosquitto, prefix)
    clock = ManualClock(cfg.clock.epoch_s)
    topic = f"{prefix}/site/plain"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sub:
        await sub.subscribe(topic)
        async with Fleet(cfg, clock=clock) as fleet:
            async with asyncio.timeout(DEADLINE):
                await fleet.wait_mqtt_connected()
            dev = fleet.devices["plain"]

            dev.set_faults(mqtt_duplicate=True, clock_jump_s=-3600)
            await clock.advance(900)
            a, b = await _next(sub, 2)
            assert a.payload == b.payload
            assert json.loads(a.payload)["ts"] == clock.now() - 3600  # type: ignore[arg-type]

            dev.set_faults(mqtt_duplicate=False, clock_jump_s=0, mqtt_malformed=True)
            await clock.advance(900)
            (bad,) = await _next(sub)
            with pytest.raises(json.JSONDecodeError):
                json.loads(bad.payload)  # type: ignore[arg-type]

            dev.set_faults(mqtt_malformed=False, value="nan")
            await clock.advance(900)
            (nan,) = await _next(sub)
            assert b"NaN" in nan.payload  # type: ignore[operator]

            dev.clear_faults()
            await clock.advance(900)
            (ok,) = await _next(sub)
            body = json.loads(ok.payload)  # type: ignore[arg-type]
            assert body["ts"] == clock.now()
            assert body["energy_kwh"] * 1000 == pytest.approx(dev.ground_truth().counter_wh, rel=1e-12)
