"""Register images decoded with independent references (pymodbus, struct, pysunspec2 JSON)."""

from __future__ import annotations

import json
import math
import struct
from importlib import resources

import pytest
from pymodbus.client.mixin import ModbusClientMixin

from firmware_sim.physics.sample import Sample
from firmware_sim.registers import chargers, eastron, heatmeter, sunspec
from firmware_sim.registers.base import ChannelView, Readout
from firmware_sim.registers.encoding import f32

DT = ModbusClientMixin.DATATYPE
conv = ModbusClientMixin.convert_from_registers


def readout(power: float, wh: float, rev: float = 0.0, **sample: object) -> Readout:
    s = Sample(power_w=power, **sample)  # type: ignore[arg-type]
    view = ChannelView(power, wh, rev, s)
    return Readout(t=1736899200.0, unit=1, serial=12345678, channels={"main": view, "socket1": view})


def regs_at(image: dict, address: int, count: int) -> list[int]:
    for block, words in image.items():
        if block.start <= address and address + count <= block.start + block.length:
            return words[address - block.start : address - block.start + count]
    raise AssertionError(f"{address} not in image")


def test_eastron_import_energy_is_float32_big_endian_kwh() -> None:
    img = eastron.EastronMap(3).render(readout(2500.0, 7162501.3, 1200.0))
    assert conv(regs_at(img, 0x48, 2), DT.FLOAT32) == pytest.approx(7162.5013, rel=1e-7)
    assert conv(regs_at(img, 0x4A, 2), DT.FLOAT32) == pytest.approx(1.2)
    assert conv(regs_at(img, 0x34, 2), DT.FLOAT32) == 2500.0
    assert conv(regs_at(img, 0x0C, 2), DT.FLOAT32) == pytest.approx(2500 / 3, rel=1e-6)
    assert conv(regs_at(img, 0x156, 2), DT.FLOAT32) == pytest.approx(7163.7013, rel=1e-7)
    raw = struct.pack(">HH", *regs_at(img, 0x48, 2))
    assert struct.unpack(">f", raw)[0] == pytest.approx(7162.5013, rel=1e-7)


def test_sdm120_has_no_three_phase_registers() -> None:
    blocks = eastron.EastronMap(1).blocks
    assert not any(b.start <= 0x34 < b.start + b.length for b in blocks)


def test_nan_fault_encodes_nan_float32() -> None:
    assert f32(math.nan) == [0x7FC0, 0x0000]
    img = eastron.EastronMap(3).render(readout(math.nan, math.nan, math.nan))
    assert math.isnan(conv(regs_at(img, 0x48, 2), DT.FLOAT32))


def _sunspec_points(model_id: int) -> dict[str, tuple[int, str]]:
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    points, off = {}, 0
    for p in json.loads(path.read_text())["group"]["points"]:
        points[p["name"]] = (off, p["type"])
        off += p["size"]
    return points


def _walk_sunspec(regs: list[int]) -> dict[int, list[int]]:
    assert regs[0:2] == [0x5375, 0x6E53]  # "SunS"
    models, i = {}, 2
    while regs[i] != 0xFFFF:
        mid, length = regs[i], regs[i + 1]
        models[mid] = regs[i : i + 2 + length]
        i += 2 + length
    return models


def test_sunspec_inverter_layout_matches_the_model_definitions() -> None:
    img = sunspec.InverterMap(6500 * 1.2).render(readout(4321.0, 1826037.7))
    (regs,) = img.values()
    models = _walk_sunspec(regs)
    assert list(models) == [1, 103]
    m = models[103]
    pts = _sunspec_points(103)
    assert len(m) == max(o for o, _ in pts.values()) + 2
    w_sf = struct.unpack(">h", struct.pack(">H", m[pts["W_SF"][0]]))[0]
    assert m[pts["W"][0]] * 10**w_sf == pytest.approx(4321, abs=10**w_sf)
    wh = (m[pts["WH"][0]] << 16) | m[pts["WH"][0] + 1]
    assert wh == 1826037 and m[pts["WH_SF"][0]] == 0
    assert m[pts["St"][0]] == 4


def test_sunspec_meter_import_export_counters() -> None:
    img = sunspec.AcMeterMap(10_000).render(readout(-1500.0, 9644630.5, 16000.07))
    models = _walk_sunspec(next(iter(img.values())))
    m, pts = models[203], _sunspec_points(203)
    assert len(m) == 107
    imp = (m[pts["TotWhImp"][0]] << 16) | m[pts["TotWhImp"][0] + 1]
    exp = (m[pts["TotWhExp"][0]] << 16) | m[pts["TotWhExp"][0] + 1]
    assert (imp, exp) == (9644630, 16000)
    assert struct.unpack(">h", struct.pack(">H", m[pts["W"][0]]))[0] == -1500


def test_alfen_socket_energy_is_float64_wh_and_state_string() -> None:
    m = chargers.AlfenSocketMap("socket1", 22.0)
    img = m.render(readout(11000.0, 123456789.125, ev_state="C2"))
    assert conv(regs_at(img, 374, 4), DT.FLOAT64) == 123456789.125
    assert conv(regs_at(img, 344, 2), DT.FLOAT32) == 11000.0
    assert conv(regs_at(img, 1201, 5), DT.STRING).strip("\0") == "C2"
    assert regs_at(img, 318, 1) == [0xFFFF]  # unavailable reads 0xFFFF


def test_abb_session_energy_uint32_wh() -> None:
    img = chargers.AbbMap(11.0).render(readout(7400.0, 12345.9, ev_state="C2"))
    assert conv(regs_at(img, 0x401E, 2), DT.UINT32) == 12345
    assert conv(regs_at(img, 0x401C, 2), DT.UINT32) == 7400
    assert conv(regs_at(img, 0x400C, 2), DT.UINT32) == 4


def test_heat_meter_map() -> None:
    r = readout(8000.0, 4_000_000_123.4, flow_c=35.0, return_c=29.5, flow_m3h=1.25)
    img = heatmeter.HeatMeterMap().render(r)
    assert conv(regs_at(img, 0, 2), DT.UINT32) == 4_000_000_123
    assert conv(regs_at(img, 2, 2), DT.INT32) == 8000
    assert conv(regs_at(img, 4, 1), DT.INT16) == 3500
    assert conv(regs_at(img, 5, 1), DT.INT16) == 2950
    assert conv(regs_at(img, 6, 2), DT.UINT32) == 1250
    assert conv(regs_at(img, 8, 1), DT.UINT16) == 0
    assert conv(regs_at(img, 0x0B, 2), DT.FLOAT32) == pytest.approx(4_000_000.1234, rel=1e-7)
    bad = heatmeter.HeatMeterMap().render(readout(math.nan, math.nan, flow_m3h=0.0))
    assert regs_at(bad, 0, 2) == [0xFFFF, 0xFFFF] and regs_at(bad, 8, 1) == [3]
