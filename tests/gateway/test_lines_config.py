"""Site config of shared lines and DL/T 645 meters: what is accepted, and each error named."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.profiles import load_profiles
from gateway.config import Dlt645Meter, ModbusRtuMeter, parse_site
from gateway.errors import ConfigError
from gateway.runtime import plan_site

LINES = [
    {"id": "east", "kind": "tcp_server", "host": "192.0.2.10", "port": 8899},
    {"id": "west", "kind": "serial", "port": "/dev/ttyUSB1", "baudrate": 9600, "parity": "N"},
]
NAMEPLATE = {"rated_power_kw": 10, "meter_class": "1"}


def _meter(i: int, line: str = "east", address: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"m{i}", "driver": "dlt645", "scenario": "pv", "nameplate": NAMEPLATE,
        "counts": ["energy_import"], "connection": {"line": line, "address": address or f"{i:012d}"}, **extra,
    }  # fmt: skip


def _parse(meters: list[dict[str, Any]], lines: list[dict[str, Any]] = LINES, **top: Any) -> Any:
    data = {"gateway": {"id": "gw-1", "site": "s"}, "lines": lines, "meters": meters, **top}
    return parse_site(data, "site.yaml", load_profiles())


def test_dlt645_and_rtu_meters_on_lines_are_accepted_and_planned() -> None:
    rtu = {
        "id": "rtu", "driver": "modbus_rtu", "connection": {"line": "west"}, "unit_id": 1,
        "profile": "sdm120", "scenario": "pv", "nameplate": NAMEPLATE, "counts": ["energy_import"],
    }  # fmt: skip
    site = _parse(
        [_meter(1), _meter(2, read=["energy_import", "meter_time"], poll={"fast": 60, "slow": 900}), rtu]
    )
    plan = plan_site(site, load_profiles())
    assert [m.id for m in plan.dlt645] == ["m1", "m2"] and isinstance(site.meters[2], ModbusRtuMeter)
    (series,) = [s for s in plan.series if s.meter == "m2"]
    assert (series.quantity, series.unit, series.modulus) == ("energy_import", "kWh", 1_000_000.0)
    assert isinstance(site.meters[0], Dlt645Meter) and site.meters[0].read == (
        "energy_import",
        "energy_export",
        "power",
    )


@pytest.mark.parametrize(
    ("meters", "lines", "message"),
    [
        ([_meter(1, line="eats")], LINES, "meters[0].connection.line: 'eats' is not a line (east?)"),
        ([_meter(1), _meter(2, address="000000000001")], LINES,
         "meters[1].connection.address: '000000000001' is already used on line 'east' by meters[0]"),
        ([_meter(1, address=12345678)], LINES, "write the address in quotes, '000012345678'"),
        ([_meter(1, read=["energy_inport"])], LINES,
         "'energy_inport' is not a DL/T 645 data item (energy_import?)"),
        ([_meter(1, counts=["heat_energy"])], LINES, "meters[0].counts[0]: 'heat_energy' is not a quantity"),
        ([_meter(1, read=["meter_time"], poll={"fast": 60})], LINES, "no period for group 'slow'"),
        ([_meter(1)], [*LINES, {**LINES[0], "id": "east2"}],
         "lines[2].port: ('192.0.2.10', 8899) is already lines[0]'s"),
        ([_meter(1)], [*LINES, {**LINES[1], "port": "/dev/ttyUSB2"}],
         "lines[2].id: 'west' is already used by lines[1]"),
        ([_meter(1)], [{**LINES[0], "kind": "tcp"}], "lines[0]"),
    ],
)  # fmt: skip
def test_line_config_errors_name_the_field(
    meters: list[dict[str, Any]], lines: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(meters, lines)
    assert message in str(err.value)


def test_a_serial_line_cannot_take_a_serial_bus_port() -> None:
    bus = [{"id": "bus1", "port": "/dev/ttyUSB1"}]
    with pytest.raises(ConfigError, match=r"lines\[1\].port: '/dev/ttyUSB1' is already a serial bus's port"):
        _parse([_meter(1)], serial_buses=bus)
