"""A simulated EN 13757-3 M-Bus heat meter on a shared line (a :class:`LineResponder`).

Same physics, faults and ground truth as the other simulated heat meters (a
:class:`~firmware_sim.device.Device` whose one meter integrates a heating model's heat
power). It answers, at its primary address (and at FD once selected by its secondary
address), SND_NKE with E5 and REQ_UD2 (C = 5B or 7B) with an RSP_UD long frame: a
variable data structure (CI = 72) with the records a heat meter sends. Frames and records
are built here by hand from the standard, not with the driver's code nor its library
(pyMeterBus has no record encoder), so that a bug on one side is not mirrored.

Records: fabrication number (0C 78), heat energy in the meter's unit (kWh: 8-digit BCD of
10 Wh, ``0C 04``; MWh: 32-bit integer of 10 kWh, ``04 07``; GJ: 32-bit integer of 10 MJ,
``04 0F``), the energy at the start of the simulation as storage number 1 (a due-day
value the reader must not take for the current one), volume in litres (04 13), power in
W (04 2B), flow in L/h (04 3B), flow and return temperature in 0.01 degC (02 59, 02 5D),
their difference in 0.01 K (02 61) and the meter's clock, type F (04 6D).

Faults: ``timeout`` (dead: no answer), ``exception`` (status byte 02: application error),
``value`` ``nan`` (status 10, temporary error, and the temperature records carry the
record error VIFE 18 "data error") or ``absurd`` (the largest counter), counter reset and
rollover through the device, and :meth:`stick` (the meter keeps answering its last
telegram while heat keeps flowing).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from firmware_sim.cjt188 import heat_meter_device as cjt188_heat_meter_device
from firmware_sim.device import Device, Endpoint
from firmware_sim.line_contract import Taken

EnergyUnit = Literal["kWh", "MWh", "GJ"]
ACK, SHORT, LONG, END = 0xE5, 0x10, 0x68, 0x16
SND_NKE, SND_UD_MASK, REQ_UD2_MASK = 0x40, 0x53, 0x5B
NETWORK, BROADCAST_REPLY = 0xFD, 0xFE
MANUFACTURER = "PUH"  # a simulated make
MEDIUM_HEAT_OUTLET, VERSION = 0x04, 0x01
# unit -> (DIF, VIF, milliwatt-seconds per counted step)
ENERGY_RECORDS: dict[EnergyUnit, tuple[int, int, int]] = {
    "kWh": (0x0C, 0x04, 36_000_000),  # 8-digit BCD, 10^(4-3) Wh = 10 Wh
    "MWh": (0x04, 0x07, 36_000_000_000),  # int32, 10^(7-3) Wh = 10 kWh
    "GJ": (0x04, 0x0F, 10_000_000_000),  # int32, 10^7 J = 10 MJ
}
CHINA = dt.timezone(dt.timedelta(hours=8))


def bcd(value: int, size: int) -> bytes:
    value = min(max(value, 0), 100**size - 1)
    return bytes(((value // 100**i % 100) // 10) << 4 | value // 100**i % 10 for i in range(size))


def integer(value: int, size: int) -> bytes:
    limit = (1 << (8 * size - 1)) - 1
    return min(max(value, -limit), limit).to_bytes(size, "little", signed=True)


def manufacturer_bytes(code: str) -> bytes:
    value = sum((ord(c) - 64) << shift for c, shift in zip(code, (10, 5, 0), strict=True))
    return value.to_bytes(2, "little")


def type_f(t: dt.datetime) -> bytes:
    """Date and time type F: minute, hour (+ hundred years), day + year low, month + year high."""
    year = t.year % 100
    hundreds = (t.year - 1900) // 100
    return bytes([t.minute, t.hour | hundreds << 5, t.day | (year & 0x07) << 5, t.month | (year >> 3) << 4])


def long_frame(control: int, address: int, ci: int, data: bytes) -> bytes:
    body = bytes([control, address, ci]) + data
    return bytes([LONG, len(body), len(body), LONG]) + body + bytes([sum(body) & 0xFF, END])


@dataclass
class MbusHeatMeter:
    """One heat meter: primary address ``primary``, identification number ``identification``
    (8 digits, its secondary address with manufacturer, version and medium)."""

    device: Device
    primary: int
    identification: str
    energy_unit: EnergyUnit = "kWh"
    requests: int = 0
    selected: bool = False
    _access: int = 0
    _volume_l: float = 0.0
    _last_t: float | None = None
    _stuck: bytes | None = field(default=None, repr=False)
    _due_day: int = field(init=False)

    def __post_init__(self) -> None:
        self._due_day = self._energy_steps()

    @property
    def header_id(self) -> bytes:
        """Identification number, manufacturer, version, medium as sent (8 bytes)."""
        ident = bytes.fromhex(self.identification)[::-1]
        return ident + manufacturer_bytes(MANUFACTURER) + bytes([VERSION, MEDIUM_HEAT_OUTLET])

    def stick(self, now: float) -> None:
        """From now on answer the telegram of ``now`` (a frozen meter)."""
        self._stuck = self._records(now)

    def unstick(self) -> None:
        self._stuck = None

    # -- LineResponder ----------------------------------------------------------------
    def take(self, buffer: bytes, now: float) -> Taken | None:
        if buffer[:1] == bytes([SHORT]):
            if len(buffer) < 5:
                return None
            c, a, cs, end = buffer[1:5]
            if end != END or (c + a) & 0xFF != cs:
                return None
            return Taken(5, self._short(c, a, now))
        if buffer[:1] == bytes([LONG]):
            if len(buffer) < 4 or buffer[1] != buffer[2] or buffer[3] != LONG:
                return None
            size = buffer[1] + 6
            if len(buffer) < size:
                return None
            body = buffer[4 : size - 2]
            if buffer[size - 1] != END or sum(body) & 0xFF != buffer[size - 2] or len(body) < 3:
                return None
            return Taken(size, self._long(body[0], body[1], body[2], body[3:]))
        return None

    def _addressed(self, address: int) -> bool:
        return address in (self.primary, BROADCAST_REPLY) or (address == NETWORK and self.selected)

    def _short(self, control: int, address: int, now: float) -> bytes | None:
        if not self._addressed(address):
            return None
        if not self._alive():
            return None
        if control == SND_NKE:
            if address == NETWORK:
                self.selected = False  # SND_NKE to FD ends the selection
            return bytes([ACK])
        if control & 0xDF == REQ_UD2_MASK:  # 5B, or 7B with FCB
            return self._rsp_ud(now)
        return None

    def _long(self, control: int, address: int, ci: int, data: bytes) -> bytes | None:
        if control & 0xDF != SND_UD_MASK or address != NETWORK or ci != 0x52 or len(data) != 8:
            return None  # only the selection is understood
        self.selected = self._matches(data)
        return bytes([ACK]) if self.selected and self._alive() else None

    def _matches(self, want: bytes) -> bool:
        """Identification digits (F = any), manufacturer (FF FF = any), version, medium (FF = any)."""
        ident = want[3::-1].hex().upper()
        if any(w not in ("F", m) for w, m in zip(ident, self.identification, strict=True)):
            return False
        mine = self.header_id
        return want[4:6] in (b"\xff\xff", mine[4:6]) and all(
            w in (0xFF, m) for w, m in zip(want[6:8], mine[6:8], strict=True)
        )

    def _alive(self) -> bool:
        self.requests += 1
        self.device.count_request(0)
        return not (self.device.faults.timeout and self.device.fault_fires())

    # -- the telegram ---------------------------------------------------------------------
    def _rsp_ud(self, now: float) -> bytes:
        records = self._stuck if self._stuck is not None else self._records(now)
        self._access = (self._access + 1) & 0xFF
        faults = self.device.faults
        status = 0x00
        if faults.exception is not None and self.device.fault_fires():
            status = 0x02  # application error
        elif faults.value == "nan":
            status = 0x10  # temporary error
        header = self.header_id + bytes([self._access, status, 0x00, 0x00])
        return long_frame(0x08, self.primary, 0x72, header + records)

    def _energy_steps(self) -> int:
        _, _, mws_step = ENERGY_RECORDS[self.energy_unit]
        return self.device.meter().counter_mws() // mws_step % 10**8

    def _records(self, now: float) -> bytes:
        readout = self.device.readout(0, now)
        sample = readout.main().sample
        flow = sample.flow_m3h or 0.0
        self._integrate_volume(now, flow)
        dif, vif, _ = ENERGY_RECORDS[self.energy_unit]
        steps = 10**8 - 1 if self.device.faults.value == "absurd" else self._energy_steps()
        energy = bcd(steps, 4) if dif == 0x0C else integer(steps, 4)
        due_day = bcd(self._due_day, 4) if dif == 0x0C else integer(self._due_day, 4)
        bad = self.device.faults.value == "nan"
        temp_vife = b"\x18" if bad else b""  # record error "data error" ...
        extension = 0x80 if bad else 0x00  # ... after a VIF with its extension bit
        flow_c, return_c = sample.flow_c or 0.0, sample.return_c or 0.0
        power_w = readout.main().power_w  # NaN under the "nan" fault: the status says so
        return (
            b"\x0c\x78" + bcd(int(self.identification), 4)
            + bytes([dif, vif]) + energy
            + bytes([dif | 0x40, vif]) + due_day  # storage number 1
            + b"\x04\x13" + integer(int(self._volume_l), 4)
            + b"\x04\x2b" + integer(round(power_w) if math.isfinite(power_w) else 0, 4)
            + b"\x04\x3b" + integer(round(flow * 1000), 4)
            + bytes([0x02, 0x59 | extension]) + temp_vife + integer(round(flow_c * 100), 2)
            + bytes([0x02, 0x5D | extension]) + temp_vife + integer(round(return_c * 100), 2)
            + b"\x02\x61" + integer(round((flow_c - return_c) * 100), 2)
            + b"\x04\x6d" + type_f(dt.datetime.fromtimestamp(now, CHINA))
        )  # fmt: skip

    def _integrate_volume(self, now: float, flow_m3h: float) -> None:
        if self._last_t is not None and now > self._last_t:
            self._volume_l += flow_m3h * 1000.0 * (now - self._last_t) / 3600.0
        self._last_t = now


def heat_meter_device(name: str, seed: int, start: float, **options: Any) -> Device:
    """A heat-meter :class:`Device` (physics, exact counter, ground truth) for a responder;
    ``options`` as :func:`firmware_sim.cjt188.heat_meter_device` takes them."""
    device = cjt188_heat_meter_device(name, seed, start, **options)
    device.kind, device.endpoint = "mbus_heat_meter", Endpoint("mbus")
    return device
