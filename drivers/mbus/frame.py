"""The EN 13757-2 link layer a master needs, written here (see README.md, "Where each part
comes from"):

- single character ``E5``: the acknowledge of SND_NKE and SND_UD;
- short frame ``10 C A CS 16``: SND_NKE (C = 40), REQ_UD2 (C = 5B; 7B with FCB set);
- long frame ``68 L L 68 C A CI DATA CS 16``: SND_UD (C = 53) from the master, RSP_UD
  (C = 08, with ACD 20 / DFC 10 bits) from the meter. L counts C, A, CI and DATA; CS is
  the sum of the same bytes (of C and A in a short frame) modulo 256.

A is the primary address 0-250; 253 (FD) addresses the meter selected by its secondary
address (SND_UD with CI = 52), 254 and 255 are broadcasts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drivers.line.contract import ReadExactly
from drivers.mbus.errors import ChecksumError, FrameError

ACK, SHORT_START, LONG_START, END = 0xE5, 0x10, 0x68, 0x16
SND_NKE, SND_UD, REQ_UD2, RSP_UD = 0x40, 0x53, 0x5B, 0x08
FCB = 0x20  # frame count bit of a master's frame
ANSWER_FLAGS = 0x30  # ACD and DFC of a meter's frame: not part of its function
SELECTED = 0xFD  # the address of the meter selected by secondary address
BROADCAST_REPLY, BROADCAST = 0xFE, 0xFF
MAX_PRIMARY = 250
CI_SELECT = 0x52  # SND_UD: select by secondary address
CI_VARIABLE = 0x72  # RSP_UD: variable data structure, 12-byte header, LSB first
SECONDARY = re.compile(r"^[0-9F]{8}([0-9A-F]{8})?$")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def short_frame(control: int, address: int) -> bytes:
    """``10 C A CS 16``."""
    return bytes([SHORT_START, control, address, checksum(bytes([control, address])), END])


@dataclass(frozen=True, slots=True)
class LongFrame:
    """A long frame without its framing bytes."""

    control: int
    address: int
    ci: int
    data: bytes = b""

    def encode(self) -> bytes:
        body = bytes([self.control, self.address, self.ci]) + self.data
        if len(body) > 0xFF:
            raise ValueError(f"C, A, CI and {len(self.data)} data bytes do not fit L")
        return bytes([LONG_START, len(body), len(body), LONG_START]) + body + bytes([checksum(body), END])

    @property
    def function(self) -> int:
        """The C field without a meter's ACD and DFC bits."""
        return self.control & ~ANSWER_FLAGS & 0xFF


@dataclass(frozen=True, slots=True)
class SecondaryAddress:
    """A secondary address as mbus tools print it: identification number (8 digits, ``F``
    a wildcard digit), then optionally manufacturer (2 bytes as sent), version, medium as
    hex (``FFFF`` / ``FF`` match any): ``12345678`` or ``123456782D2C0104``."""

    text: str

    def __post_init__(self) -> None:
        if not SECONDARY.match(self.text):
            raise ValueError(
                f"{self.text!r} is not a secondary address: 8 digits (F = any), then optionally "
                "8 hex digits of manufacturer, version and medium, e.g. '12345678' or '123456782D2C0104'"
            )

    @property
    def full(self) -> str:
        return self.text if len(self.text) == 16 else self.text + "FFFFFFFF"

    def select_data(self) -> bytes:
        """The 8 data bytes of the selection SND_UD: identification low byte first, then
        manufacturer, version and medium as written."""
        ident = bytes.fromhex(self.full[:8])[::-1]
        return ident + bytes.fromhex(self.full[8:])

    def matches(self, identification: bytes, rest: bytes) -> bool:
        """Whether a meter with header fields ``identification`` (4 bytes as sent) and
        ``rest`` (manufacturer, version, medium: 4 bytes as sent) is selected by this."""
        want = self.full
        ident = identification[::-1].hex().upper()
        if any(w not in ("F", g) for w, g in zip(want[:8], ident, strict=True)):
            return False
        got = rest.hex().upper()
        spans = ((8, 12), (12, 14), (14, 16))
        return all(want[a:b] in ("F" * (b - a), got[a - 8 : b - 8]) for a, b in spans)


def select_frame(address: SecondaryAddress) -> LongFrame:
    """SND_UD to address FD with CI 52: select one meter by its secondary address."""
    return LongFrame(SND_UD, SELECTED, CI_SELECT, address.select_data())


def decode_answer(raw: bytes) -> LongFrame | None:
    """A meter's answer: None for the single character E5, else the long frame; raises
    :class:`FrameError` (:class:`ChecksumError`) for anything else."""
    if raw == bytes([ACK]):
        return None
    if len(raw) < 9 or raw[0] != LONG_START:
        raise FrameError(f"{len(raw)} byte(s) {raw[:12].hex(' ').upper()}: not E5 nor a long frame")
    length = raw[1]
    if raw[2] != length or raw[3] != LONG_START:
        raise FrameError(f"long frame head {raw[:4].hex(' ').upper()}: L twice and 68 expected")
    if length < 3:
        raise FrameError(f"L = {length}: a long frame has at least C, A and CI")
    if len(raw) != length + 6:
        raise FrameError(f"L = {length} needs {length + 6} bytes, got {len(raw)}")
    if raw[-1] != END:
        raise FrameError(f"end byte is {raw[-1]:02X}, not 16")
    body = raw[4:-2]
    if checksum(body) != raw[-2]:
        raise ChecksumError(f"checksum is {raw[-2]:02X}, the bytes sum to {checksum(body):02X}")
    return LongFrame(body[0], body[1], body[2], bytes(body[3:]))


async def read_answer(read: ReadExactly) -> bytes:
    """The :data:`~drivers.line.contract.AnswerReader` of M-Bus: E5, or one long frame."""
    first = await read(1)
    if first[0] == ACK:
        return first
    if first[0] != LONG_START:
        raise FrameError(f"answer starts with {first[0]:02X}: neither E5 nor 68")
    head = first + await read(3)
    if head[1] != head[2] or head[3] != LONG_START:
        raise FrameError(f"long frame head {head.hex(' ').upper()}: L twice and 68 expected")
    return head + await read(head[1] + 2)
