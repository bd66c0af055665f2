"""The M-Bus driver against firmware_sim M-Bus heat meters on one in-test line.

The line here is a byte pipe (tests/drivers/cjt188_lines.py); the meters are
firmware_sim.mbus responders on the heating physics, with ground truth, beside a CJ/T 188
meter (a frame of one protocol is never answered by a device of the other).
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from common.clock import ManualClock
from drivers.cjt188.client import Target as Cjt188Target
from drivers.cjt188.client import read_heat as cjt188_read_heat
from drivers.cjt188.frame import Address
from drivers.contract import Invalid
from drivers.mbus.client import Target, read_heat
from drivers.mbus.config import MbusPolicy
from drivers.mbus.errors import ChecksumError
from drivers.mbus.frame import SecondaryAddress
from drivers.mbus.source import MbusSource
from firmware_sim.cjt188 import Cjt188HeatMeter
from firmware_sim.cjt188 import heat_meter_device as cjt188_device
from firmware_sim.mbus import EnergyUnit, MbusHeatMeter, heat_meter_device
from tests.drivers.cjt188_lines import ResponderLine

T0 = 1_704_067_200.0  # 2024-01-01 00:00 UTC: heating season
DAY = 86_400.0
# the meter's counting step in kWh: its register floors to it
RESOLUTION_KWH = {"kWh": 0.01, "MWh": 10.0, "GJ": float(Fraction(10**7, 3_600_000))}
NO_RETRY = MbusPolicy(retries=0, backoff_base_s=0.0, breaker_threshold=3, breaker_cooldown_s=300.0)
QS = ["heat_energy", "volume", "power", "flow_rate", "flow_temperature", "return_temperature", "status"]


def meters(units: list[EnergyUnit]) -> list[MbusHeatMeter]:
    return [
        MbusHeatMeter(heat_meter_device(f"hm{i}", seed=i, start=T0), i + 1, f"{20240001 + i:08d}", unit)
        for i, unit in enumerate(units)
    ]


def source(
    meter: MbusHeatMeter, line: ResponderLine, clock: ManualClock, target: Target | None = None
) -> MbusSource:
    return MbusSource(meter.device.name, line, clock, target or Target(meter.primary), QS, policy=NO_RETRY)


def values(result: object) -> dict[str, float | Invalid]:
    return {s.quantity: s.value for s in result.samples}  # type: ignore[attr-defined]


@pytest.mark.parametrize("unit", ["kWh", "MWh", "GJ"])
async def test_heat_in_kwh_whatever_the_meters_unit(unit: EnergyUnit) -> None:
    (meter,) = meters([unit])
    line, clock = ResponderLine([meter], now=T0 + 3 * DAY), ManualClock(T0 + 3 * DAY)
    result = await source(meter, line, clock).poll(slot=clock.now())
    assert result.ok, result.error
    got = values(result)
    true_kwh = meter.device.meter().counter_wh() / 1000.0
    heat = got["heat_energy"]
    assert isinstance(heat, float)
    assert true_kwh - RESOLUTION_KWH[unit] <= heat <= true_kwh + 1e-9  # floored to the counting step
    sample = meter.device.meter().sample
    assert got["flow_temperature"] == pytest.approx(sample.flow_c, abs=0.005)
    assert got["return_temperature"] == pytest.approx(sample.return_c, abs=0.005)
    assert got["flow_rate"] == pytest.approx((sample.flow_m3h or 0.0) * 1000, abs=0.5)
    assert got["status"] == 0.0 and line.exchanges == 2  # SND_NKE, REQ_UD2


async def test_the_due_day_record_is_not_the_current_energy() -> None:
    (meter,) = meters(["kWh"])
    line = ResponderLine([meter], now=T0 + 5 * DAY)
    data = await read_heat(line, Target(meter.primary), timeout_s=1.0)
    true_kwh = meter.device.meter().counter_wh() / 1000.0
    assert data.values["heat_energy"] == pytest.approx(true_kwh, abs=0.01)
    assert true_kwh > 5000 + 50  # the storage-1 record holds the start value, 5000 kWh
    assert data.header.id_digits == "20240001" and data.header.manufacturer_code == "PUH"
    assert data.fabrication_number == "20240001" and data.meter_time is not None


async def test_by_secondary_address_among_three_meters() -> None:
    fleet = meters(["kWh", "MWh", "GJ"])
    line, clock = ResponderLine(list(fleet), now=T0 + DAY), ManualClock(T0 + DAY)
    target = Target(secondary=SecondaryAddress("20240002"))
    result = await source(fleet[1], line, clock, target).poll()
    assert result.ok, result.error
    true_kwh = fleet[1].device.meter().counter_wh() / 1000.0
    heat = values(result)["heat_energy"]
    assert isinstance(heat, float) and true_kwh - 10.0 <= heat <= true_kwh
    assert [m.selected for m in fleet] == [False, True, False]
    nobody = await source(fleet[0], line, clock, Target(secondary=SecondaryAddress("99999999"))).poll()
    assert not nobody.ok and "select" in (nobody.error or "") and "no complete answer" in (nobody.error or "")
    assert [m.selected for m in fleet] == [False, False, False]  # a selection that matches none deselects all


async def test_a_wildcard_selection_of_two_meters_collides() -> None:
    line = ResponderLine(list(meters(["kWh", "kWh"])), now=T0 + DAY)
    with pytest.raises(ChecksumError):  # both answer E5: still E5; both answer RSP_UD: garbled
        await read_heat(line, Target(secondary=SecondaryAddress("2024000F")), timeout_s=1.0)


async def test_mbus_and_cjt188_meters_on_one_line_answer_only_their_own_frames() -> None:
    (mbus,) = meters(["kWh"])
    cjt = Cjt188HeatMeter(cjt188_device("cjt", seed=9, start=T0), "00000000000001")
    line = ResponderLine([mbus, cjt], now=T0 + DAY)
    m = await read_heat(line, Target(mbus.primary), timeout_s=1.0)
    c = await cjt188_read_heat(line, Cjt188Target(Address.parse("00000000000001")), ser=1, timeout_s=1.0)
    assert isinstance(m.values["heat_energy"], float) and isinstance(c.values["heat_energy"], float)
    assert mbus.requests == 2 and cjt.requests == 1


async def test_one_dead_meter_the_others_still_read() -> None:
    fleet = meters(["kWh", "MWh", "GJ", "kWh"])
    fleet[2].device.set_faults(timeout=True)
    line, clock = ResponderLine(list(fleet), now=T0 + DAY), ManualClock(T0 + DAY)
    results = [await source(m, line, clock).poll(slot=clock.now()) for m in fleet]
    assert [r.ok for r in results] == [True, True, False, True]
    dead = results[2]
    assert (
        dead.samples == () and "hm2" in (dead.error or "") and "M-Bus meter 3 SND_NKE" in (dead.error or "")
    )


async def test_dead_meter_opens_its_breaker_and_stops_costing_the_line() -> None:
    (meter,) = meters(["kWh"])
    meter.device.set_faults(timeout=True)
    line, clock = ResponderLine([meter], now=T0), ManualClock(T0)
    src = source(meter, line, clock)
    for _ in range(3):
        assert not (await src.poll()).ok
    skipped = await src.poll()
    assert skipped.skipped and skipped.requests == 0 and line.exchanges == 3


async def test_error_status_and_record_errors_never_move_a_counter() -> None:
    a, b = meters(["kWh", "GJ"])
    a.device.set_faults(value="nan")  # status 10 and VIFE 18 on the temperatures
    b.device.set_faults(exception="busy")  # status 02: application error
    line, clock = ResponderLine([a, b], now=T0 + DAY), ManualClock(T0 + DAY)
    for meter, status in ((a, 16.0), (b, 2.0)):
        result = await source(meter, line, clock).poll()
        got = values(result)
        assert result.ok and got.pop("status") == status
        assert all(isinstance(v, Invalid) and v.reason == "flagged" for v in got.values()), got


async def test_counter_reset_shows_as_a_drop_and_a_stuck_meter_keeps_its_value() -> None:
    a, b = meters(["kWh", "kWh"])
    line, clock = ResponderLine([a, b], now=T0 + DAY), ManualClock(T0 + DAY)
    before = values(await source(a, line, clock).poll())["heat_energy"]
    a.device.reset_counter(now=T0 + DAY)
    b.stick(T0 + DAY)
    first = values(await source(b, line, clock).poll())["heat_energy"]
    line.now = T0 + 2 * DAY
    after = values(await source(a, line, clock).poll())["heat_energy"]
    second = values(await source(b, line, clock).poll())["heat_energy"]
    assert isinstance(before, float) and before > 4000 and isinstance(after, float) and 0 <= after < 200
    assert first == second
