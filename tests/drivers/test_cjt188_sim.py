"""The CJ/T 188 driver against firmware_sim heat meters on one in-test line.

The line here is a byte pipe (tests/drivers/cjt188_lines.py); the meters are
firmware_sim.cjt188 responders on the heating physics, with ground truth.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from common.clock import ManualClock
from drivers.cjt188.client import Target
from drivers.cjt188.config import Cjt188Policy
from drivers.cjt188.frame import Address
from drivers.cjt188.scan import scan
from drivers.cjt188.source import Cjt188Source
from drivers.contract import Invalid
from firmware_sim.cjt188 import Cjt188HeatMeter, EnergyUnit, heat_meter_device
from tests.drivers.cjt188_lines import ResponderLine

T0 = 1_704_067_200.0  # 2024-01-01 00:00 UTC: heating season
DAY = 86_400.0
# 0.01 of each unit in kWh: the meter's display floors to it
RESOLUTION_KWH = {"kWh": 0.01, "MWh": 10.0, "GJ": float(Fraction(2500, 9) / 100)}
NO_RETRY = Cjt188Policy(retries=0, backoff_base_s=0.0, breaker_threshold=3, breaker_cooldown_s=300.0)


def meters(units: list[EnergyUnit]) -> list[Cjt188HeatMeter]:
    return [
        Cjt188HeatMeter(heat_meter_device(f"hm{i}", seed=i, start=T0), f"000000{i + 1:08d}", unit)
        for i, unit in enumerate(units)
    ]


def source(meter: Cjt188HeatMeter, line: ResponderLine, clock: ManualClock) -> Cjt188Source:
    qs = ["heat_energy", "power", "flow_rate", "flow_temperature", "return_temperature", "status"]
    return Cjt188Source(
        meter.device.name, line, clock, Target(Address.parse(meter.address)), qs, policy=NO_RETRY
    )


@pytest.mark.parametrize("unit", ["kWh", "MWh", "GJ"])
async def test_heat_in_kwh_whatever_the_meters_unit(unit: EnergyUnit) -> None:
    (meter,) = meters([unit])
    line, clock = ResponderLine([meter], now=T0 + 3 * DAY), ManualClock(T0 + 3 * DAY)
    result = await source(meter, line, clock).poll(slot=clock.now())
    assert result.ok, result.error
    heat = {s.quantity: s.value for s in result.samples}["heat_energy"]
    true_kwh = meter.device.meter().counter_wh() / 1000.0
    assert isinstance(heat, float)
    assert true_kwh - RESOLUTION_KWH[unit] <= heat <= true_kwh + 1e-9  # floored to the display step


async def test_four_meters_one_dead_the_others_still_read() -> None:
    fleet = meters(["kWh", "MWh", "GJ", "kWh"])
    fleet[2].device.set_faults(timeout=True)
    line, clock = ResponderLine(list(fleet), now=T0 + DAY), ManualClock(T0 + DAY)
    sources = [source(m, line, clock) for m in fleet]
    results = [await s.poll(slot=clock.now()) for s in sources]
    assert [r.ok for r in results] == [True, True, False, True]
    dead = results[2]
    assert dead.samples == () and dead.error is not None
    assert "hm2" in dead.error and "00000000000003" in dead.error and "no complete answer" in dead.error
    for r, m in zip(results, fleet, strict=True):
        if r.ok:
            heat = next(s.value for s in r.samples if s.quantity == "heat_energy")
            true_kwh = m.device.meter().counter_wh() / 1000
            assert isinstance(heat, float) and true_kwh - RESOLUTION_KWH[m.energy_unit] <= heat <= true_kwh


async def test_dead_meter_opens_its_breaker_and_stops_costing_the_line() -> None:
    (meter,) = meters(["kWh"])
    meter.device.set_faults(timeout=True)
    line, clock = ResponderLine([meter], now=T0), ManualClock(T0)
    src = source(meter, line, clock)
    for _ in range(3):
        assert not (await src.poll()).ok
    skipped = await src.poll()
    assert skipped.skipped and skipped.requests == 0 and line.exchanges == 3


async def test_counter_reset_shows_as_a_drop_not_an_invented_value() -> None:
    (meter,) = meters(["kWh"])
    line, clock = ResponderLine([meter], now=T0 + DAY), ManualClock(T0 + DAY)
    src = source(meter, line, clock)
    before = (await src.poll()).samples[0].value
    meter.device.reset_counter(now=T0 + DAY)
    line.now = T0 + DAY + 3600
    after = (await src.poll()).samples[0].value
    assert isinstance(before, float) and before > 4000 and isinstance(after, float) and 0 <= after < 20


async def test_stuck_meter_keeps_its_value_while_truth_grows() -> None:
    (meter,) = meters(["kWh"])
    line, clock = ResponderLine([meter], now=T0 + DAY), ManualClock(T0 + DAY)
    src = source(meter, line, clock)
    meter.stick(T0 + DAY)
    first = (await src.poll()).samples[0].value
    line.now = T0 + 2 * DAY
    second = (await src.poll()).samples[0].value
    meter.device.refresh(line.now)
    assert first == second and meter.device.meter().counter_wh() / 1000 > float(second) + 10  # type: ignore[arg-type]


async def test_value_faults_are_invalid_never_numbers() -> None:
    a, b = meters(["kWh", "GJ"])
    a.device.set_faults(value="nan")
    b.device.set_faults(exception="busy")
    line, clock = ResponderLine([a, b], now=T0 + DAY), ManualClock(T0 + DAY)
    nan = await source(a, line, clock).poll()
    assert (
        nan.ok
        and isinstance(nan.samples[0].value, Invalid)
        and nan.samples[0].value.reason == "not_implemented"
    )
    busy = await source(b, line, clock).poll()
    assert not busy.ok and busy.samples == () and "valve abnormal" in (busy.error or "")


async def test_scan_one_meter_by_read_address() -> None:
    (meter,) = meters(["GJ"])
    result = await scan(ResponderLine([meter], now=T0))
    assert [(f.address.digits, f.meter_type) for f in result.found] == [("00000000000001", 0x20)]


async def test_scan_several_meters_by_broadcast_reports_the_collision() -> None:
    result = await scan(ResponderLine(list(meters(["kWh", "kWh", "MWh"])), now=T0))
    assert result.found == () and "more than one meter" in result.problems[0]


async def test_scan_by_address_list() -> None:
    fleet = meters(["kWh", "MWh", "GJ", "kWh"])
    fleet[1].device.set_faults(timeout=True)
    wanted = [Address.parse(m.address) for m in fleet] + [Address.parse("00000099999999")]
    result = await scan(ResponderLine(list(fleet), now=T0), wanted)
    assert [f.address.digits for f in result.found] == ["00000000000001", "00000000000003", "00000000000004"]
    assert [a.digits for a in result.silent] == ["00000000000002", "00000099999999"]


async def test_empty_line_scan() -> None:
    result = await scan(ResponderLine([], now=T0))
    assert result.found == () and "no CJ/T 188 meter answered" in result.problems[0]
