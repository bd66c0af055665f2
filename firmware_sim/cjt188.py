"""A simulated CJ/T 188-2004 heat meter on a shared line (a :class:`LineResponder`).

Same physics, faults and ground truth as the other simulated heat meters: a
:class:`~firmware_sim.device.Device` whose one meter integrates a heating model's heat
power. The responder answers "read data" (C = 01, identifier 90 1F in either byte
order) with the 43-byte heat block and "read address" (C = 03, identifier 81 0A) to the
wildcard address, in the meter's energy unit (kWh, MWh or GJ), so that the driver's unit
conversion is tested end to end. Framing is written here from the standard, not taken
from the driver, so a driver bug is not mirrored.

Faults: ``timeout`` (dead: no answer), ``exception`` (an abnormal answer C1 with the
valve-abnormal status), ``value`` ``nan`` (fields read FF: not measured) or ``absurd``
(all nines), counter reset and rollover through the device, and :meth:`stick` (the meter
keeps answering its last block while heat keeps flowing: a frozen register).

The displayed counter is the device's visible counter floored to the unit's 0.01 step,
modulo 10^6 units (XXXXXX.XX); the volume is the flow integrated between requests
(information only).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from firmware_sim.device import Device, Endpoint
from firmware_sim.line_contract import Taken
from firmware_sim.meter import Meter
from firmware_sim.physics import HeatingModel

EnergyUnit = Literal["kWh", "MWh", "GJ"]
# unit code, and milliwatt-seconds per 0.01 of the unit (the BCD value's last digit)
ENERGY_UNITS: dict[EnergyUnit, tuple[int, int]] = {
    "kWh": (0x05, 36_000_000),
    "MWh": (0x08, 36_000_000_000),
    "GJ": (0x11, 10_000_000_000),
}
KW, M3, M3_H = 0x17, 0x2C, 0x35
WAKE, START, END = 0xFE, 0x68, 0x16
WILDCARD = bytes([0xAA] * 7)
METERING, READ_ADDRESS = (0x90, 0x1F), (0x81, 0x0A)
CHINA = dt.timezone(dt.timedelta(hours=8))


def bcd(value: int, size: int) -> bytes:
    """``value`` (clamped to what ``size`` bytes hold) as packed BCD, low byte first."""
    value = min(max(value, 0), 100**size - 1)
    return bytes(((value // 100**i % 100) // 10) << 4 | value // 100**i % 10 for i in range(size))


def frame(meter_type: int, address: bytes, control: int, data: bytes) -> bytes:
    body = bytes([START, meter_type, *address, control, len(data), *data])
    return body + bytes([sum(body) & 0xFF, END])


@dataclass
class Cjt188HeatMeter:
    """One heat meter; ``address`` is the 14-digit nameplate number."""

    device: Device
    address: str
    energy_unit: EnergyUnit = "kWh"
    meter_type: int = 0x20
    requests: int = 0
    _volume_m3: float = 0.0
    _last_t: float | None = None
    _stuck: bytes | None = field(default=None, repr=False)
    _t0: float = field(init=False)

    def __post_init__(self) -> None:
        self._t0 = self.device.meter().t  # operating hours count from here

    @property
    def wire_address(self) -> bytes:
        return bytes(int(self.address[i : i + 2], 16) for i in range(12, -1, -2))

    def stick(self, now: float) -> None:
        """From now on answer the block of ``now`` (a frozen register)."""
        self._stuck = self._block(now)

    def unstick(self) -> None:
        self._stuck = None

    # -- LineResponder ----------------------------------------------------------------
    def take(self, buffer: bytes, now: float) -> Taken | None:
        start = 0
        while start < len(buffer) and buffer[start] == WAKE:
            start += 1
        body = buffer[start:]
        if not body or body[0] != START:
            return None
        if len(body) < 11 or len(body) < 13 + body[10]:
            return None  # not complete yet
        size = 13 + body[10]
        if body[size - 1] != END or sum(body[: size - 2]) & 0xFF != body[size - 2]:
            return None  # not a CJ/T 188 frame (another protocol's, or garbled)
        return Taken(start + size, self._answer(body[:size], now))

    def _answer(self, request: bytes, now: float) -> bytes | None:
        meter_type, address, control, data = request[1], request[2:9], request[9], request[11:-2]
        if meter_type not in (self.meter_type, 0xAA) or address not in (self.wire_address, WILDCARD):
            return None
        if control & 0x80 or len(data) < 3:
            return None  # another device's answer, or not a request we know
        self.requests += 1
        self.device.count_request(0)
        faults = self.device.faults
        if faults.timeout and self.device.fault_fires():
            return None
        di, ser = (data[0], data[1]), data[2]
        if faults.exception is not None and self.device.fault_fires():
            return self._abnormal(control, ser, st1=0x03)
        if control == 0x01 and di in (METERING, METERING[::-1]):
            return frame(self.meter_type, self.wire_address, 0x81, bytes([*di, ser]) + self._block(now))
        if control == 0x03 and di in (READ_ADDRESS, READ_ADDRESS[::-1]):
            return frame(self.meter_type, self.wire_address, 0x83, bytes([*di, ser]))
        return self._abnormal(control, ser, st1=0x00)

    def _abnormal(self, control: int, ser: int, st1: int) -> bytes:
        return frame(self.meter_type, self.wire_address, control | 0xC0, bytes([ser, st1, 0x00]))

    # -- the 90 1F block ----------------------------------------------------------------
    def _block(self, now: float) -> bytes:
        if self._stuck is not None:
            return self._stuck
        readout = self.device.readout(0, now)
        sample = readout.main().sample
        flow = sample.flow_m3h or 0.0
        self._integrate_volume(now, flow)
        code, mws_step = ENERGY_UNITS[self.energy_unit]
        fault = self.device.faults.value
        if fault == "nan":
            measured = b"\xff\xff\xff\xff" + bytes([code]) + b"\xff\xff\xff\xff" + bytes([KW])
        else:
            heat = self.device.meter().counter_mws() // mws_step % 10**8
            power = round(readout.main().power_w / 10.0)  # kW with 2 decimals
            if fault == "absurd":
                heat = power = 10**8 - 1
            measured = bcd(heat, 4) + bytes([code]) + bcd(power, 4) + bytes([KW])
        valve = 0x00 if flow > 0 else 0x01
        return (
            bcd(0, 4) + bytes([code])  # cooling energy: a heating meter counts none
            + measured
            + bcd(round(flow * 10_000), 4) + bytes([M3_H])
            + bcd(int(self._volume_m3 * 100), 4) + bytes([M3])
            + bcd(round((sample.flow_c or 0.0) * 100), 3)
            + bcd(round((sample.return_c or 0.0) * 100), 3)
            + bcd(int((readout.t - self._t0) // 3600), 3)
            + bcd(int(dt.datetime.fromtimestamp(now, CHINA).strftime("%Y%m%d%H%M%S")), 7)
            + bytes([valve, 0x00])
        )  # fmt: skip

    def _integrate_volume(self, now: float, flow_m3h: float) -> None:
        if self._last_t is not None and now > self._last_t:
            self._volume_m3 += flow_m3h * (now - self._last_t) / 3600.0
        self._last_t = now


def heat_meter_device(
    name: str, seed: int, start: float, *, step_s: int = 60, interval_s: int = 900,
    model: HeatingModel | None = None, initial_kwh: float = 5000.0, modulus_wh: float = 2.0**32,
) -> Device:  # fmt: skip
    """A heat-meter :class:`Device` (physics, exact counter, ground truth) for a responder."""
    heating = model or HeatingModel(output="heat", seed=seed)
    meter = Meter(
        heating, start=start, step_s=step_s, interval_s=interval_s, initial_wh=initial_kwh * 1000.0,
        modulus_wh=modulus_wh, quantity="heat",
    )  # fmt: skip
    return Device(
        name=name, kind="cjt188_heat_meter", site="sim", seed=seed, serial=10_000_000 + seed,
        meters={"main": meter}, units={}, endpoint=Endpoint("cjt188"),
    )  # fmt: skip
