"""A simulated DL/T 645-2007 electricity meter on a shared line (a :class:`LineResponder`).

The meter shows its device's physics and exact counters (the same ground truth as the
Modbus meters): forward and reverse active energy as XXXXXX.XX kWh (truncated to the
displayed hundredth, as a meter's register holds it), combined = forward + reverse (the
default combination word), voltage, current and power per phase and in total, and its
clock in Beijing time. The framing is written here again, independently of the gateway's
driver, so each checks the other.

Faults: ``timeout`` leaves requests unanswered (a dead meter); ``exception`` answers
abnormally (0xD1; ``illegal_address`` -> "no such data", ``busy`` -> "other error");
``value: nan`` fills the values with FF (not BCD); ``value: absurd`` shows the largest
numbers the formats hold.
"""

from __future__ import annotations

import datetime as dt
import math

from firmware_sim.device import Device
from firmware_sim.line_contract import Taken
from firmware_sim.registers.base import ChannelView

WILDCARD = bytes([0xAA] * 6)
BROADCAST = bytes([0x99] * 6)
NOMINAL_V = 230.0
MODULUS_WH = 1.0e9  # XXXXXX.XX kWh wraps at 1 000 000 kWh
CHINA = dt.timezone(dt.timedelta(hours=8))
ERR_OTHER, ERR_NO_DATA = 0x01, 0x02


def bcd(value: int, size: int) -> bytes:
    """``value`` as ``size`` BCD bytes, least significant first."""
    digits = f"{value:0{2 * size}d}"[-2 * size :]
    return bytes(int(digits[i : i + 2], 16) for i in range(0, 2 * size, 2))[::-1]


def _scaled(value: float, size: int, decimals: int, signed: bool, truncate: bool = False) -> bytes:
    limit = (8 * 10 ** (2 * size - 1) if signed else 10 ** (2 * size)) - 1  # sign bit: top digit 0-7
    x = abs(value) * 10**decimals
    n = min(limit, math.floor(x) if truncate else round(x))
    raw = bytearray(bcd(n, size))
    if signed and value < 0 and n:
        raw[-1] |= 0x80
    return bytes(raw)


def frame(address: bytes, control: int, data: bytes) -> bytes:
    body = (
        bytes([0x68]) + address + bytes([0x68, control, len(data)]) + bytes((b + 0x33) & 0xFF for b in data)
    )
    return b"\xfe\xfe\xfe\xfe" + body + bytes([sum(body) & 0xFF, 0x16])


def parse(buffer: bytes) -> tuple[int, bytes, int, bytes] | bool | None:
    """(consumed, address, control, plain data) of a whole frame at the buffer's start; None
    while incomplete; False if the buffer does not start with a DL/T 645 frame."""
    i = 0
    while i < len(buffer) and buffer[i] == 0xFE:
        i += 1
    if i == len(buffer):
        return None
    if buffer[i] != 0x68:
        return False
    if len(buffer) < i + 10:
        return None
    if buffer[i + 7] != 0x68:
        return False
    end = i + 12 + buffer[i + 9]
    if len(buffer) < end:
        return None
    f = buffer[i:end]
    if f[-1] != 0x16 or sum(f[:-2]) & 0xFF != f[-2]:
        return False
    return end, f[1:7], f[8], bytes((b - 0x33) & 0xFF for b in f[10:-2])


class Dlt645Responder:
    """The DL/T 645 face of ``device`` at ``address`` (12 digits) on a simulated line."""

    def __init__(self, device: Device, address: str, *, phases: int = 3) -> None:
        self.device = device
        self.address = address
        self.raw_address = bytes.fromhex(address)[::-1]
        self.phases = phases
        self.requests = 0

    def take(self, buffer: bytes, now: float) -> Taken | None:
        parsed = parse(buffer)
        if not isinstance(parsed, tuple):
            return None
        consumed, address, control, data = parsed
        if (address == WILDCARD and control == 0x13) or address == self.raw_address:
            return Taken(consumed, self._answer(control, data, now))
        return Taken(consumed, None)  # another meter's frame, or a broadcast

    def _answer(self, control: int, data: bytes, now: float) -> bytes | None:
        self.requests += 1
        self.device.count_request(0)
        faults = self.device.faults
        if faults.timeout and self.device.fault_fires():
            return None
        if control == 0x13:
            return frame(self.raw_address, 0x93, self.raw_address)
        if control != 0x11 or len(data) < 4:
            return frame(self.raw_address, 0xC0 | (control & 0x1F), bytes([ERR_OTHER]))
        exc = faults.exception
        if exc is not None and self.device.fault_fires():
            code = ERR_NO_DATA if exc == "illegal_address" else ERR_OTHER
            return frame(self.raw_address, 0xD1, bytes([code]))
        di = int.from_bytes(data[:4], "little")
        value = self._value(di, now)
        if value is None:
            return frame(self.raw_address, 0xD1, bytes([ERR_NO_DATA]))
        return frame(self.raw_address, 0x91, data[:4] + value)

    def _value(self, di: int, now: float) -> bytes | None:
        self.device.refresh(now)
        fault = self.device.faults.value
        ch = self.device.readout(0, now).main()
        raw = self._encode(di, ch, now)
        if raw is None or fault != "nan" or di in (0x04000101, 0x04000102):
            return raw
        return b"\xff" * len(raw)

    def _encode(self, di: int, ch: ChannelView, now: float) -> bytes | None:
        fwd, rev = ch.counter_wh / 1000.0, ch.reverse_counter_wh / 1000.0
        if math.isnan(fwd) or math.isnan(ch.power_w):
            fwd = rev = 0.0  # the nan fault is applied after encoding
        energy = {0x00000000: fwd + rev, 0x00010000: fwd, 0x00020000: rev}
        if di in energy:
            return _scaled(energy[di], 4, 2, False, truncate=True)
        if di == 0x0000FF00:  # block: total, then tariffs 1..4 (all energy in tariff 1 here)
            return b"".join(_scaled(v, 4, 2, False, True) for v in (fwd + rev, fwd + rev, 0, 0, 0))
        return self._variable(di, ch.power_w / 1000.0) or self._clock(di, now)

    def _variable(self, di: int, p_kw: float) -> bytes | None:
        per_phase = p_kw / self.phases
        amps = math.copysign(abs(per_phase) * 1000.0 / NOMINAL_V, per_phase)
        phases = range(1, self.phases + 1)
        volts = {0x02010000 + (n << 8): _scaled(NOMINAL_V, 2, 1, False) for n in phases}
        currents = {0x02020000 + (n << 8): _scaled(amps, 3, 3, True) for n in phases}
        powers = {0x02030000: _scaled(p_kw, 3, 4, True)}
        powers |= {0x02030000 + (n << 8): _scaled(per_phase, 3, 4, True) for n in phases}
        blocks = {
            0x0201FF00: b"".join(volts.values()),
            0x0202FF00: b"".join(currents.values()),
            0x0203FF00: b"".join(powers.values()),
        }
        return {**volts, **currents, **powers, **blocks}.get(di)

    def _clock(self, di: int, now: float) -> bytes | None:
        local = dt.datetime.fromtimestamp(now, CHINA)
        if di == 0x04000101:  # YYMMDDWW, WW first (0 = Sunday)
            week = local.isoweekday() % 7
            return bytes(
                [bcd(week, 1)[0], bcd(local.day, 1)[0], bcd(local.month, 1)[0], bcd(local.year % 100, 1)[0]]
            )
        if di == 0x04000102:  # hhmmss, ss first
            return bytes([bcd(local.second, 1)[0], bcd(local.minute, 1)[0], bcd(local.hour, 1)[0]])
        return None
