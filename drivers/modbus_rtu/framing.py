"""Modbus RTU frames over a shared :class:`~drivers.line.contract.Line` ("RTU over TCP" to a
transparent serial server, or a local port shared with DL/T 645 and CJ/T 188 devices).

Frames (Modbus over Serial Line V1.02, 2.5.1; application protocol V1.1b3, 6.3/6.4/7)::

    request   unit fc addr_hi addr_lo count_hi count_lo crc_lo crc_hi
    answer    unit fc byte_count data... crc_lo crc_hi
    exception unit fc|0x80 code crc_lo crc_hi

Function 3/4 data is 2 bytes a register, high byte first; function 1/2 (coils, discrete
inputs) data is ceil(count / 8) bytes, the first address in bit 0 of the first byte, the
last byte padded with zeros (application protocol 6.1, 6.2).

CRC-16/MODBUS: polynomial 0xA001 (reflected 0x8005), initial 0xFFFF, sent low byte first.
:class:`LineRegisterReader` is a :class:`~drivers.modbus.source.RegisterReader`, so a
:class:`~drivers.modbus.source.ModbusSource` reads through it as through pymodbus.
"""

from __future__ import annotations

from drivers.line.contract import Line, LineTimeout, LineUnreachable, ReadExactly
from drivers.modbus.errors import DeviceExceptionReply, DeviceTimeout, DeviceUnreachable, ModbusError
from drivers.modbus.plan import BIT_FUNCTIONS, ReadRequest
from drivers.modbus.source import describe

READ_FUNCTIONS = frozenset({1, 2, 3, 4})


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` (the value; on the wire it goes low byte first)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def read_request(request: ReadRequest) -> bytes:
    """The RTU frame of a read (function 1, 2, 3 or 4)."""
    if request.function not in READ_FUNCTIONS:
        raise ValueError(f"{describe(request)}: only read function codes 1-4 are framed here")
    body = bytes([request.unit, request.function]) + request.address.to_bytes(2, "big")
    return with_crc(body + request.count.to_bytes(2, "big"))


def _check_crc(frame: bytes, where: str) -> None:
    if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
        raise ModbusError(f"{where}: answer with a bad CRC ({frame.hex(' ')})")


async def read_answer(read: ReadExactly, request: ReadRequest) -> bytes:
    """Read one answer to ``request`` (normal or exception) and return its frame."""
    where = describe(request)
    head = await read(3)
    if head[1] & 0x80:
        frame = head + await read(2)
        _check_crc(frame, where)
        return frame
    frame = head + await read(head[2] + 2)
    _check_crc(frame, where)
    return frame


def registers_of(frame: bytes, request: ReadRequest) -> list[int]:
    """The registers an answer frame carries; raises for exceptions and mismatches."""
    where = describe(request)
    unit, function = frame[0], frame[1]
    if unit != request.unit or function & 0x7F != request.function:
        raise ModbusError(f"{where}: answer from unit {unit} fc{function & 0x7F} ({frame.hex(' ')})")
    if function & 0x80:
        code = frame[2]
        raise DeviceExceptionReply(f"{where}: exception reply (code {code})", code)
    data = frame[3:-2]
    expected = (request.count + 7) // 8 if request.function in BIT_FUNCTIONS else 2 * request.count
    if len(data) != expected:
        raise ModbusError(f"{where}: answer carries {len(data)} bytes, {expected} expected")
    if request.function in BIT_FUNCTIONS:
        return [(data[i // 8] >> (i % 8)) & 1 for i in range(request.count)]
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


class LineRegisterReader:
    """One Modbus RTU unit's view of a shared line (a :class:`RegisterReader`)."""

    def __init__(self, line: Line, *, timeout_s: float, meter: str = "") -> None:
        self.label = f"rtu on line {line.id}"
        self._line = line
        self._timeout_s = timeout_s
        self._meter = meter

    async def read(self, request: ReadRequest) -> list[int]:
        label = f"{self._meter + ' ' if self._meter else ''}{describe(request)}"

        async def answer(read: ReadExactly) -> bytes:
            return await read_answer(read, request)

        try:
            frame = await self._line.exchange(
                read_request(request), answer, timeout_s=self._timeout_s, label=label
            )
        except LineTimeout as exc:
            raise DeviceTimeout(str(exc)) from exc
        except LineUnreachable as exc:
            raise DeviceUnreachable(str(exc)) from exc
        return registers_of(frame, request)

    async def reset(self) -> None:
        """Nothing to drop: the line's owner discards stale bytes before every request."""

    async def aclose(self) -> None:
        """The line's owner closes the port."""
