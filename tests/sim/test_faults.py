"""Faults fire when switched on and stop when switched off (over real Modbus TCP)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ModbusIOException

from common.clock import ManualClock
from firmware_sim import Fleet, control_request
from firmware_sim.device import Device
from firmware_sim.errors import ControlError
from tests.sim.helpers import fleet_config

pytestmark = pytest.mark.integration
DT = ModbusClientMixin.DATATYPE
conv = ModbusClientMixin.convert_from_registers
SDM = {"kind": "sdm630", "name": "m", "physics": {"model": "heating"}}
INV = {"kind": "sunspec_inverter", "name": "inv", "physics": {"model": "pv", "kwp": 5}}


async def _import_kwh(dev: Device) -> float:
    async with AsyncModbusTcpClient("127.0.0.1", port=dev.endpoint.port or 0, timeout=0.5, retries=0) as c:
        rr = await c.read_input_registers(0x48, count=2, device_id=1)
        assert not rr.isError(), rr
        value = conv(rr.registers, DT.FLOAT32)
        assert isinstance(value, float)
        return value


async def _fleet(*devices: dict) -> tuple[Fleet, ManualClock]:
    cfg = fleet_config(*devices)
    clock = ManualClock(cfg.clock.epoch_s)
    return Fleet(cfg, clock=clock), clock


async def test_timeout_and_drop_fire_and_stop() -> None:
    fleet, _ = await _fleet(SDM)
    async with fleet:
        dev = fleet.devices["m"]
        for fault in ("timeout", "drop_connection"):
            dev.set_faults(**{fault: True})
            with pytest.raises(ModbusIOException):
                await _import_kwh(dev)
            dev.set_faults(**{fault: False})
            assert await _import_kwh(dev) > 0
        assert dev.request_count == 4  # unanswered requests are counted too


@pytest.mark.parametrize(("fault", "code"), [("busy", 0x06), ("illegal_address", 0x02)])
async def test_exception_replies(fault: str, code: int) -> None:
    fleet, _ = await _fleet(SDM)
    async with fleet:
        dev = fleet.devices["m"]
        dev.set_faults(exception=fault)
        async with AsyncModbusTcpClient("127.0.0.1", port=dev.endpoint.port or 0, timeout=1) as c:
            rr = await c.read_input_registers(0x48, count=2, device_id=1)
            assert rr.isError() and rr.exception_code == code
            dev.set_faults(exception=None)
            rr = await c.read_input_registers(0x48, count=2, device_id=1)
            assert not rr.isError()


async def test_nan_and_absurd_values() -> None:
    fleet, _ = await _fleet(SDM)
    async with fleet:
        dev = fleet.devices["m"]
        dev.set_faults(value="nan")
        assert math.isnan(await _import_kwh(dev))
        dev.set_faults(value="absurd")
        assert await _import_kwh(dev) > 1e8
        dev.clear_faults()
        assert 1000 < await _import_kwh(dev) < 20000


async def test_counter_reset_is_visible_and_in_ground_truth() -> None:
    fleet, clock = await _fleet(SDM)
    async with fleet:
        dev = fleet.devices["m"]
        await clock.advance(3600)
        dev.reset_counter(now=clock.now())
        assert await _import_kwh(dev) == 0.0
        await clock.advance(1800)
        after = await _import_kwh(dev)
        truth = dev.ground_truth()
        assert 0 < after == pytest.approx(truth.counter_wh / 1000, rel=1e-6)
        reset = [i for i in truth.intervals if any(e.startswith("reset") for e in i.events)]
        assert len(reset) == 1 and reset[0].forward_mws > 0  # the energy still flowed


async def test_acc32_rollover_wraps_on_the_wire() -> None:
    fleet, clock = await _fleet({**INV, "physics": {"model": "pv", "kwp": 50}})
    async with fleet:
        dev = fleet.devices["inv"]
        await clock.advance(4 * 3600)  # 12:00 local, producing
        dev.rollover(margin_wh=1000, now=clock.now())
        port = dev.endpoint.port or 0
        async with AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1) as c:
            rr = await c.read_holding_registers(40070 + 24, count=2, device_id=1)
            assert conv(rr.registers, DT.UINT32) == 2**32 - 1000
            await clock.advance(900)
            rr = await c.read_holding_registers(40070 + 24, count=2, device_id=1)
            wrapped = conv(rr.registers, DT.UINT32)
        assert isinstance(wrapped, int) and wrapped < 100_000
        last = dev.ground_truth().intervals[-1]
        assert last.events == (f"rollover@{clock.now() - 900:.0f}",)
        # The counter jumped to 2**32 - 1000 Wh at the start of the interval, then wrapped;
        # the energy that flowed is what it is.
        assert last.forward_wh == pytest.approx(last.counter_end_wh + 1000, abs=1e-6)


async def test_faults_through_the_control_endpoint() -> None:
    fleet, _ = await _fleet(SDM)
    async with fleet:
        dev = fleet.devices["m"]
        assert fleet.control is not None
        port = fleet.control.port
        reply = await control_request(
            "127.0.0.1", port, {"op": "faults", "device": "m", "set": {"timeout": True}}
        )
        assert reply["faults"]["timeout"] is True and dev.faults.timeout
        with pytest.raises(ModbusIOException):
            await _import_kwh(dev)
        await control_request("127.0.0.1", port, {"op": "faults", "device": "m", "clear": True})
        assert await _import_kwh(dev) > 0
        status = await control_request("127.0.0.1", port, {"op": "status"})
        assert status["devices"]["m"]["requests"] == 2
        truth = await control_request("127.0.0.1", port, {"op": "truth", "device": "m"})
        assert truth["truth"]["counter_wh"] == dev.ground_truth().counter_wh
        with pytest.raises(ControlError, match="unknown device"):
            await control_request("127.0.0.1", port, {"op": "faults", "device": "nope"})
        with pytest.raises(ControlError, match="ValidationError"):
            await control_request("127.0.0.1", port, {"op": "faults", "device": "m", "set": {"tmeout": 1}})


def test_fault_state_is_closed() -> None:
    cfg = fleet_config(SDM)
    dev = Fleet(cfg, clock=ManualClock(cfg.clock.epoch_s)).devices["m"]
    with pytest.raises(ValidationError):
        dev.set_faults(exception="teapot")
    with pytest.raises(ValidationError):
        dev.set_faults(tmeout=True)
    assert not dev.faults.any_active()
