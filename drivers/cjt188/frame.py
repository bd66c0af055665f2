"""CJ/T 188-2004 framing: ``[FE..] 68 T A0..A6 C L DATA CS 16``.

- T: meter type (0x20 heat meter, 0x21 cooling meter; 0xAA matches any type).
- A0..A6: the 14-digit BCD address, A0 (lowest two digits) first; ``AA`` x 7 is the
  wildcard used with "read address".
- C: bit 7 direction (1 = meter to master), bit 6 abnormal answer, bits 5..0 function:
  0x01 read data (answer 0x81, abnormal 0xC1), 0x03 read address (answer 0x83).
- L: length of DATA. DATA is not offset (unlike DL/T 645's +0x33).
- CS: sum of every byte from 0x68 through the last DATA byte, modulo 256.

A read request's DATA is the data identifier, then SER, the master's sequence byte,
which the meter echoes. The identifier 90 1F goes on the wire as ``90 1F`` in the 2004
text (DI0 = 0x90 first); some meters built to the 2018 text expect ``1F 90``:
:class:`IdentifierOrder` chooses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.cjt188.errors import ChecksumError, FrameError
from drivers.line.contract import ReadExactly

START, END, WAKE = 0x68, 0x16, 0xFE
HEAT_METER, COOLING_METER, ANY_TYPE = 0x20, 0x21, 0xAA
READ_DATA, READ_ADDRESS = 0x01, 0x03
ANSWER, ABNORMAL = 0x80, 0x40
DI_METERING = 0x901F  # current metering data
DI_READ_ADDRESS = 0x810A
WILDCARD = bytes([0xAA] * 7)
HEADER = 11  # 68 T A0..A6 C L
MAX_SKIP = 16  # wake-up or line noise bytes tolerated before the start byte

IdentifierOrder = Literal["90 1F", "1F 90"]


@dataclass(frozen=True, slots=True)
class Address:
    """A meter's 7-byte address; ``digits`` as printed on the meter (A6 first)."""

    wire: bytes  # A0..A6, as sent

    @classmethod
    def parse(cls, digits: str) -> Address:
        """``"00000012345678"`` (14 decimal digits, most significant first)."""
        if len(digits) != 14 or not digits.isdigit():
            raise ValueError(f"{digits!r} is not a CJ/T 188 address (14 decimal digits)")
        pairs = [int(digits[i : i + 2], 16) for i in range(0, 14, 2)]
        return cls(bytes(reversed(pairs)))

    @property
    def digits(self) -> str:
        return bytes(reversed(self.wire)).hex().upper()

    def __str__(self) -> str:
        return self.digits


BROADCAST = Address(WILDCARD)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame without its wake-up bytes."""

    meter_type: int
    address: Address
    control: int
    data: bytes = b""

    def encode(self, preamble: int = 0) -> bytes:
        if len(self.data) > 0xFF:
            raise ValueError(f"DATA of {len(self.data)} bytes does not fit L")
        body = bytes([START, self.meter_type, *self.address.wire, self.control, len(self.data), *self.data])
        return bytes([WAKE] * preamble) + body + bytes([checksum(body), END])

    @property
    def function(self) -> int:
        return self.control & 0x3F

    @property
    def is_answer(self) -> bool:
        return bool(self.control & ANSWER)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)


def checksum(body: bytes) -> int:
    return sum(body) & 0xFF


def identifier_bytes(di: int, order: IdentifierOrder) -> bytes:
    hi, lo = di >> 8, di & 0xFF
    return bytes([hi, lo]) if order == "90 1F" else bytes([lo, hi])


def read_request(meter_type: int, address: Address, di: int, ser: int, order: IdentifierOrder) -> Frame:
    """Read data: C = 0x01, DATA = identifier + SER."""
    return Frame(meter_type, address, READ_DATA, identifier_bytes(di, order) + bytes([ser & 0xFF]))


def read_address_request(meter_type: int, ser: int, order: IdentifierOrder) -> Frame:
    """Read address (commissioning, one meter on the line): wildcard address, C = 0x03."""
    return Frame(
        meter_type, BROADCAST, READ_ADDRESS, identifier_bytes(DI_READ_ADDRESS, order) + bytes([ser & 0xFF])
    )


def decode_frame(raw: bytes) -> Frame:
    """One frame from ``raw`` (wake-up bytes allowed in front); raises :class:`FrameError`."""
    start = _start_of(raw)
    body = raw[start:]
    if len(body) < HEADER + 2:
        raise FrameError(f"{len(body)} bytes from the start byte, a frame has at least {HEADER + 2}")
    length = body[10]
    if len(body) != HEADER + length + 2:
        raise FrameError(
            f"L = {length} needs {HEADER + length + 2} bytes from the start byte, got {len(body)}"
        )
    if body[-1] != END:
        raise FrameError(f"end byte is {body[-1]:02X}, not 16")
    if checksum(body[:-2]) != body[-2]:
        raise ChecksumError(f"checksum is {body[-2]:02X}, the bytes sum to {checksum(body[:-2]):02X}")
    return Frame(body[1], Address(bytes(body[2:9])), body[9], bytes(body[HEADER:-2]))


def _start_of(raw: bytes) -> int:
    for i, byte in enumerate(raw[: MAX_SKIP + 1]):
        if byte == START:
            return i
        if byte != WAKE:
            raise FrameError(f"byte {i} is {byte:02X}: neither a wake-up byte (FE) nor the start (68)")
    raise FrameError(f"no start byte (68) within the first {MAX_SKIP + 1} bytes")


async def read_answer(read: ReadExactly) -> bytes:
    """The :data:`~drivers.line.contract.AnswerReader` of CJ/T 188: skip FE, read one frame."""
    for _ in range(MAX_SKIP + 1):
        first = await read(1)
        if first[0] == START:
            break
        if first[0] != WAKE:
            raise FrameError(f"answer starts with {first[0]:02X}: neither a wake-up byte (FE) nor 68")
    else:
        raise FrameError(f"no start byte (68) within {MAX_SKIP + 1} bytes")
    header = first + await read(HEADER - 1)
    rest = await read(header[10] + 2)
    return header + rest
