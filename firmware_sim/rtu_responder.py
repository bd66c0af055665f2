"""A simulated Modbus RTU device on a shared simulated line (a :class:`LineResponder`).

Serves a device's register maps (FC 3 and FC 4; coils and discrete inputs, FC 1 and 2,
packed 8 to a byte, first address in bit 0) on a :class:`firmware_sim.line.SimLine`,
beside DL/T 645 and CJ/T 188 devices, with the device's faults: ``timeout`` leaves a
request unanswered, ``exception`` answers with the exception code. The CRC is computed
here, independently of the gateway's driver, so a test of one checks the other.
"""

from __future__ import annotations

from firmware_sim.device import Device
from firmware_sim.line_contract import Taken
from firmware_sim.registers.base import Image

REQUEST_LENGTH = 8  # unit fc addr(2) count(2) crc(2)


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _frame(body: bytes) -> bytes:
    return body + crc16_modbus(body).to_bytes(2, "little")


class RtuResponder:
    """The Modbus units of ``device`` on a simulated line."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def take(self, buffer: bytes, now: float) -> Taken | None:
        if len(buffer) < REQUEST_LENGTH or buffer[1] not in (1, 2, 3, 4):
            return None
        frame = buffer[:REQUEST_LENGTH]
        if crc16_modbus(frame[:6]) != int.from_bytes(frame[6:8], "little"):
            return None  # not a Modbus read frame (or another protocol's bytes)
        unit = frame[0]
        if unit not in self.device.units:
            return Taken(REQUEST_LENGTH, None)
        self.device.count_request(unit)
        faults = self.device.faults
        if faults.timeout and self.device.fault_fires():
            return Taken(REQUEST_LENGTH, None)
        return Taken(REQUEST_LENGTH, self._answer(unit, frame, now))

    def _answer(self, unit: int, frame: bytes, now: float) -> bytes:
        fc = frame[1]
        address, count = int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
        code = self.device.exception_code()
        if code is None:
            words = _words(self.device.render(unit, now), fc, address, count)
            if words is not None:
                data = _pack_bits(words) if fc in (1, 2) else b"".join(w.to_bytes(2, "big") for w in words)
                return _frame(bytes([unit, fc, len(data)]) + data)
            has_table = any(b.fc == fc for b in self.device.units[unit].blocks)
            code = 0x02 if has_table else 0x01  # illegal data address / illegal function
        return _frame(bytes([unit, fc | 0x80, code]))


def _words(image: Image, fc: int, address: int, count: int) -> list[int] | None:
    for block, words in image.items():
        if block.fc == fc and block.start <= address and address + count <= block.start + block.length:
            off = address - block.start
            return words[off : off + count]
    return None


def _pack_bits(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        out[i // 8] |= (bit & 1) << (i % 8)
    return bytes(out)
