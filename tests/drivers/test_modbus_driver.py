"""Modbus source: request plan, decoding, policy and cancellation.

Real tier: firmware_sim devices over real TCP, read by our pymodbus-based source. Fast
tier: the circuit breaker and backoff on a manual clock, and the boundary that turns a
pymodbus-swallowed cancellation back into ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pymodbus.exceptions import ModbusIOException

from common.clock import Clock, FastClock, ManualClock
from drivers.breaker import BreakerState, CircuitBreaker
from drivers.contract import Invalid
from drivers.modbus.errors import DeviceTimeout
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profiles import load_profiles
from drivers.modbus.source import ModbusSource, ReadPolicy
from drivers.modbus.transport import read_registers
from drivers.modbus_rtu.config import SerialBus
from drivers.modbus_rtu.driver import SerialBusOwner, rtu_source
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.modbus_tcp.driver import tcp_source
from firmware_sim import Fleet
from firmware_sim.device import Device
from tests.sim.helpers import fleet_config

SDM = {"kind": "sdm630", "name": "m", "unit": 3, "physics": {"model": "heating"}}
SDM630 = load_profiles()["sdm630"]


def _source(dev: Device, clock: Clock, **policy: Any) -> ModbusSource:
    conn = ModbusTcpConnection(host="127.0.0.1", port=dev.endpoint.port or 0)
    return tcp_source(
        dev.name, conn, dev.endpoint.unit or 1, SDM630.fields, clock,
        max_gap=SDM630.max_gap, policy=ReadPolicy(**policy), rng=random.Random(7),
    )  # fmt: skip


async def _until(condition: Callable[[], bool]) -> None:
    """Wait, with a deadline, for a condition the simulator sets (it exposes a counter, no event)."""
    async with asyncio.timeout(3):
        while not condition():  # noqa: ASYNC110 - nothing to await on the simulator's side
            await asyncio.sleep(0.005)


# -- real tier --------------------------------------------------------------------------------


@pytest.mark.integration
async def test_sdm630_cycle_costs_two_requests_and_energy_matches_ground_truth() -> None:
    cfg = fleet_config(SDM)
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["m"]
        async with _source(dev, clock, timeout_s=2) as source:
            for cycle in range(1, 4):
                await clock.advance(3600)
                result = await source.poll()
                assert result.ok and result.error is None, result.error
                assert result.requests == 2 and dev.request_count == 2 * cycle
                samples = {s.quantity: s for s in result.samples}
                kwh = dev.ground_truth().intervals[-1].counter_end_wh / 1000.0
                energy = samples["energy_import"]
                assert energy.value == float(np.float32(kwh))
                assert energy.value == pytest.approx(kwh, rel=1e-6)
                assert energy.time == clock.now() and energy.meter == "m" and energy.source == "modbus"
                assert samples["serial_number"].value == dev.serial
                assert not any(isinstance(s.value, Invalid) for s in result.samples)
            assert len(source.plan(["fast"])) == 1  # gauges alone: one request


@pytest.mark.integration
async def test_dead_device_is_reported_and_opens_the_breaker() -> None:
    cfg = fleet_config(SDM)
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["m"]
        dev.set_faults(timeout=True)
        policy = {"timeout_s": 0.1, "retries": 0, "breaker_threshold": 2, "breaker_cooldown_s": 60}
        async with _source(dev, clock, **policy) as source:
            first = await source.poll()
            assert not first.ok and first.breaker is BreakerState.CLOSED and first.samples == ()
            assert first.error is not None and first.error.startswith("m (tcp 127.0.0.1:")
            assert "unit 3 fc3 0xFC00..0xFC01" in first.error or "unit 3 fc4 0x0000..0x004B" in first.error
            second = await source.poll()
            assert second.breaker is BreakerState.OPEN
            sent = dev.request_count
            skipped = await source.poll()
            assert skipped.skipped and skipped.requests == 0 and dev.request_count == sent
            dev.clear_faults()
            await clock.advance(60)  # cool-down over: one probe, which succeeds
            probe = await source.poll()
            assert probe.ok and probe.breaker is BreakerState.CLOSED
            assert len(probe.samples) == len(SDM630.fields)


@pytest.mark.integration
async def test_exception_reply_is_reported_with_the_address_range() -> None:
    cfg = fleet_config(SDM)
    clock = FastClock(cfg.clock.epoch_s, 1000.0)  # backoff of 1-4 clock s: a few wall ms
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["m"]
        dev.set_faults(exception="illegal_address")
        async with _source(dev, clock, retries=2, backoff_base_s=1) as source:
            async with asyncio.timeout(3):
                result = await source.poll()
        assert not result.ok and result.requests == 3 and dev.request_count == 3
        assert result.error is not None and "exception reply (code 2)" in result.error


@pytest.mark.integration
async def test_cancelling_a_poll_in_flight_really_cancels() -> None:
    cfg = fleet_config(SDM)
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["m"]
        dev.set_faults(timeout=True)
        async with _source(dev, clock, timeout_s=30, retries=3) as source:
            poll = asyncio.create_task(source.poll(), name="poll-under-test")
            await _until(lambda: dev.request_count >= 1)
            poll.cancel()
            async with asyncio.timeout(2):
                with pytest.raises(asyncio.CancelledError):
                    await poll
            assert poll.cancelled()
            assert dev.request_count == 1  # no retry after the cancel
            assert source.breaker.consecutive_failures == 0  # a cancel is not a device failure


# -- fast tier --------------------------------------------------------------------------------


class _SwallowingClient:
    """A client that turns cancellation into ModbusIOException, as some pymodbus versions do."""

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> object:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ModbusIOException("request cancelled") from None
        raise AssertionError("unreachable")


async def test_swallowed_cancellation_is_cancellation_again() -> None:
    request = ReadRequest(1, 4, 0, 2, ())
    task = asyncio.create_task(read_registers(_SwallowingClient(), request))
    await asyncio.sleep(0)  # let the read start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_swallowed_cancellation_by_a_deadline_is_a_timeout() -> None:
    request = ReadRequest(1, 4, 0, 2, ())
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.01):
            await read_registers(_SwallowingClient(), request)
    assert not isinstance(info.value, DeviceTimeout)  # plain deadline; ModbusSource translates it


async def test_breaker_opens_probes_and_closes_on_the_clock() -> None:
    clock = ManualClock(1000.0)
    breaker = CircuitBreaker(clock, threshold=2, cooldown_s=30)
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allows()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    await clock.advance(29)
    assert not breaker.allows()
    await clock.advance(1)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.record_failure()  # failed probe: open again, cool-down restarts
    assert breaker.state is BreakerState.OPEN and breaker.opened_at == 1030.0
    await clock.advance(30)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0


@pytest.mark.integration
async def test_rtu_meters_share_one_bus_owner_and_read_ground_truth() -> None:
    rtu = {"kind": "sdm630", "name": "hp-{i}", "count": 3, "unit": 5, "rtu_bus": "rs485"}
    cfg = fleet_config({**rtu, "physics": {"model": "heating"}})
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(7200)
        devs = [fleet.devices[f"hp-{i}"] for i in range(3)]
        bus = SerialBus(id="rs485", port=devs[0].endpoint.rtu_path or "", timeout_s=1, inter_frame_delay_ms=2)
        async with SerialBusOwner(bus) as owner:
            sources = [
                rtu_source(d.name, owner, d.endpoint.unit or 0, SDM630.fields, clock, max_gap=SDM630.max_gap)
                for d in devs
            ]
            async with asyncio.timeout(5):
                results = await asyncio.gather(*(s.poll() for s in sources))  # concurrent callers
        assert owner.frames == 6 and [d.request_count for d in devs] == [2, 2, 2]
        for dev, result in zip(devs, results, strict=True):
            assert result.ok, result.error
            energy = next(s for s in result.samples if s.quantity == "energy_import")
            assert energy.value == float(np.float32(dev.ground_truth().counter_wh / 1000.0))


@pytest.mark.integration
async def test_silent_rtu_meter_fails_alone_and_the_bus_keeps_serving_the_others() -> None:
    rtu = {"kind": "sdm630", "name": "hp-{i}", "count": 2, "unit": 5, "rtu_bus": "rs485"}
    cfg = fleet_config({**rtu, "physics": {"model": "heating"}})
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        dead, alive = fleet.devices["hp-0"], fleet.devices["hp-1"]
        dead.set_faults(timeout=True)
        bus = SerialBus(id="rs485", port=alive.endpoint.rtu_path or "", timeout_s=0.2)
        policy = ReadPolicy(timeout_s=1, retries=0)
        async with SerialBusOwner(bus) as owner:
            gap = SDM630.max_gap
            units = [(d.name, d.endpoint.unit or 0) for d in (dead, alive)]
            sources = [
                rtu_source(n, owner, u, SDM630.fields, clock, max_gap=gap, policy=policy) for n, u in units
            ]
            async with asyncio.timeout(5):
                bad, good = await asyncio.gather(*(s.poll() for s in sources))
        assert not bad.ok and bad.error is not None and bad.error.startswith("hp-0 (rtu rs485): unit 5 fc")
        assert good.ok and good.requests == 2 and alive.request_count == 2, good.error
        assert owner.frames == 3  # the silent meter's first request ended its poll


@pytest.mark.integration
async def test_idle_connection_is_reopened_before_the_device_drops_it() -> None:
    """Alfen chargers drop a Modbus TCP connection idle for 60 s; with ``idle_close_s`` the
    reader reopens it itself instead of losing a request to a dead socket."""
    from drivers.modbus_tcp.driver import TcpRegisterReader

    cfg = fleet_config(SDM)
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        port = fleet.devices["m"].endpoint.port or 0
        request = ReadRequest(3, 4, 0, 2, ())
        for idle_close_s, expected in ((None, 1), (0.05, 2)):
            reader = TcpRegisterReader("127.0.0.1", port, timeout_s=2, idle_close_s=idle_close_s)
            try:
                assert len(await reader.read(request)) == 2
                await asyncio.sleep(0.1)  # idle, in wall time: physical connections idle in wall time
                assert len(await reader.read(request)) == 2
                assert reader.connects == expected, idle_close_s
            finally:
                await reader.aclose()
