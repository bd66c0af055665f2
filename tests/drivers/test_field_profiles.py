"""Profiles of the devices the Chinese field installs: CHINT DTSU666 / DDSU666 meters, Huawei
SUN2000 and Sungrow SG inverters.

Each profile loads, cites its source and says what it could not confirm; the addresses of
the key fields are those of the cited tables; its requests fit what the open-source readers
found the dongles take. Real tier: firmware_sim serves each device from its own map
(firmware_sim/registers/chint.py, huawei.py, sungrow.py, written from the cited tables, not
from the profiles) over Modbus TCP, and the meters over RTU on a simulated RS-485 line; the
gateway's source reads them with the profile, and the values match the simulator's truth.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import numpy as np
import pytest

from common.clock import ManualClock
from drivers.contract import Invalid, PollResult
from drivers.modbus.plan import plan_reads
from drivers.modbus.profiles import Profile, load_profiles, select_fields
from drivers.modbus.source import ModbusSource, ReadPolicy
from drivers.modbus_rtu.framing import LineRegisterReader
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.modbus_tcp.driver import tcp_source
from firmware_sim import Fleet
from firmware_sim.build import build_device
from firmware_sim.config import expand
from firmware_sim.device import Device
from firmware_sim.registers import huawei, sungrow
from firmware_sim.rtu_responder import RtuResponder
from tests.drivers.cjt188_lines import ResponderLine
from tests.sim.helpers import fleet_config

PROFILES = load_profiles()
FIELD = ("chint-dtsu666", "chint-ddsu666", "huawei-sun2000", "sungrow-sg")
PV = {"model": "pv", "kwp": 10.0, "cloudiness": 0.0}
NOON = 4 * 3600  # 2025-01-15 12:00 in Zhangjiakou (UTC+8) is 04:00 UTC: the sun is up
DEVICES = {
    "chint-dtsu666": {
        "kind": "chint_dtsu666",
        "physics": {"model": "load", "base_w": 900.0, "peak_w": 4000.0},
    },
    "chint-ddsu666": {
        "kind": "chint_ddsu666",
        "physics": {"model": "load", "base_w": 300.0, "peak_w": 2000.0},
    },
    "huawei-sun2000": {"kind": "huawei_sun2000", "physics": PV},
    "sungrow-sg": {"kind": "sungrow_sg", "physics": PV},
}


def test_the_field_profiles_load_cite_their_sources_and_say_what_is_unconfirmed() -> None:
    cited = {
        "chint-dtsu666": ("ZTY0.464.1448", "volkszaehler/mbmd"),
        "chint-ddsu666": ("xnrg_11_ddsu666.ino",),
        "huawei-sun2000": ("Solar Inverter Modbus Interface Definitions", "Issue 05", "huawei-solar-lib"),
        "sungrow-sg": (
            "Communication Protocol of PV Grid-Connected String Inverters",
            "V1.1.37",
            "SunGather",
        ),
    }
    for name, needles in cited.items():
        profile = PROFILES[name]
        assert all(n in profile.source for n in needles), (name, profile.source)
        assert profile.unconfirmed, name  # none of these maps was read from the vendor PDF itself


def test_key_addresses_are_those_of_the_cited_tables() -> None:
    def where(profile: str, quantity: str) -> tuple[int, int, str, float]:
        f = PROFILES[profile].quantities[quantity]
        return f.function, f.address, f.type.value, f.scale

    assert where("chint-dtsu666", "energy_import") == (3, 0x101E, "float32", 1.0)
    assert where("chint-dtsu666", "power") == (3, 0x2012, "float32", 0.1)
    assert where("chint-dtsu666", "voltage_l1") == (3, 0x2006, "float32", 0.1)
    assert where("chint-ddsu666", "energy_import") == (4, 0x4000, "float32", 1.0)
    assert where("chint-ddsu666", "power") == (4, 0x2004, "float32", 1000.0)
    assert where("huawei-sun2000", "energy_generated") == (3, 32106, "uint32", 0.01)
    assert where("huawei-sun2000", "power") == (3, 32080, "int32", 1.0)
    assert where("sungrow-sg", "energy_generated") == (4, 5143, "uint32", 0.1)  # register 5144
    assert where("sungrow-sg", "power") == (4, 5030, "uint32", 1.0)  # register 5031
    assert PROFILES["sungrow-sg"].quantities["power"].order.value == "CDAB"
    grid = PROFILES["huawei-sun2000"].quantities["grid_connected"]
    assert (grid.address, grid.bit, grid.kind) == (32000, 1, "status")


@pytest.mark.parametrize(("name", "limit"), [("huawei-sun2000", 64), ("sungrow-sg", 38)])
def test_requests_fit_what_the_dongles_take(name: str, limit: int) -> None:
    """huawei-solar-lib reads at most 64 registers a request; SunGather reads a WiNet-S in
    runs of at most 38."""
    profile = PROFILES[name]
    groups = {f.poll_group for f in profile.fields}
    for chosen in [*({g} for g in groups), groups]:
        spans = (f.span(1) for f in select_fields(profile.fields, chosen))
        assert all(r.count <= limit for r in plan_reads(spans, max_gap=profile.max_gap)), chosen


# -- simulator round trips ----------------------------------------------------------------------


def _values(result: PollResult) -> dict[str, float | Invalid]:
    assert result.ok, result.error
    return {s.quantity: s.value for s in result.samples}


def _truth(dev: Device, now: float) -> tuple[float, float, float]:
    """Power (W), forward and reverse counters (Wh) the device shows at ``now``."""
    ch = dev.readout(dev.endpoint.unit or 1, now).main()
    return ch.power_w, ch.counter_wh, ch.reverse_counter_wh


async def _poll_tcp(name: str, *, fault: bool = False) -> tuple[dict[str, float | Invalid], Device, float]:
    cfg = fleet_config({"name": "d", **DEVICES[name]})
    clock = ManualClock(cfg.clock.epoch_s + NOON)
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["d"]
        await clock.advance(1800)
        if fault:
            dev.set_faults(value="nan")
        profile = PROFILES[name]
        connection = ModbusTcpConnection(host="127.0.0.1", port=dev.endpoint.port or 0)
        source = tcp_source(
            "d", connection, dev.endpoint.unit or 1, profile.fields, clock, max_gap=profile.max_gap,
            policy=ReadPolicy(timeout_s=2, retries=0), rng=random.Random(3),
        )  # fmt: skip
        async with source:
            result = await source.poll()
    return _values(result), dev, clock.now()


def _f32(x: float) -> float:
    return float(np.float32(x))


@pytest.mark.integration
async def test_dtsu666_over_tcp_matches_the_simulator() -> None:
    values, dev, now = await _poll_tcp("chint-dtsu666")
    power, fwd_wh, rev_wh = _truth(dev, now)
    assert values["energy_import"] == pytest.approx(_f32(fwd_wh / 1000.0), rel=1e-7)
    assert values["energy_export"] == pytest.approx(_f32(rev_wh / 1000.0), abs=1e-6)
    assert values["power"] == pytest.approx(power, rel=1e-6) and power > 0
    assert values["power_l1"] == pytest.approx(power / 3, rel=1e-6)
    assert values["voltage_l1"] == pytest.approx(230.0) and values["frequency"] == pytest.approx(50.0)
    assert values["current_l1"] == pytest.approx(power / 3 / 230.0, rel=1e-5)
    assert values["power_factor"] == pytest.approx(0.98)


@pytest.mark.integration
async def test_ddsu666_over_tcp_matches_the_simulator() -> None:
    values, dev, now = await _poll_tcp("chint-ddsu666")
    power, fwd_wh, _ = _truth(dev, now)
    assert values["energy_import"] == pytest.approx(_f32(fwd_wh / 1000.0), rel=1e-7)
    assert values["power"] == pytest.approx(power, rel=1e-6)  # kW on the wire, W here
    assert values["current"] == pytest.approx(power / 230.0, rel=1e-5)
    assert values["voltage"] == pytest.approx(230.0) and values["frequency"] == pytest.approx(50.0)


@pytest.mark.integration
async def test_sun2000_over_tcp_matches_the_simulator() -> None:
    values, dev, now = await _poll_tcp("huawei-sun2000")
    power, fwd_wh, _ = _truth(dev, now)
    assert power > 0, "the test runs at noon: the inverter produces"
    assert values["energy_generated"] == pytest.approx(math.floor(fwd_wh / 10.0) / 100.0, abs=1e-9)
    assert values["power"] == round(power) and values["dc_power"] == round(power / 0.97)
    assert values["grid_connected"] == 1 and values["standby"] == 0 and values["stopped_by_fault"] == 0
    assert values["device_status"] == huawei.STATUS_ON_GRID and values["fault_code"] == 0
    assert values["voltage_l2"] == pytest.approx(230.0) and values["frequency"] == pytest.approx(50.0)
    assert values["current_l3"] == pytest.approx(power / 3 / 230.0, abs=1e-3)
    assert values["internal_temperature"] == pytest.approx(41.2)
    assert "serial_number" not in values  # text: shown by check, never a sample
    faulted, _, _ = await _poll_tcp("huawei-sun2000", fault=True)
    assert faulted["stopped_by_fault"] == 1 and faulted["grid_connected"] == 0
    assert faulted["device_status"] == huawei.STATUS_FAULT and faulted["fault_code"] == huawei.FAULT_CODE


@pytest.mark.integration
async def test_sungrow_over_tcp_matches_the_simulator() -> None:
    values, dev, now = await _poll_tcp("sungrow-sg")
    power, fwd_wh, _ = _truth(dev, now)
    assert power > 0
    # low word first on the wire: read as CDAB, these are the simulator's counters
    assert values["energy_generated"] == pytest.approx(math.floor(fwd_wh / 100.0) / 10.0, abs=1e-9)
    assert values["energy_generated_kwh"] == math.floor(fwd_wh / 1000.0)
    assert values["power"] == math.floor(power)  # U32 W, floored by the simulator
    assert values["dc_power"] == math.floor(power / 0.97)
    assert values["work_state"] == sungrow.RUN
    assert values["voltage_l1"] == pytest.approx(230.0) and values["frequency"] == pytest.approx(50.0)
    assert values["rated_power"] == pytest.approx(12.0)  # firmware_sim rates 10 kWp at 12 kW
    faulted, _, _ = await _poll_tcp("sungrow-sg", fault=True)
    assert faulted["work_state"] == sungrow.FAULT and faulted["power"] == 0


@pytest.mark.parametrize("name", ["chint-dtsu666", "chint-ddsu666"])
async def test_the_chint_meters_on_an_rs485_line(name: str) -> None:
    """RTU frames over a shared line (the meters' own medium), the responder independent of
    the driver's framing."""
    cfg = fleet_config({"name": "d", "unit": 7, **DEVICES[name]})
    device = build_device(expand(cfg)[0], cfg, cfg.clock.epoch_s)
    now = cfg.clock.epoch_s + NOON
    line = ResponderLine([RtuResponder(device)], now=now)
    profile: Profile = PROFILES[name]
    reader = LineRegisterReader(line, timeout_s=1.0, meter="d")
    source = ModbusSource("d", profile.fields, reader, ManualClock(now), unit=7, max_gap=profile.max_gap)
    values: Mapping[str, float | Invalid] = _values(await source.poll())
    power, fwd_wh, _ = _truth(device, now)
    assert values["energy_import"] == pytest.approx(_f32(fwd_wh / 1000.0), rel=1e-7)
    assert values["power"] == pytest.approx(power, rel=1e-6)
    assert line.exchanges == len(source.plan(source.groups))
