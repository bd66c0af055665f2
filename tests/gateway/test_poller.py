"""Poller: many firmware_sim devices over real TCP, each on its own clock-aligned schedule."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import pytest

from common.clock import Clock, FastClock
from drivers.breaker import BreakerState
from drivers.contract import DeviceHealth, Sample
from drivers.modbus.profiles import load_profiles
from drivers.modbus.source import ModbusSource, ReadPolicy
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.modbus_tcp.driver import tcp_source
from firmware_sim import Fleet
from firmware_sim.device import Device
from gateway.poller import Poller, Schedule, next_slot
from tests.sim.helpers import fleet_config

pytestmark = pytest.mark.integration
SDM630 = load_profiles()["sdm630"]
PERIODS = {"fast": 10.0, "slow": 20.0, "identity": 20.0}  # clock seconds
FACTOR = 50.0  # 10 clock s = 0.2 wall s
CYCLES = 6
DEAD = "m07"


def _source(dev: Device, clock: Clock, policy: ReadPolicy) -> ModbusSource:
    conn = ModbusTcpConnection(host="127.0.0.1", port=dev.endpoint.port or 0)
    return tcp_source(
        dev.name, conn, dev.endpoint.unit or 1, SDM630.fields, clock,
        max_gap=SDM630.max_gap, policy=policy, rng=random.Random(dev.seed),
    )  # fmt: skip


async def test_one_dead_device_of_twenty_delays_nobody_and_its_breaker_opens() -> None:
    names = [f"m{i:02d}" for i in range(20)]
    cfg = fleet_config(*({"kind": "sdm630", "name": n, "physics": {"model": "heating"}} for n in names))
    clock = FastClock(cfg.clock.epoch_s, FACTOR)
    healthy = [n for n in names if n != DEAD]
    # the dead device's deadline (0.3 wall s = 15 clock s) is longer than a fast period
    policy = ReadPolicy(
        timeout_s=0.3, retries=1, backoff_base_s=1, breaker_threshold=2, breaker_cooldown_s=1e6
    )
    received: list[Sample] = []
    async with Fleet(cfg, clock=clock) as fleet:
        fleet.devices[DEAD].set_faults(timeout=True)
        schedules = [Schedule(_source(fleet.devices[n], clock, policy), PERIODS) for n in names]
        async with Poller(schedules, received.extend, clock) as poller:
            start = clock.now()

            def done(health: Mapping[str, DeviceHealth]) -> bool:
                all_polled = all(health[n].polls_by_group.get("fast", 0) >= CYCLES for n in healthy)
                return all_polled and health[DEAD].breaker is BreakerState.OPEN

            async with asyncio.timeout(5):
                await poller.wait_until(done)
            elapsed = clock.now() - start
            health = dict(poller.health)

    first_slot = next_slot(start, PERIODS["fast"])
    assert elapsed < first_slot - start + (CYCLES + 1) * PERIODS["fast"]  # on schedule, not late
    for n in healthy:
        h = health[n]
        assert h.failed == h.missed_slots == h.skipped == 0 and h.ok == h.polls, (n, h)
        assert h.requests <= 2 * h.polls
        slow = h.polls_by_group.get("slow", 0)
        assert abs(slow - h.polls_by_group["fast"] / 2) <= 1  # slow group every other fast slot
    dead = health[DEAD]
    assert dead.ok == 0 and dead.failed >= 2 and dead.consecutive_failures == dead.failed + dead.skipped
    assert dead.last_error is not None and dead.last_error.startswith(f"{DEAD} (tcp 127.0.0.1:")
    assert "no answer within 0.3 s" in dead.last_error
    assert {s.meter for s in received} == set(healthy)
    assert {s.quantity for s in received if s.meter == "m00"} == {f.quantity for f in SDM630.fields}


async def test_samples_carry_clock_times_of_their_slots() -> None:
    cfg = fleet_config({"kind": "sdm630", "name": "m", "physics": {"model": "heating"}})
    clock = FastClock(cfg.clock.epoch_s, FACTOR)
    received: list[Sample] = []
    async with Fleet(cfg, clock=clock) as fleet:
        source = _source(fleet.devices["m"], clock, ReadPolicy(timeout_s=1))
        async with Poller([Schedule(source, {"fast": 10.0})], received.extend, clock) as poller:
            async with asyncio.timeout(5):
                await poller.wait_until(lambda h: h["m"].polls >= 3)
    times = sorted({s.time for s in received})
    assert len(times) >= 3
    # one poll per 10 s slot, read shortly after the slot starts (5 clock s = 0.1 wall s)
    assert len({t // 10.0 for t in times}) == len(times)
    assert all(t % 10.0 < 5.0 for t in times)
    # each sample names the slot it was requested for: the 10 s slot its answer came in
    assert all(
        s.slot is not None and s.slot % 10.0 == 0 and s.slot <= s.time < s.slot + 5.0 for s in received
    )
    assert {s.quantity for s in received} == {f.quantity for f in SDM630.fields if f.poll_group == "fast"}


def test_schedule_rejects_bad_periods() -> None:
    class _Named:
        meter = "x"

    with pytest.raises(ValueError, match="periods"):
        Schedule(_Named(), {"fast": 0})  # type: ignore[arg-type]
