"""Real tier: simulated devices over real Modbus TCP, read by clients we did not write."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sunspec2.modbus.client as sunspec_client
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin

from common.clock import FastClock, ManualClock
from firmware_sim import Fleet
from tests.sim.helpers import fleet_config, mbpoll, run_blocking

pytestmark = pytest.mark.integration
DT = ModbusClientMixin.DATATYPE
conv = ModbusClientMixin.convert_from_registers


async def test_mbpoll_reads_sdm630_import_energy_equal_to_ground_truth() -> None:
    cfg = fleet_config({"kind": "sdm630", "name": "hp", "unit": 3, "physics": {"model": "heating"}})
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(6 * 3600)
        dev = fleet.devices["hp"]
        port = str(dev.endpoint.port)
        # 30073 = input register 0x0048, 1-based reference 73, big-endian float words.
        values = await mbpoll(
            "-m", "tcp", "-a", "3", "-r", "73", "-t", "3:float", "-B", "-p", port, "127.0.0.1"
        )
        truth = dev.ground_truth()
        assert truth.intervals[-1].end == truth.as_of == clock.now()
        kwh = truth.intervals[-1].counter_end_wh / 1000.0
        assert values[73] == f"{float(np.float32(kwh)):g}"
        assert float(values[73]) == pytest.approx(kwh, rel=1e-6)
        assert dev.request_count == 1


def _scan(port: int) -> dict[int, dict[str, float | None]]:
    device = sunspec_client.SunSpecModbusClientDeviceTCP(
        slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=5
    )
    try:
        device.scan()
        out = {}
        for model_id in (1, 103, 203):
            for model in device.models.get(model_id, []):
                out[model_id] = {name: p.cvalue for name, p in model.points.items()}
        return out
    finally:
        device.close()


async def test_pysunspec2_scans_inverter_and_meter_and_reads_ground_truth_energy() -> None:
    cfg = fleet_config(
        {"kind": "sunspec_inverter", "name": "inv", "physics": {"model": "pv", "kwp": 6.5}},
        {"kind": "sunspec_meter", "name": "grid", "physics": {"model": "pv_house", "kwp": 6.5}},
        clock={"epoch": "2025-06-21T00:00:00+08:00"},
    )
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(12 * 3600)  # local noon: producing and exporting
        inv, grid = fleet.devices["inv"], fleet.devices["grid"]
        inv_models = await run_blocking(lambda: _scan(inv.endpoint.port or 0))
        grid_models = await run_blocking(lambda: _scan(grid.endpoint.port or 0))

        assert set(inv_models) == {1, 103} and set(grid_models) == {1, 203}
        assert inv_models[1]["Mn"] == "PuhuiSim"
        wh_truth = inv.ground_truth().intervals[-1].counter_end_wh
        assert inv_models[103]["WH"] == math.floor(wh_truth)
        assert inv_models[103]["W"] == pytest.approx(inv.meter().sample.power_w, abs=1)
        assert inv.meter().sample.power_w > 2000

        g = grid.ground_truth().intervals[-1]
        assert grid_models[203]["TotWhImp"] == math.floor(g.counter_end_wh)
        assert grid_models[203]["TotWhExp"] == math.floor(g.reverse_counter_end_wh)
        assert g.reverse_counter_end_wh > 0  # exported some PV in the morning
        assert grid_models[203]["W"] == pytest.approx(grid.meter().sample.power_w, abs=1)


async def test_chargers_and_heat_meter_read_like_their_maps() -> None:
    ev = {"model": "ev", "arrivals_per_day": 20, "power_limit_kw": 22}
    cfg = fleet_config(
        {"kind": "alfen", "name": "alfen", "physics": ev},
        {"kind": "abb", "name": "abb", "physics": ev},
        {"kind": "heat_meter", "name": "heat", "physics": {"model": "heating"}},
    )
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(86400)
        alfen, abb, heat = (fleet.devices[n] for n in ("alfen", "abb", "heat"))
        async with _client(alfen.endpoint.port) as c:
            for unit in (1, 2):
                rr = await c.read_holding_registers(374, count=4, device_id=unit)
                assert conv(rr.registers, DT.FLOAT64) == alfen.ground_truth(f"socket{unit}").counter_wh
            rr = await c.read_holding_registers(157, count=11, device_id=200)
            assert conv(rr.registers, DT.STRING).startswith("ACE")
            rr = await c.read_holding_registers(1105, count=1, device_id=200)
            assert rr.registers == [2]
        async with _client(abb.endpoint.port) as c:
            rr = await c.read_holding_registers(0x401E, count=2, device_id=1)
            truth = abb.ground_truth()
            assert conv(rr.registers, DT.UINT32) == math.floor(truth.counter_wh)
            sessions = [e for i in truth.intervals for e in i.events if e.startswith("session")]
            assert sessions  # per-session counter restarted at least once
            assert truth.forward_wh > truth.counter_wh
        async with _client(heat.endpoint.port) as c:
            rr = await c.read_holding_registers(0, count=13, device_id=1)
            truth = heat.ground_truth()
            assert truth.quantity == "heat"
            assert conv(rr.registers[0:2], DT.UINT32) == math.floor(truth.counter_wh)
            flow, ret = conv(rr.registers[4:5], DT.INT16), conv(rr.registers[5:6], DT.INT16)
            assert isinstance(flow, int) and isinstance(ret, int) and flow >= ret


async def test_one_read_is_consistent_while_the_clock_races() -> None:
    cfg = fleet_config({"kind": "sdm630", "name": "m", "physics": {"model": "heating"}}, step_s=1)
    clock = FastClock(cfg.clock.epoch_s, 20000.0)
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["m"]
        last = 0.0
        async with _client(dev.endpoint.port) as c:
            for _ in range(40):
                rr = await c.read_input_registers(0, count=0x4C, device_id=1)
                regs = rr.registers
                per_phase = [conv(regs[a : a + 2], DT.FLOAT32) for a in (0x0C, 0x0E, 0x10)]
                total = conv(regs[0x34:0x36], DT.FLOAT32)
                assert sum(per_phase) == pytest.approx(total, rel=1e-5)
                energy = conv(regs[0x48:0x4A], DT.FLOAT32)
                assert isinstance(energy, float) and energy >= last
                last = energy
        assert dev.request_count == 40


def _client(port: int | None) -> AsyncModbusTcpClient:
    assert port is not None
    return AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
