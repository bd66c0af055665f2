"""puhui.sitegen: every shipped fleet site becomes a valid gateway site config."""

from __future__ import annotations

import pytest

from common.tls import TlsSettings
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet
from gateway.config import Cjt188Meter, Dlt645Meter, ModbusRtuMeter, MqttMeter, parse_site
from puhui.sitegen import mqtt_meter_topics, site_for


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fleet_file", "site", "expected"),
    [
        ("config/fleets/zhangjiakou-heating-village.yaml", "wanquan-xiaocun", {"clean_heating": 20}),
        ("config/fleets/charging-depot.yaml", "depot", {"ev_charging": 7}),  # 2x2 Alfen sockets + 3 ABB
        ("config/fleets/pv-street.yaml", "pv-street", {"pv": 18}),
        ("config/fleets/village-dlt645-cjt188.yaml", "wanquan-village", {"clean_heating": 12}),
    ],
)
async def test_shipped_fleet_sites_map_to_valid_site_configs(
    fleet_file: str, site: str, expected: dict[str, int]
) -> None:
    config = Fleet.from_file(fleet_file).config.model_copy(update={"mqtt": None})
    tls = {"ca_file": "ca.crt", "cert_file": "gw-test-1.crt", "key_file": "gw-test-1.key"}
    async with Fleet(config) as fleet:
        data = site_for(fleet, site, "gw-test-1", mqtt=("127.0.0.1", 1883), mqtt_tls=tls)
    parsed = parse_site(data, f"{site}.yaml", load_profiles())
    scenarios: dict[str, int] = {}
    for m in parsed.meters:
        scenarios[m.scenario] = scenarios.get(m.scenario, 0) + 1
    assert scenarios == expected
    rtu = [m for m in parsed.meters if isinstance(m, ModbusRtuMeter)]
    assert all(m.connection.bus == parsed.serial_buses[0].id for m in rtu)
    assert len({(m.connection.bus, m.unit_id) for m in rtu}) == len(rtu)
    mqtt = [m for m in parsed.meters if isinstance(m, MqttMeter)]
    # what a broker's access list lets the gateway read: the topics its MQTT meters use
    assert sorted((site, m.source.topic) for m in mqtt) == sorted(
        t for t in mqtt_meter_topics(config) if t[0] == site
    )
    assert all(m.connection.tls == TlsSettings(**tls) for m in mqtt)
    if site == "pv-street":
        assert len(mqtt) == 2
    if site == "depot":  # the site's main meter (load physics) is not creditable: left out
        assert "depot-main" not in {m.id for m in parsed.meters}


@pytest.mark.integration
async def test_meters_on_a_shared_line_map_to_its_serial_server_and_their_drivers() -> None:
    """The village's twelve meters on one RS-485 line: one ``lines:`` entry (the fleet's
    simulated transparent serial server), DL/T 645 and CJ/T 188 meters by address on it."""
    config = Fleet.from_file("config/fleets/village-dlt645-cjt188.yaml").config
    async with Fleet(config) as fleet:
        data = site_for(fleet, "wanquan-village", "gw-test-1", poll_s=450, timeout_s=0.5, line_timeout_s=0.1)
        server = fleet.line_servers["wanquan-village/village-rs485"]
        addresses = {name: dev.endpoint.address for name, dev in fleet.devices.items()}
    parsed = parse_site(data, "wanquan-village.yaml", load_profiles())
    [line] = parsed.lines
    assert (line.kind, line.host, line.port, line.timeout_s) == ("tcp_server", server.host, server.port, 0.1)
    dlt = [m for m in parsed.meters if isinstance(m, Dlt645Meter)]
    cjt = [m for m in parsed.meters if isinstance(m, Cjt188Meter)]
    assert len(dlt) == 8 and len(cjt) == 4 and len(parsed.meters) == 12
    assert all(m.connection.line == line.id for m in [*dlt, *cjt])
    assert {m.id: m.connection.address for m in [*dlt, *cjt]} == addresses
    assert all(m.counts == ("energy_import",) and m.poll == {"fast": 450} for m in dlt)
    assert all(m.counts == ("heat_energy",) and m.poll_s == 450 and m.policy.timeout_s == 0.1 for m in cjt)
    assert {m.energy_unit for m in cjt} == {"kWh"}
    assert all(m.nameplate.meter_class == "heat_2" for m in cjt)


@pytest.mark.integration
async def test_mbus_heat_meters_on_a_line_map_to_the_mbus_driver_by_primary_address() -> None:
    from gateway.config import MbusMeter
    from tests.gateway.test_mbus_line import MBUS_METERS
    from tests.gateway.test_mbus_line import _fleet as mbus_fleet

    async with Fleet(mbus_fleet(factor=1.0)) as fleet:
        site = next(iter({d.site for d in fleet.devices.values()}))
        data = site_for(fleet, site, "gw-test-1", poll_s=300, timeout_s=0.5, line_timeout_s=0.1)
        units = {name: dev.endpoint.unit for name, dev in fleet.devices.items() if name in MBUS_METERS}
    parsed = parse_site(data, "mbus.yaml", load_profiles())
    mbus = [m for m in parsed.meters if isinstance(m, MbusMeter)]
    assert {m.id: m.connection.address for m in mbus} == units and len(units) == len(MBUS_METERS)
    assert all(m.counts == ("heat_energy",) and m.nameplate.meter_class == "heat_2" for m in mbus)
