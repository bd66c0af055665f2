"""Modbus RTU over a pseudo-terminal pair, read with pymodbus's serial client."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.framer import FramerType

from common.clock import ManualClock
from firmware_sim import Fleet
from tests.sim.helpers import fleet_config

pytestmark = pytest.mark.integration
DT = ModbusClientMixin.DATATYPE


async def test_two_sdm120_on_one_rtu_bus() -> None:
    cfg = fleet_config(
        {
            "kind": "sdm120",
            "name": "boiler-{i}",
            "count": 2,
            "unit": 11,
            "rtu_bus": "rs485",
            "physics": {"model": "heating", "heater": "electric_boiler"},
        }
    )
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(7200)
        devs = [fleet.devices["boiler-0"], fleet.devices["boiler-1"]]
        path = devs[0].endpoint.rtu_path
        assert path and path == devs[1].endpoint.rtu_path
        assert [d.endpoint.unit for d in devs] == [11, 12]
        client = AsyncModbusSerialClient(path, framer=FramerType.RTU, baudrate=19200, timeout=2, retries=1)
        async with client:
            for dev in devs:
                rr = await client.read_input_registers(0x48, count=2, device_id=dev.endpoint.unit or 0)
                assert not rr.isError(), rr
                kwh = client.convert_from_registers(rr.registers, DT.FLOAT32)
                assert kwh == pytest.approx(dev.ground_truth().counter_wh / 1000, rel=1e-6)
                assert dev.request_count == 1
