"""Site config of CJ/T 188 heat meters on shared lines: what is accepted and planned, and
each error named by its field."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.profiles import load_profiles
from gateway.config import Cjt188Meter, parse_site
from gateway.errors import ConfigError
from gateway.runtime import plan_site, used_lines

LINES = [{"id": "east", "kind": "tcp_server", "host": "192.0.2.10", "port": 8899}]
NAMEPLATE = {"rated_power_kw": 10, "meter_class": "heat_2"}


def _heat(i: int, address: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"h{i}", "driver": "cjt188", "scenario": "clean_heating", "nameplate": NAMEPLATE,
        "counts": ["heat_energy"], "connection": {"line": "east", "address": address or f"{i:014d}"}, **extra,
    }  # fmt: skip


def _dlt645(i: int, address: str) -> dict[str, Any]:
    return {
        "id": f"e{i}", "driver": "dlt645", "scenario": "clean_heating", "nameplate": NAMEPLATE,
        "counts": ["energy_import"], "connection": {"line": "east", "address": address},
    }  # fmt: skip


def _parse(meters: list[dict[str, Any]]) -> Any:
    data = {"gateway": {"id": "gw-1", "site": "s"}, "lines": LINES, "meters": meters}
    return parse_site(data, "site.yaml", load_profiles())


@pytest.mark.parametrize(("unit", "modulus"), [("kWh", 1_000_000.0), ("MWh", 1e9), ("GJ", 1e6 * 2500 / 9)])
def test_heat_energy_is_a_kwh_counter_rolling_over_at_a_million_of_the_meters_unit(
    unit: str, modulus: float
) -> None:
    site = _parse([_heat(1, energy_unit=unit, counts=["heat_energy", "flow_temperature", "flow_rate"])])
    plan = plan_site(site, load_profiles())
    assert [m.id for m in plan.cjt188] == ["h1"] and isinstance(site.meters[0], Cjt188Meter)
    assert used_lines(plan) == {"east"}
    by_quantity = {s.quantity: s for s in plan.series}
    heat = by_quantity["heat_energy"]
    assert (heat.unit, heat.kind, heat.poll_period) == ("kWh", "counter", 60.0)
    assert heat.modulus == pytest.approx(modulus, rel=1e-12)
    assert [
        (s.kind, s.unit, s.modulus) for s in (by_quantity["flow_temperature"], by_quantity["flow_rate"])
    ] == [
        ("gauge", "degC", None),
        ("gauge", "L/h", None),
    ]


def test_addresses_are_unique_per_protocol_on_a_line() -> None:
    # a DL/T 645 meter and a heat meter may share digits: they speak different protocols
    site = _parse([_heat(1, address="00000000000101"), _dlt645(1, "000000000101"), _heat(2)])
    assert len(site.meters) == 3


@pytest.mark.parametrize(
    ("meter", "message"),
    [
        (_heat(1, address="1234"), "meters[0].connection.address: '1234' is not a CJ/T 188 address"),
        (_heat(1, quantities=["heat_enrgy"]), "meters[0].quantities: 'heat_enrgy': not a CJ/T 188 quantity"),
        (_heat(1, counts=["energy_import"]), "meters[0].counts[0]: 'energy_import' is not a quantity"),
        (_heat(1, quantities=["power"]), "meters[0].counts[0]: 'heat_energy' is not a quantity"),
        (_heat(1, energy_unit="GJJ"), "meters[0].energy_unit: 'GJJ' is not a CJ/T 188 energy unit (GJ?)"),
        (_heat(1, connection={"line": "eats", "address": "00000000000001"}),
         "meters[0].connection.line: 'eats' is not a line (east?)"),
        (_heat(1, connection={"line": "east", "address": "00000000000001", "meter_type": "water"}),
         "meters[0].connection.meter_type"),
        (_heat(1, poll_s=0), "meters[0].poll_s"),
        (_heat(1, policy={"timeout_s": 0.5, "retry": 2}), "meters[0].policy.retry"),
        (_heat(1, poll={"fast": 60}), "meters[0].poll: unknown key 'poll' (poll_s?)"),
    ],
)  # fmt: skip
def test_bad_cjt188_meter_config_names_the_field(meter: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse([meter])
    assert message in str(err.value)


def test_two_heat_meters_with_one_address_on_a_line_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        _parse([_heat(1), _heat(2, address="00000000000001")])
    assert (
        "meters[1].connection.address: '00000000000001' is already used on line 'east' by meters[0]"
        in str(err.value)
    )
