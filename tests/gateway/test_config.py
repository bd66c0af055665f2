"""Site config: shipped examples and doc samples load; errors name file, path, suggestion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from common.clock import ManualClock
from drivers.modbus.profiles import load_profiles, parse_profile
from gateway.config import ModbusTcpMeter, MqttMeter, load_site, mqtt_series_specs, parse_site, series_specs
from gateway.errors import ConfigError
from gateway.intervals import IntervalBuilder

ROOT = Path(__file__).resolve().parents[2]
SITES = sorted((ROOT / "config" / "sites").glob("*.yaml"))
PROFILES = load_profiles()


def yaml_blocks(doc: Path, marker: str) -> list[str]:
    return re.findall(rf"```yaml\n# {marker}\n(.*?)```", doc.read_text(), flags=re.S)


@pytest.mark.parametrize("path", SITES, ids=lambda p: p.name)
def test_example_sites_load_and_build_series(path: Path) -> None:
    site = load_site(path, PROFILES)
    specs = []
    for m in site.meters:
        if isinstance(m, MqttMeter):
            specs += mqtt_series_specs(m)
        elif m.profile != "sunspec":
            specs += series_specs(m, m.fields(PROFILES))
    IntervalBuilder(specs, clock=ManualClock(0), interval_s=site.interval_s)


def test_doc_samples_load() -> None:
    blocks = yaml_blocks(ROOT / "docs" / "gateway-config.md", "site")
    assert blocks
    for text in blocks:
        parse_site(yaml.safe_load(text), "gateway-config.md", PROFILES)
    profile_blocks = yaml_blocks(ROOT / "docs" / "profiles.md", "profile")
    assert profile_blocks
    for text in profile_blocks:
        parse_profile(yaml.safe_load(text), "profiles.md")


BAD = """
gateway: {id: "gw 1", site: x}
interval_minutes: 7
serial_buses:
  - {id: bus1, port: /dev/ttyUSB0, parity: X}
meters:
  - id: m1
    driver: modbus_tcp
    connection: {host: h, prot: 502}
    unit_id: 1
    profile: sdm63
    scenario: pv
    nameplate: {rated_power_kw: 5, meter_class: "1"}
    counts: [energy_import]
  - id: m1
    driver: modbus_rtu
    connection: {bus: bus2}
    unit_id: 1
    scenario: pv
    nameplate: {rated_power_kw: 5, meter_class: "1"}
    counts: [energy_imprt]
    registers:
      - {name: e, quantity: energy_import, address: 72, type: flaot32, kind: counter}
      - {name: p, quantity: power, adress: 12, type: float32}
  - {id: m3, driver: modbus_tpc, scenario: pv}
"""


def test_every_error_is_reported_at_once_with_path_and_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as exc:
        load_site(path, PROFILES)
    lines = str(exc.value).splitlines()
    expected = [
        "site.yaml: interval_minutes: 7 does not divide 60",
        "site.yaml: meters[0].connection.prot: unknown key 'prot' (port?)",
        "site.yaml: meters[0].profile: 'sdm63' is not a shipped profile (sdm630?)",
        "site.yaml: meters[1].connection.bus: 'bus2' is not a serial bus (bus1?)",
        "site.yaml: meters[1].counts[0]: 'energy_imprt' is not a quantity of this meter (energy_import?)",
        "site.yaml: meters[1].id: 'm1' is already used by meters[0]",
        "site.yaml: meters[1].registers[0].type: 'flaot32' is not a type (float32?)",
        "site.yaml: meters[1].registers[1].adress: unknown key 'adress' (address?)",
        "site.yaml: meters[2].driver: 'modbus_tpc' is not a driver (modbus_tcp?)",
        "site.yaml: serial_buses[0].parity: 'X' is not a parity; expected one of: N, E, O",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)
    assert any(line.startswith("site.yaml: gateway.id: 'gw 1'") for line in lines)
    assert len(exc.value.issues) >= len(expected) + 1


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("gateway: {id: x\nmeters: [")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+, column \d+: not valid YAML"):
        load_site(path, PROFILES)


def test_rtu_bus_has_one_owner_and_unit_ids_are_unique_on_it() -> None:
    meter = {"driver": "modbus_rtu", "connection": {"bus": "b"}, "unit_id": 1, "profile": "sdm120",
             "scenario": "clean_heating", "nameplate": {"rated_power_kw": 3, "meter_class": "1"},
             "counts": ["energy_import"]}  # fmt: skip
    data = {"gateway": {"id": "gw", "site": "s"},
            "serial_buses": [{"id": "b", "port": "/dev/ttyUSB0"}, {"id": "c", "port": "/dev/ttyUSB0"}],
            "meters": [{**meter, "id": "a"}, {**meter, "id": "b2"}]}  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        parse_site(data, "s.yaml", PROFILES)
    text = str(exc.value)
    assert "serial_buses[1].port: '/dev/ttyUSB0' is already used by serial_buses[0]" in text
    assert "meters[1].unit_id: unit id 1 is already used on bus 'b' by meters[0]" in text


def test_series_specs_take_rollover_width_scale_and_rate_from_profile_and_nameplate() -> None:
    site = load_site(ROOT / "config" / "sites" / "inline-registers.yaml", PROFILES)
    boiler = site.meters[0]
    assert isinstance(boiler, ModbusTcpMeter)
    [spec] = series_specs(boiler, boiler.fields(PROFILES))
    assert spec.kind == "counter" and spec.modulus == pytest.approx(2**32 * 0.01)
    assert spec.max_rate == pytest.approx(3 * 30 / 3600) and spec.stats_quantity == "power"
    school = load_site(ROOT / "config" / "sites" / "zhangjiakou-school.yaml", PROFILES)
    abb = next(m for m in school.meters if m.id == "charger-2")
    assert isinstance(abb, ModbusTcpMeter)
    [session] = series_specs(abb, abb.fields(PROFILES))
    assert session.per_session and session.modulus is None


def test_an_mqtt_time_zone_must_exist() -> None:
    meter = {"id": "plug", "driver": "mqtt", "connection": {"host": "127.0.0.1"}, "scenario": "ev_charging",
             "nameplate": {"rated_power_kw": 3, "meter_class": "1"}, "counts": ["energy_import"],
             "source": {"topic": "tele/plug/SENSOR",
                        "fields": {"energy_import": {"path": "ENERGY.Total", "unit": "kWh",
                                                     "kind": "counter"}},
                        "time": {"path": "Time", "format": "iso8601", "tz": "Asia/Shangai"}}}  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        parse_site({"gateway": {"id": "gw", "site": "s"}, "meters": [meter]}, "s.yaml", PROFILES)
    assert "s.yaml: meters[0].source.time.tz: " in str(exc.value)
    assert "'Asia/Shangai' is not an IANA time zone" in str(exc.value)
    meter["source"]["time"]["tz"] = "Asia/Shanghai"  # type: ignore[index]
    [plug] = parse_site({"gateway": {"id": "gw", "site": "s"}, "meters": [meter]}, "s.yaml", PROFILES).meters
    assert plug.source.time is not None and plug.source.time.tz == "Asia/Shanghai"  # type: ignore[union-attr]
