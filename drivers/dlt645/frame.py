"""DL/T 645-2007 frames: encoding, decoding and reading one off a line.

::

    FE.. 68 A0 A1 A2 A3 A4 A5 68 C L DATA CS 16

(DL/T 645-2007, 7.1). Up to four FE wake-up bytes precede a frame. A0..A5 is the meter
address, 12 BCD digits, the lowest two first (``123456789012`` goes ``12 90 78 56 34 12``);
``AAAAAAAAAAAA`` is the wildcard of "read address". C is the control code: bit 7
direction (1 = answer), bit 6 abnormal answer, bit 5 follow-up frame, bits 4..0 the
function. L is the length of DATA; every DATA byte goes on the wire plus 0x33 (modulo
256). CS is the sum modulo 256 of every byte from the first 68 through the last DATA byte.
Data identifiers DI3 DI2 DI1 DI0 lead the DATA of a read, DI0 first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.dlt645.errors import ErrorAnswer, FrameError, UnexpectedAnswer, error_meanings
from drivers.line.contract import ReadExactly

START, END, WAKE = 0x68, 0x16, 0xFE
OFFSET = 0x33
PREAMBLE = bytes([WAKE] * 4)
WILDCARD = "AAAAAAAAAAAA"
MAX_PREAMBLE = 16  # wake-up bytes tolerated before an answer (some meters echo more than 4)

READ_DATA, READ_FOLLOW_UP, READ_ADDRESS = 0x11, 0x12, 0x13
ANSWER, ABNORMAL, FOLLOW_UP = 0x80, 0x40, 0x20

ADDRESS_PATTERN = re.compile(r"^[0-9]{12}$|^A{12}$")


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: address as 12 digits (most significant first), control, plain DATA."""

    address: str
    control: int
    data: bytes

    @property
    def is_answer(self) -> bool:
        return bool(self.control & ANSWER)

    @property
    def abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def function(self) -> int:
        return self.control & 0x1F


def address_bytes(address: str) -> bytes:
    """``"123456789012"`` -> ``12 90 78 56 34 12`` (A0 first); ``"AAAAAAAAAAAA"`` -> AA x 6."""
    if not ADDRESS_PATTERN.match(address):
        raise ValueError(f"{address!r} is not a DL/T 645 address (12 digits, or {WILDCARD})")
    return bytes.fromhex(address)[::-1]


def address_text(raw: bytes) -> str:
    """The inverse of :func:`address_bytes` (any nibble shown as hex, for messages)."""
    return raw[::-1].hex().upper()


def di_bytes(di: int) -> bytes:
    """A data identifier DI3..DI0 (e.g. 0x00010000) as sent: DI0 first."""
    return di.to_bytes(4, "little")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def encode(address: str, control: int, data: bytes = b"", *, preamble: bytes = PREAMBLE) -> bytes:
    """A whole frame, wake-up bytes included; ``data`` is plain (the +0x33 is added here)."""
    if len(data) > 255:
        raise ValueError(f"DATA of {len(data)} bytes does not fit the length byte")
    body = bytes([START]) + address_bytes(address) + bytes([START, control, len(data)])
    body += bytes((b + OFFSET) & 0xFF for b in data)
    return preamble + body + bytes([checksum(body), END])


def decode(raw: bytes) -> Frame:
    """A frame from its bytes (leading FE bytes allowed); raises :class:`FrameError`."""
    start = 0
    while start < len(raw) and raw[start] == WAKE:
        start += 1
    frame = raw[start:]
    if len(frame) < 12 or frame[0] != START or frame[7] != START:
        raise FrameError(f"not a DL/T 645 frame: {raw[:24].hex(' ')}")
    length = frame[9]
    if len(frame) != 12 + length:
        raise FrameError(f"frame of {len(frame)} bytes, its length byte says {12 + length}: {frame.hex(' ')}")
    if frame[-1] != END:
        raise FrameError(f"frame does not end with 16: {frame.hex(' ')}")
    if checksum(frame[:-2]) != frame[-2]:
        raise FrameError(f"checksum {frame[-2]:02X}, computed {checksum(frame[:-2]):02X}: {frame.hex(' ')}")
    data = bytes((b - OFFSET) & 0xFF for b in frame[10:-2])
    return Frame(address_text(frame[1:7]), frame[8], data)


async def read_frame(read: ReadExactly) -> bytes:
    """An :data:`~drivers.line.contract.AnswerReader`: skip wake-up bytes, read one frame."""
    skipped = 0
    first = await read(1)
    while first[0] == WAKE:
        skipped += 1
        if skipped > MAX_PREAMBLE:
            raise FrameError(f"more than {MAX_PREAMBLE} wake-up bytes and no frame")
        first = await read(1)
    if first[0] != START:
        raise FrameError(f"answer starts with {first[0]:02X}, not 68")
    head = first + await read(9)
    if head[7] != START:
        raise FrameError(f"no second 68 in the answer's header: {head.hex(' ')}")
    return head + await read(head[9] + 2)


def read_data_request(address: str, di: int) -> bytes:
    """Read data (control 0x11) of identifier ``di`` from ``address``."""
    return encode(address, READ_DATA, di_bytes(di))


def read_address_request() -> bytes:
    """Read address (control 0x13) to the wildcard: only one meter may be on the line."""
    return encode(WILDCARD, READ_ADDRESS)


def read_data_value(frame: Frame, address: str, di: int) -> tuple[bytes, bool]:
    """The value bytes of an answer to :func:`read_data_request`, and whether the meter has
    a follow-up frame (0xB1). Raises :class:`ErrorAnswer` for 0xD1,
    :class:`UnexpectedAnswer` for an answer that is not to this request."""
    where = f"meter {address} DI {di:08X}"
    if address != WILDCARD and frame.address != address:
        raise UnexpectedAnswer(f"{where}: answer from meter {frame.address}")
    if frame.function != READ_DATA or not frame.is_answer:
        raise UnexpectedAnswer(f"{where}: answer with control code {frame.control:02X}")
    if frame.abnormal:
        code = frame.data[0] if frame.data else 0
        raise ErrorAnswer(f"{where}: error answer {code:02X} ({'; '.join(error_meanings(code))})", code)
    if frame.data[:4] != di_bytes(di):
        raise UnexpectedAnswer(f"{where}: answer for DI {int.from_bytes(frame.data[:4], 'little'):08X}")
    return frame.data[4:], bool(frame.control & FOLLOW_UP)


def read_address_value(frame: Frame) -> str:
    """The address a meter gives in its answer (0x93) to :func:`read_address_request`."""
    if frame.function != READ_ADDRESS or not frame.is_answer or frame.abnormal:
        raise UnexpectedAnswer(f"read address: answer with control code {frame.control:02X}")
    if len(frame.data) != 6:
        raise UnexpectedAnswer(f"read address: answer carries {len(frame.data)} bytes, not 6")
    return address_text(frame.data)
