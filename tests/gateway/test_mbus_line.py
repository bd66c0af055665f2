"""M-Bus heat meters (kWh and GJ counters) beside a CJ/T 188 heat meter and a DL/T 645
meter on one simulated line behind one simulated transparent serial server, read by the
gateway on schedule for a simulated day: each M-Bus meter's heat per interval and per day
matches the simulator's ground truth. And the site config of M-Bus meters: what is
accepted and planned, each error named by its field.

The fleet keeps true cumulative energy per 60 s step (``truth_steps``), so the heat that
flowed between the two readings bounding an interval is known; a reading shows it floored
to the meter's counting step (10 Wh, or 10 MJ = 2.78 kWh).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import FastClock
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet, parse_fleet
from firmware_sim.errors import FleetConfigError
from gateway.config import MbusMeter, SiteConfig, parse_site
from gateway.errors import ConfigError
from gateway.runtime import Gateway, MemorySink, plan_site, used_lines
from tests.gateway.test_cjt188_line import _check_heat

EPOCH = "2025-01-15T00:00:00+00:00"
POLL_S = 300
# name -> (energy unit, kWh per counting step, heating physics, primary address)
MBUS_METERS: dict[str, tuple[str, float, dict[str, Any], int]] = {
    "flat-201": ("kWh", 0.01, {"model": "heating", "rated_kw": 12.0}, 1),
    "block-3": ("GJ", 10_000 / 3600, {"model": "heating", "rated_kw": 200.0, "area_m2": 2500.0}, 2),
}


def _fleet(factor: float) -> Any:
    devices: list[dict[str, Any]] = [
        {"kind": "mbus_heat_meter", "name": name, "line": "east", "energy_unit": unit, "unit": primary,
         "physics": physics}
        for name, (unit, _, physics, primary) in MBUS_METERS.items()
    ]  # fmt: skip
    devices += [
        {"kind": "cjt188_heat_meter", "name": "flat-101", "line": "east", "address": "20250000000001",
         "physics": {"model": "heating", "rated_kw": 12.0}},
        {"kind": "dlt645_meter", "name": "house-01", "line": "east", "address": "000000000101",
         "physics": {"model": "heating", "rated_kw": 12.0}},
    ]  # fmt: skip
    data = {
        "clock": {"epoch": EPOCH, "factor": factor},
        "step_s": 60,
        "truth_interval_s": 900,
        "truth_steps": True,
        "control": None,
        "sites": [
            {"name": "village", "lines": [{"name": "east", "serve": "tcp_server"}], "devices": devices}
        ],
    }
    return parse_fleet(data, "test-fleet")


def _meter(name: str, dev: Any) -> dict[str, Any]:
    common = {
        "id": name,
        "scenario": "clean_heating",
        "nameplate": {"rated_power_kw": 15.0, "meter_class": "1"},
    }
    if dev.kind == "dlt645_meter":
        return {
            **common, "driver": "dlt645", "connection": {"line": "east", "address": dev.endpoint.address},
            "read": ["energy_import", "power"], "counts": ["energy_import"], "poll": {"fast": POLL_S},
        }  # fmt: skip
    heat = {
        "counts": ["heat_energy", "flow_temperature", "return_temperature"], "poll_s": POLL_S,
        "policy": {"timeout_s": 0.5}, "nameplate": {"rated_power_kw": 12.0, "meter_class": "heat_2"},
    }  # fmt: skip
    if dev.kind == "cjt188_heat_meter":
        return {
            **common,
            **heat,
            "driver": "cjt188",
            "connection": {"line": "east", "address": dev.endpoint.address},
        }
    physics = MBUS_METERS[name][2]
    heat["nameplate"] = {"rated_power_kw": physics["rated_kw"], "meter_class": "heat_2"}
    return {**common, **heat, "driver": "mbus", "connection": {"line": "east", "address": dev.endpoint.unit}}


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
async def test_mbus_heat_meters_beside_cjt188_and_dlt645_on_one_serial_server_match_ground_truth() -> None:
    cfg = _fleet(factor=2880)  # a day in half a minute
    clock = FastClock(cfg.clock.epoch_s, cfg.clock.factor)
    day_end = cfg.clock.epoch_s + 86_400
    async with Fleet(cfg, clock=clock) as fleet:
        site = _site(fleet)
        assert sum(isinstance(m, MbusMeter) for m in site.meters) == len(MBUS_METERS)
        sink = MemorySink()
        async with Gateway(site, clock=clock, sink=sink) as gateway:
            await clock.sleep_until(day_end + 150)  # the day's last interval closes at end + grace
            health = dict(gateway.poller.health) if gateway.poller else {}
        logs = fleet.step_logs()
    assert len(health) == len(MBUS_METERS) + 2
    for meter, h in health.items():
        # every slot read (a poll landing in the next slot on a starved CPU is not a miss)
        assert h.failed == 0 and h.ok >= 0.98 * 86_400 // POLL_S, (meter, h)
    for meter, (_, digit_kwh, physics, _) in MBUS_METERS.items():
        records = [r for r in sink.records if r.meter == meter]
        _check_heat(meter, records, logs[(meter, "main")], digit_kwh, physics["rated_kw"])
    gauges = {(r.meter, r.quantity) for r in sink.records}
    assert ("block-3", "flow_temperature") in gauges and ("flat-201", "return_temperature") in gauges
    assert ("flat-101", "heat_energy") in gauges and ("house-01", "energy_import") in gauges


# -- site config ----------------------------------------------------------------------------

LINES = [{"id": "east", "kind": "tcp_server", "host": "192.0.2.10", "port": 8899}]
NAMEPLATE = {"rated_power_kw": 10, "meter_class": "heat_2"}


def _mbus(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"m{i}", "driver": "mbus", "scenario": "clean_heating", "nameplate": NAMEPLATE,
        "counts": ["heat_energy"], "connection": {"line": "east", "address": i}, **extra,
    }  # fmt: skip


def _parse(meters: list[dict[str, Any]]) -> Any:
    data = {"gateway": {"id": "gw-1", "site": "s"}, "lines": LINES, "meters": meters}
    return parse_site(data, "site.yaml", load_profiles())


def test_heat_energy_is_a_kwh_counter_without_modulus() -> None:
    site = _parse([_mbus(1, counts=["heat_energy", "volume", "flow_temperature", "flow_rate"]),
                   _mbus(2, connection={"line": "east", "secondary_address": "12345678"})])  # fmt: skip
    plan = plan_site(site, load_profiles())
    assert [m.id for m in plan.mbus] == ["m1", "m2"] and used_lines(plan) == {"east"}
    series = {(s.meter, s.quantity): s for s in plan.series}
    heat = series[("m1", "heat_energy")]
    assert (heat.unit, heat.kind, heat.poll_period, heat.modulus) == ("kWh", "counter", 60.0, None)
    assert (series[("m1", "volume")].unit, series[("m1", "flow_rate")].kind) == ("m3", "gauge")
    assert ("m2", "heat_energy") in series


@pytest.mark.parametrize(
    ("meter", "message"),
    [
        (_mbus(251), "meters[0].connection.address: Input should be less than or equal to 250"),
        (_mbus(1, quantities=["heat_enrgy"]),
         "meters[0].quantities: 'heat_enrgy': not an M-Bus heat meter quantity"),
        (_mbus(1, counts=["energy_import"]), "meters[0].counts[0]: 'energy_import' is not a quantity"),
        (_mbus(1, connection={"line": "eats", "address": 1}),
         "meters[0].connection.line: 'eats' is not a line (east?)"),
        (_mbus(1, connection={"line": "east", "secondary_address": "1234"}), "is not a secondary address"),
        (_mbus(1, connection={"line": "east"}), "give address (primary, 0-250) or secondary_address"),
        (_mbus(1, poll={"fast": 60}), "meters[0].poll: unknown key 'poll' (poll_s?)"),
    ],
)  # fmt: skip
def test_bad_mbus_meter_config_names_the_field(meter: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse([meter])
    assert message in str(err.value)


def test_two_mbus_meters_with_one_primary_address_on_a_line_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        _parse([_mbus(1), _mbus(2, connection={"line": "east", "address": 1})])
    assert "meters[1].connection.address: 1 is already used on line 'east' by meters[0]" in str(err.value)


def test_a_bad_mbus_meter_in_a_fleet_file_is_named() -> None:
    device = {"kind": "mbus_heat_meter", "name": "flat", "line": "east", "address": "00000000000001",
              "physics": {"model": "heating"}}  # fmt: skip
    data = {"control": None, "sites": [{"name": "v", "lines": [{"name": "east"}], "devices": [device]}]}
    with pytest.raises(FleetConfigError, match=r"sites\[0\]\.devices\[0\]") as err:
        parse_fleet(data, "fleet.yaml")
    assert "M-Bus meters a unit as their primary address" in str(err.value)


def test_the_profiles_page_mbus_excerpt_validates() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "profiles.md").read_text(encoding="utf-8")
    section = text[text.index("## EN 13757-3 M-Bus heat meters") :]
    section = section[: section.index("\n## ", 1)]
    (excerpt,) = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, flags=re.S)]
    site = parse_site({"gateway": {"id": "gw", "site": "s"}, **excerpt}, "profiles.md", load_profiles())
    (meter,) = site.meters
    assert isinstance(meter, MbusMeter) and meter.connection.target.primary == 5


@pytest.mark.integration
async def test_check_live_judges_mbus_meters_beside_the_others_on_the_line() -> None:
    from drivers.modbus.profiles import load_profiles as profiles
    from gateway.commission import check_live

    cfg = _fleet(factor=1.0)
    clock = FastClock(cfg.clock.epoch_s, cfg.clock.factor)
    async with Fleet(cfg, clock=clock) as fleet:
        site = _site(fleet)
        checks = await check_live(site, profiles(), clock, mqtt_wait_s=1.0)
    by_meter = {c.meter: c for c in checks}
    assert set(by_meter) == {m.id for m in site.meters}
    for name in MBUS_METERS:
        c = by_meter[name]
        assert c.reachable and not c.missing and c.error is None, c
        assert c.where.startswith("mbus on ") and "address" in c.where
        assert {r.quantity for r in c.readings} >= {"heat_energy", "flow_temperature"}, c.readings
