"""Fleet files: examples validate; errors name the file and path, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.config import expand, load_fleet, parse_fleet
from firmware_sim.errors import FleetConfigError

FLEETS = Path(__file__).parents[2] / "config" / "fleets"


@pytest.mark.parametrize("path", sorted(FLEETS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_fleets_validate(path: Path) -> None:
    assert expand(load_fleet(path))


def test_load_fleet_is_at_least_200_plus_200() -> None:
    specs = expand(load_fleet(FLEETS / "load-200.yaml"))
    mqtt = [s for s in specs if s.kind.startswith("mqtt")]
    assert len(mqtt) >= 200 and len(specs) - len(mqtt) >= 200


def test_all_errors_at_once_with_paths() -> None:
    data = {
        "sites": [
            {
                "name": "s",
                "devices": [
                    {"kind": "sdm630", "name": "a", "physics": {"model": "pv", "kwp": 5}},
                    {"kind": "sdm63", "name": "b", "physics": {"model": "pv", "kwp": 5}},
                    {"kind": "sdm630", "name": "c", "physics": {"model": "pv", "kwq": 5}},
                ],
            }
        ]
    }
    with pytest.raises(FleetConfigError) as err:
        parse_fleet(data, "fleet.yaml")
    text = str(err.value)
    assert "fleet.yaml: sites[0].devices[1].kind:" in text
    assert "fleet.yaml: sites[0].devices[2].physics.kwp: Field required" in text
    assert "fleet.yaml: sites[0].devices[2].physics.kwq: Extra inputs are not permitted" in text


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ({"kind": "alfen", "name": "x", "physics": {"model": "pv", "kwp": 1}}, "cannot meter"),
        ({"kind": "sdm630", "name": "x", "count": 3, "physics": {"model": "load"}}, "{i}"),
        ({"kind": "mqtt_plain", "name": "x", "port": 5020, "physics": {"model": "load"}}, "MQTT"),
    ],
)
def test_incoherent_devices_are_rejected(device: dict, message: str) -> None:
    with pytest.raises(FleetConfigError, match=r"sites\[0\]\.devices\[0\]") as err:
        parse_fleet({"sites": [{"name": "s", "devices": [device]}]}, "f.yaml")
    assert message in str(err.value)


def test_shared_port_needs_distinct_units_and_mqtt_needs_a_broker() -> None:
    dev = {"kind": "sdm120", "name": "x", "port": 5020, "physics": {"model": "load"}}
    other = {**dev, "name": "y"}
    with pytest.raises(FleetConfigError, match="share tcp 5020"):
        parse_fleet({"sites": [{"name": "s", "devices": [dev, other]}]})
    parse_fleet({"sites": [{"name": "s", "devices": [dev, {**other, "unit": 2}]}]})
    mq = {"kind": "mqtt_plain", "name": "m", "physics": {"model": "load"}}
    with pytest.raises(FleetConfigError, match="broker"):
        parse_fleet({"sites": [{"name": "s", "devices": [mq]}]})


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("sites: [\n")
    with pytest.raises(FleetConfigError, match=r"broken\.yaml: line 2, column 1: not valid YAML"):
        load_fleet(bad)
    with pytest.raises(FleetConfigError, match=r"absent\.yaml: cannot read: No such file"):
        load_fleet(tmp_path / "absent.yaml")
