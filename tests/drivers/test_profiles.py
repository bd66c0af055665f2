"""Shipped profiles load, match the simulator's maps, and bad profiles say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.errors import ProfileError, UnknownProfile
from drivers.modbus.decode import RegisterType
from drivers.modbus.profiles import get_profile, load_profile, load_profiles, parse_profile, select_fields

SHIPPED = {"sdm630", "sdm120", "alfen-socket", "alfen-station", "abb-terra-ac", "heat-meter-converter",
           "sunspec", "chint-dtsu666", "chint-ddsu666", "huawei-sun2000", "sungrow-sg"}  # fmt: skip


def test_all_shipped_profiles_load() -> None:
    profiles = load_profiles()
    assert set(profiles) >= SHIPPED
    for p in profiles.values():
        assert p.source


def test_addresses_of_the_key_fields() -> None:
    p = load_profiles()
    sdm = p["sdm630"]
    assert sdm.quantities["energy_import"].address == 0x0048
    assert sdm.quantities["energy_import"].function == 4
    assert sdm.quantities["power"].address == 0x0034
    alfen = p["alfen-socket"].quantities
    assert (alfen["power"].address, alfen["energy_delivered"].address) == (344, 374)
    assert alfen["energy_delivered"].type is RegisterType.FLOAT64
    abb = p["abb-terra-ac"].quantities["session_energy"]
    assert abb.address == 0x401E and abb.per_session and abb.kind == "counter"
    heat = p["heat-meter-converter"].quantities
    assert heat["heat_energy"].type is RegisterType.UINT32 and heat["heat_energy"].kind == "counter"


def test_heat_meter_profile_matches_firmware_sim_map() -> None:
    from firmware_sim.registers import heatmeter as hm  # the project's own: never skipped

    q = load_profiles()["heat-meter-converter"].quantities
    assert q["heat_energy"].address == hm.HEAT_ENERGY_WH
    assert q["power"].address == hm.HEAT_POWER_W
    assert q["flow_temperature"].address == hm.FLOW_TEMP
    assert q["return_temperature"].address == hm.RETURN_TEMP
    assert q["flow_rate"].address == hm.FLOW_RATE_LH
    assert q["heat_energy_kwh"].address == hm.HEAT_ENERGY_KWH_F32


def test_profile_errors_name_file_path_and_suggestion(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text(
        "name: x\nsource: me\nfields:\n"
        "  - {name: e, quantity: e, address: 1, type: flaot32, kind: counter}\n"
        "  - {name: p, quantity: p, adress: 3, type: int16, scale_factor: P_SF}\n"
    )
    with pytest.raises(ProfileError) as exc:
        load_profile(bad)
    text = str(exc.value)
    assert "x.yaml: fields[0].type: 'flaot32' is not a type (float32?)" in text
    assert "x.yaml: fields[1].adress: unknown key 'adress' (address?)" in text
    with pytest.raises(ProfileError, match="scale_factor 'W_SF' is not a field"):
        parse_profile({"name": "y", "source": "s", "fields": [
            {"name": "w", "address": 0, "type": "int16", "scale_factor": "W_SF"}]}, "y.yaml")  # fmt: skip


def test_unknown_profile_suggests() -> None:
    with pytest.raises(UnknownProfile, match=r"sdm630\?"):
        get_profile(load_profiles(), "sdm63")


def test_select_fields_brings_scale_factors_along() -> None:
    p = parse_profile({"name": "z", "source": "s", "fields": [
        {"name": "w", "quantity": "power", "address": 0, "type": "int16", "scale_factor": "w_sf"},
        {"name": "w_sf", "address": 1, "type": "sunssf", "kind": "info"},
        {"name": "e", "quantity": "energy", "address": 2, "type": "acc32", "kind": "counter"},
    ]}, "z.yaml")  # fmt: skip
    assert [f.name for f in select_fields(p.fields, ["fast"])] == ["w", "w_sf"]
