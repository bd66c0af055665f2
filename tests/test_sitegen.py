"""puhui.sitegen: every shipped fleet site becomes a valid gateway site config."""

from __future__ import annotations

import pytest

from common.tls import TlsSettings
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet
from gateway.config import ModbusRtuMeter, MqttMeter, parse_site
from puhui.sitegen import mqtt_meter_topics, site_for


@pytest.mark.integration
@pytest.mark.parametrize(
    ("fleet_file", "site", "expected"),
    [
        ("config/fleets/zhangjiakou-heating-village.yaml", "wanquan-xiaocun", {"clean_heating": 20}),
        ("config/fleets/charging-depot.yaml", "depot", {"ev_charging": 7}),  # 2x2 Alfen sockets + 3 ABB
        ("config/fleets/pv-street.yaml", "pv-street", {"pv": 18}),
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
