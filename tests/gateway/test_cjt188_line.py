"""CJ/T 188 heat meters (kWh, GJ and MWh counters) and DL/T 645 meters on one simulated
RS-485 line behind one simulated transparent serial server, read by the gateway on
schedule for a simulated day: each heat meter's heat per interval and per day matches the
simulator's ground truth.

The fleet keeps true cumulative energy per 60 s step (``truth_steps``), so the heat that
flowed between the two readings bounding an interval is known; a reading shows it floored
to the meter's last digit (0.01 kWh, 0.01 GJ = 2.78 kWh, 0.01 MWh = 10 kWh).
"""

from __future__ import annotations

from typing import Any

import pytest

from common.clock import FastClock
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet, parse_fleet
from firmware_sim.errors import FleetConfigError
from firmware_sim.meter import MWS_PER_WH
from gateway.config import Cjt188Meter, SiteConfig, parse_site
from gateway.runtime import Gateway, MemorySink

EPOCH = "2025-01-15T00:00:00+00:00"
STEP = 60
POLL_S = 300
# name -> (energy unit, kWh per last digit, heating physics): a big building on the
# coarse MWh meter, so its 10 kWh digit stays well under 0.5 % of a day's heat
HEAT_METERS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "flat-101": ("kWh", 0.01, {"model": "heating", "rated_kw": 12.0}),
    "flat-102": ("kWh", 0.01, {"model": "heating", "rated_kw": 12.0, "area_m2": 90.0}),
    "block-2": ("GJ", 10_000 / 3600, {"model": "heating", "rated_kw": 100.0, "area_m2": 1000.0}),
    "school": ("MWh", 10.0, {"model": "heating", "rated_kw": 400.0, "area_m2": 5000.0}),
}
DLT645_METERS = 2


def _fleet(factor: float) -> Any:
    devices: list[dict[str, Any]] = [
        {"kind": "cjt188_heat_meter", "name": name, "line": "east", "energy_unit": unit,
         "address": f"{20250000000001 + i:014d}", "physics": physics}
        for i, (name, (unit, _, physics)) in enumerate(HEAT_METERS.items())
    ]  # fmt: skip
    devices.append(
        {"kind": "dlt645_meter", "name": "house-{i:02d}", "count": DLT645_METERS, "line": "east",
         "address": "000000000101", "physics": {"model": "heating", "rated_kw": 12.0}}
    )  # fmt: skip
    data = {
        "clock": {"epoch": EPOCH, "factor": factor},
        "step_s": STEP,
        "truth_interval_s": 900,
        "truth_steps": True,
        "control": None,
        "sites": [
            {"name": "village", "lines": [{"name": "east", "serve": "tcp_server"}], "devices": devices}
        ],
    }
    return parse_fleet(data, "test-fleet")


def _meter(name: str, dev: Any) -> dict[str, Any]:
    if dev.kind == "dlt645_meter":
        return {
            "id": name, "driver": "dlt645", "scenario": "clean_heating",
            "connection": {"line": "east", "address": dev.endpoint.address},
            "read": ["energy_import", "power"], "counts": ["energy_import"], "poll": {"fast": POLL_S},
            "nameplate": {"rated_power_kw": 15.0, "meter_class": "1"},
        }  # fmt: skip
    unit, _, physics = HEAT_METERS[name]
    return {
        "id": name, "driver": "cjt188", "scenario": "clean_heating", "energy_unit": unit,
        "connection": {"line": "east", "address": dev.endpoint.address},
        "counts": ["heat_energy", "flow_temperature", "return_temperature"], "poll_s": POLL_S,
        "policy": {"timeout_s": 0.5},
        "nameplate": {"rated_power_kw": physics["rated_kw"], "meter_class": "heat_2"},
    }  # fmt: skip


def _site(fleet: Fleet) -> SiteConfig:
    server = fleet.line_servers["village/east"]
    data = {
        "gateway": {"id": "gw-village-1", "site": "village"},
        "interval_minutes": 15,
        "grace_seconds": 120,
        "boundary_seconds": 60,
        "lines": [{"id": "east", "kind": "tcp_server", "host": server.host, "port": server.port,
                   "baudrate": 2400, "parity": "E", "timeout_s": 0.5, "inter_frame_delay_ms": 1}],
        "meters": [_meter(name, dev) for name, dev in fleet.devices.items()],
        "status": {"enabled": False},
    }  # fmt: skip
    return parse_site(data, "village.yaml", load_profiles())


@pytest.mark.integration
async def test_heat_meters_and_dlt645_meters_on_one_serial_server_match_ground_truth() -> None:
    cfg = _fleet(factor=2880)  # a day in half a minute
    clock = FastClock(cfg.clock.epoch_s, cfg.clock.factor)
    day_end = cfg.clock.epoch_s + 86_400
    async with Fleet(cfg, clock=clock) as fleet:
        site = _site(fleet)
        assert sum(isinstance(m, Cjt188Meter) for m in site.meters) == len(HEAT_METERS)
        sink = MemorySink()
        async with Gateway(site, clock=clock, sink=sink) as gateway:
            await clock.sleep_until(day_end + 150)  # the day's last interval closes at end + grace
            health = dict(gateway.poller.health) if gateway.poller else {}
        logs = fleet.step_logs()
    assert len(health) == len(HEAT_METERS) + DLT645_METERS
    for meter, h in health.items():
        # every slot of the day read; on a starved CPU at x2880 (0.1 s a slot) a poll may land
        # in the next slot: the intervals' boundary readings are what _check_heat then holds
        assert h.failed == 0 and h.ok >= 0.98 * 86_400 // POLL_S, (meter, h)
    for meter, (_, digit_kwh, physics) in HEAT_METERS.items():
        records = [r for r in sink.records if r.meter == meter]
        _check_heat(meter, records, logs[(meter, "main")], digit_kwh, physics["rated_kw"])
    gauges = {(r.meter, r.quantity) for r in sink.records if r.meter in HEAT_METERS}
    assert ("school", "flow_temperature") in gauges and ("flat-101", "return_temperature") in gauges


def _check_heat(meter: str, records: list[Any], log: Any, digit_kwh: float, rated_kw: float) -> None:
    counted = [r for r in records if r.quantity == "heat_energy" and r.delta is not None]
    counted = [r for r in counted if "first" not in r.flags]
    assert len(counted) >= 95, meter  # 96 quarter hours a day, the first has no start reading
    step_kwh = rated_kw * STEP / 3600  # the most a reading stamped one step late can be off
    total = truth_total = 0.0
    for r in counted:
        t0, t1 = r.counter_start_time_ms / 1000, r.counter_end_time_ms / 1000
        truth = (log.at(t1)[0] - log.at(t0)[0]) / MWS_PER_WH / 1000
        # two readings floored to the meter's last digit, and the step a reading straddles
        assert r.delta == pytest.approx(truth, abs=digit_kwh + step_kwh), (meter, r)
        total += r.delta
        truth_total += truth
    assert truth_total * 0.005 > 2 * digit_kwh, (meter, truth_total)  # the digit is well inside 0.5 %
    assert total == pytest.approx(truth_total, rel=0.005), meter


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address": "000000000101"}, "address of a cjt188_heat_meter has 14 digits, got '000000000101'"),
        ({"physics": {"model": "pv", "kwp": 5}}, "kind cjt188_heat_meter cannot meter physics 'pv'"),
        ({"line": None}, "kind cjt188_heat_meter hangs on a shared line"),
        ({"energy_unit": "MJ"}, "energy_unit"),
    ],
)
def test_a_bad_heat_meter_in_a_fleet_file_is_named(change: dict[str, Any], message: str) -> None:
    device = {"kind": "cjt188_heat_meter", "name": "flat", "line": "east", "address": "00000000000001",
              "physics": {"model": "heating"}, **change}  # fmt: skip
    data = {"control": None, "sites": [{"name": "v", "lines": [{"name": "east"}], "devices": [device]}]}
    with pytest.raises(FleetConfigError, match=r"sites\[0\]\.devices\[0\]") as err:
        parse_fleet(data, "fleet.yaml")
    assert message in str(err.value)
