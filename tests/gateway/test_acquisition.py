"""The gateway against firmware_sim: every device type, real TCP and RTU, on a manual clock.

The simulator keeps ground truth in 10 s steps (``truth_interval_s=10``), so the energy
that really flowed between any two readings is known exactly. Each interval record names
the times of the readings that bound it (``counter_start_time_ms``, ``counter_end_time_ms``);
its delta must equal the simulator's energy between those instants, within the register's
resolution (1 Wh for integer Wh counters; float32 kWh rounding for Eastron meters). A
counter reset (meter replaced) and a rollover are injected and must be flagged, the reset
excluding exactly the energy between the last old and first new reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from common.clock import ManualClock
from drivers.modbus.profiles import load_profiles
from evidence.records import IntervalRecord
from firmware_sim import Fleet
from firmware_sim.device import Device
from gateway.config import SiteConfig, parse_site
from gateway.runtime import Gateway, MemorySink, next_close
from testbed.servers import PrivateMosquitto
from tests.sim.helpers import fleet_config

PERIOD = 10  # poll and truth step, seconds
INTERVAL = 60  # one-minute intervals: many intervals in few polls

DEVICES: list[dict[str, Any]] = [
    {"kind": "sdm630", "name": "hp-elec", "unit": 3, "initial_kwh": 120.0, "physics": {"model": "heating"}},
    {"kind": "sdm120", "name": "boiler-elec", "unit": 4, "rtu_bus": "bus1", "initial_kwh": 50.0,
     "physics": {"model": "heating", "heater": "electric_boiler"}},
    # a uint32 Wh counter 400 Wh below its wrap: it rolls over during the test, by itself
    {"kind": "heat_meter", "name": "hp-heat", "unit": 5, "rtu_bus": "bus1",
     "initial_kwh": (2**32 - 400) / 1000, "physics": {"model": "heating"}},
    {"kind": "sunspec_inverter", "name": "pv", "unit": 1, "physics": {"model": "pv", "kwp": 8.0}},
    # SunSpec over RS-485: discovery walks the model chain through the serial bus owner
    {"kind": "sunspec_inverter", "name": "pv-rtu", "unit": 6, "rtu_bus": "bus1",
     "physics": {"model": "pv", "kwp": 5.0}},
    {"kind": "sunspec_meter", "name": "grid", "unit": 1, "physics": {"model": "load"}},
    {"kind": "alfen", "name": "alfen", "sockets": 1, "physics": {"model": "ev"}},
    {"kind": "abb", "name": "abb", "unit": 1, "physics": {"model": "ev", "arrivals_per_day": 500}},
    {"kind": "mqtt_plain", "name": "plug", "interval_s": PERIOD, "physics": {"model": "heating"}},
]  # fmt: skip

# (meter id in the site, sim device, channel, quantity, resolution in the quantity's unit, unit per Wh)
SERIES = [
    ("hp-elec", "hp-elec", "main", "energy_import", "f32kwh", 1e-3),
    ("boiler-elec", "boiler-elec", "main", "energy_import", "f32kwh", 1e-3),
    ("hp-heat", "hp-heat", "main", "heat_energy", 1.0, 1.0),
    ("pv", "pv", "main", "energy_generated", 1.0, 1.0),
    ("pv-rtu", "pv-rtu", "main", "energy_generated", 1.0, 1.0),
    ("grid", "grid", "main", "energy_import", 1.0, 1.0),
    ("alfen-1", "alfen", "socket1", "energy_delivered", 1e-3, 1.0),
    ("abb", "abb", "main", "session_energy", 1.0, 1.0),
    ("plug", "plug", "main", "energy", 1e-9, 1e-3),
]


def _site(fleet: Fleet, broker: tuple[str, int]) -> SiteConfig:
    d = fleet.devices
    tcp = lambda name: {"host": "127.0.0.1", "port": d[name].endpoint.port, "timeout_s": 2}  # noqa: E731
    bus_path = d["boiler-elec"].endpoint.rtu_path
    meters = [
        {"id": "hp-elec", "driver": "modbus_tcp", "connection": tcp("hp-elec"), "unit_id": 3,
         "profile": "sdm630", "scenario": "clean_heating", "counts": ["energy_import"]},
        {"id": "boiler-elec", "driver": "modbus_rtu", "connection": {"bus": "bus1"}, "unit_id": 4,
         "profile": "sdm120", "scenario": "clean_heating", "counts": ["energy_import"]},
        {"id": "hp-heat", "driver": "modbus_rtu", "connection": {"bus": "bus1"}, "unit_id": 5,
         "profile": "heat-meter-converter", "scenario": "clean_heating",
         "counts": ["heat_energy", "flow_temperature"]},
        {"id": "pv", "driver": "modbus_tcp", "connection": tcp("pv"), "unit_id": 1, "profile": "sunspec",
         "scenario": "pv", "counts": ["energy_generated"]},
        {"id": "pv-rtu", "driver": "modbus_rtu", "connection": {"bus": "bus1"}, "unit_id": 6,
         "profile": "sunspec", "scenario": "pv", "counts": ["energy_generated"]},
        {"id": "grid", "driver": "modbus_tcp", "connection": tcp("grid"), "unit_id": 1, "profile": "sunspec",
         "scenario": "pv", "counts": ["energy_import"]},
        {"id": "alfen-1", "driver": "modbus_tcp", "connection": tcp("alfen"), "unit_id": 1,
         "profile": "alfen-socket", "scenario": "ev_charging", "counts": ["energy_delivered"]},
        {"id": "abb", "driver": "modbus_tcp", "connection": tcp("abb"), "unit_id": 1,
         "profile": "abb-terra-ac", "scenario": "ev_charging", "counts": ["session_energy"]},
    ]  # fmt: skip
    for m in meters:
        m["poll"] = {"fast": PERIOD, "slow": PERIOD}
    meters.append({
        "id": "plug", "driver": "mqtt", "scenario": "clean_heating", "counts": ["energy"],
        "connection": {"host": broker[0], "port": broker[1]},
        "source": {"topic": d["plug"].endpoint.topic, "expected_period_s": PERIOD,
                   "time": {"path": "ts", "format": "epoch_s"},
                   "fields": {"energy": {"path": "energy_kwh", "unit": "kWh", "kind": "counter"},
                              "power": {"path": "power_w", "unit": "W"}}},
    })  # fmt: skip
    for m in meters:
        m["nameplate"] = {"rated_power_kw": 30, "meter_class": "1"}
    data = {
        "gateway": {"id": "gw-test-1", "site": "test-site"},
        "interval_minutes": INTERVAL // 60,
        "grace_seconds": 5,  # the boundary reading (taken at the boundary) closes its interval
        "serial_buses": [{"id": "bus1", "port": bus_path, "baudrate": 115200, "inter_frame_delay_ms": 1}],
        "meters": meters,
        "status": {"enabled": False},
    }
    return parse_site(data, "test-site.yaml", load_profiles())


def _truth_wh(dev: Device, channel: str, t0: float, t1: float) -> float:
    """Energy (Wh) the simulator says flowed in [t0, t1) (both on 10 s step boundaries)."""
    steps = dev.ground_truth(channel).intervals
    return sum(s.forward_wh for s in steps if t0 <= s.start and s.end <= t1)


def _resolution(res: float | str, counter: float) -> float:
    if res == "f32kwh":  # two float32 readings, each rounded to half an ulp
        return float(np.spacing(np.float32(counter))) * 1.01
    return float(res)


async def _step(clock: ManualClock, gateway: Gateway, steps: int) -> None:
    """Advance ``steps`` poll periods, each time waiting until every device has polled."""
    assert gateway.poller is not None
    (mqtt,) = gateway.subscribers
    for _ in range(steps):
        before: dict[str, int] = {m: h.polls for m, h in gateway.poller.health.items()}
        published = mqtt.health["plug"].messages
        await clock.advance(PERIOD)
        async with asyncio.timeout(10):
            await mqtt.wait_until(lambda h, n=published: h["plug"].messages > n)
        try:
            async with asyncio.timeout(10):
                await gateway.poller.wait_until(lambda h, b=before: all(h[m].polls > b[m] for m in b))
        except TimeoutError:
            raise AssertionError(f"not every device polled: {gateway.poller.health}") from None
        await asyncio.sleep(0)  # let the closer task run at interval boundaries


def _by_series(records: Iterable[IntervalRecord]) -> dict[tuple[str, str], list[IntervalRecord]]:
    out: dict[tuple[str, str], list[IntervalRecord]] = {}
    for r in records:
        out.setdefault((r.meter, r.quantity), []).append(r)
    return out


def _check_against_truth(
    fleet: Fleet, series: Mapping[tuple[str, str], Sequence[IntervalRecord]], excluded: Mapping[str, float]
) -> int:
    checked = 0
    for meter, device, channel, quantity, res, per_wh in SERIES:
        records = series[(meter, quantity)]
        dev = fleet.devices[device]
        for r in records:
            if r.delta is None or "first" in r.flags:
                continue
            assert r.counter_start_time_ms is not None and r.counter_end_time_ms is not None
            t0, t1 = r.counter_start_time_ms / 1000, r.counter_end_time_ms / 1000
            truth = _truth_wh(dev, channel, t0, t1) * per_wh
            if "reset" in r.flags:
                truth -= excluded[meter] * per_wh
            magnitude = max(abs(r.counter_start or 0.0), abs(r.counter_end or 0.0))
            tol = _resolution(res, magnitude) * (2 if "reset" in r.flags else 1)
            assert r.delta == pytest.approx(truth, abs=tol), (meter, r)
            checked += 1
    return checked


@pytest.mark.integration
async def test_interval_deltas_equal_ground_truth_for_every_device_type_with_reset_and_rollover(
    mosquitto: PrivateMosquitto,
) -> None:
    broker = (mosquitto.host, mosquitto.port)
    cfg = fleet_config(
        *DEVICES,
        step_s=PERIOD,
        truth_interval_s=PERIOD,
        mqtt={"host": broker[0], "port": broker[1], "qos": 1},
    )
    start = cfg.clock.epoch_s
    clock = ManualClock(start)
    async with Fleet(cfg, clock=clock) as fleet:
        site = _site(fleet, broker)
        sink = MemorySink()
        async with Gateway(site, clock=clock, sink=sink) as gateway:
            async with asyncio.timeout(10):
                # the plug's publisher schedules its slots from the clock when it connects:
                # step before then and the first slot is never published
                await fleet.wait_mqtt_connected()
                await gateway.subscribers[0].wait_until(lambda h: h["plug"].connected)
            await _step(clock, gateway, 2 * INTERVAL // PERIOD)
            # the SDM630 is replaced (a new meter starting at 0)
            last_old = clock.now()  # the reading just taken was the last of the old SDM630
            fleet.devices["hp-elec"].reset_counter(now=clock.now())
            await _step(clock, gateway, 1)
            first_new = clock.now()
            await _step(clock, gateway, 4 * INTERVAL // PERIOD)
            health = dict(gateway.poller.health) if gateway.poller else {}
        assert all(h.failed == 0 and h.ok == h.polls for h in health.values()), health
        series = _by_series(sink.records)
        # every interval of every series is emitted once, in order, none skipped
        ends = {tuple(r.end for r in rs) for rs in series.values()}
        assert len(ends) == 1 and len(next(iter(ends))) >= 6
        excluded = {"hp-elec": _truth_wh(fleet.devices["hp-elec"], "main", last_old, first_new)}
        checked = _check_against_truth(fleet, series, excluded)
        assert checked >= 6 * 5
        flags = {k: {f for r in rs for f in r.flags} for k, rs in series.items()}
        assert "reset" in flags[("hp-elec", "energy_import")]
        assert "rollover" in flags[("hp-heat", "heat_energy")]
        assert not {"reset", "rollover"} & flags[("pv", "energy_generated")]
        # the ABB's per-session counter restarts with each session: no reset, and energy counted
        assert not {"reset", "rollover"} & flags[("abb", "session_energy")]
        assert not {"reset", "rollover", "gap"} & flags[("pv-rtu", "energy_generated")]
        assert sum(r.delta or 0 for r in series[("pv-rtu", "energy_generated")]) > 0  # daylight: read
        assert sum(r.delta or 0 for r in series[("abb", "session_energy")]) > 0
        # a gauge has statistics, no delta
        temps = series[("hp-heat", "flow_temperature")]
        assert all(r.kind == "gauge" and r.stats is not None and r.delta is None for r in temps[1:])


def test_next_close_is_the_first_boundary_plus_grace_after_now() -> None:
    assert next_close(0.0, 60, 5.0) == 5.0  # [-60, 0) closes 5 s after its end
    assert next_close(5.0, 60, 5.0) == 65.0
    assert next_close(64.9, 60, 5.0) == 65.0
    assert next_close(119.0, 60, 0.0) == 120.0
