"""Register encodings: big-endian bytes and words, as the simulated devices send them."""

from __future__ import annotations

import math
import struct

NOT_IMPL_U16 = 0xFFFF
NOT_IMPL_I16 = 0x8000
NOT_IMPL_SF = 0x8000
NOT_IMPL_ACC32 = [0, 0]
NOT_IMPL_U32 = [0xFFFF, 0xFFFF]


def _words(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def f32(value: float) -> list[int]:
    """IEEE-754 single, big-endian words (ABCD). Out-of-range values saturate to ±inf."""
    if math.isfinite(value) and abs(value) > 3.4e38:
        value = math.copysign(math.inf, value)
    return _words(struct.pack(">f", value))


def f64(value: float) -> list[int]:
    return _words(struct.pack(">d", value))


def u16(value: int) -> list[int]:
    return [value & 0xFFFF]


def i16(value: int) -> list[int]:
    return [max(-32767, min(32767, value)) & 0xFFFF]


def u32(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def i32(value: int) -> list[int]:
    return u32(max(-(2**31) + 1, min(2**31 - 1, value)))


def string(text: str, registers: int) -> list[int]:
    """ASCII padded with NULs to ``registers`` words."""
    raw = text.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\0")
    return _words(raw)


def scaled(value: float, sf: int) -> int:
    """Raw integer for ``value`` at SunSpec scale factor ``sf`` (value = raw * 10**sf)."""
    return round(value / 10.0**sf)


def u32_value(value: float, *, nan: list[int] | None = None) -> list[int]:
    """Unsigned 32-bit of a physical value already in register units (floored).

    NaN gives the not-implemented marker ``nan`` (default 0xFFFFFFFF); values beyond the
    range saturate at 0xFFFFFFFE, which is what an absurd reading looks like on the wire.
    """
    if math.isnan(value):
        return list(NOT_IMPL_U32 if nan is None else nan)
    return u32(min(0xFFFFFFFE, max(0, math.floor(value))))


def i16_value(value: float) -> list[int]:
    """Signed 16-bit, rounded; NaN gives 0x8000 (not implemented), saturates at ±32767."""
    if math.isnan(value):
        return [NOT_IMPL_I16]
    return i16(round(max(-32767.0, min(32767.0, value))))


def u16_value(value: float) -> list[int]:
    if math.isnan(value):
        return [NOT_IMPL_U16]
    return u16(round(max(0.0, min(65534.0, value))))


def i32_value(value: float) -> list[int]:
    if math.isnan(value):
        return [0x8000, 0x0000]
    return i32(round(max(-(2.0**31) + 1, min(2.0**31 - 1, value))))
