"""Packed BCD as CJ/T 188 carries it: two digits a byte, least significant byte first.

A value ``XXXXXX.XX`` in 4 bytes is the 8-digit integer sent low byte first with the
decimal point implied: 1234.56 is ``56 34 12 00``. Digits above 9 are not a number: the
decoder says which, so the caller can turn the field into an ``Invalid``.
"""

from __future__ import annotations

from decimal import Decimal


class NotBcd(ValueError):
    """A byte string with a nibble above 9."""


def bcd_to_int(data: bytes) -> int:
    """The integer that ``data`` (packed BCD, low byte first) spells; raises :class:`NotBcd`."""
    value = 0
    for byte in reversed(data):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise NotBcd(f"{data.hex(' ').upper()} is not BCD (byte {byte:02X})")
        value = value * 100 + hi * 10 + lo
    return value


def int_to_bcd(value: int, size: int) -> bytes:
    """``value`` as ``size`` bytes of packed BCD, low byte first; raises ValueError if it does not fit."""
    if not 0 <= value < 100**size:
        raise ValueError(f"{value} does not fit {size} BCD bytes")
    out = bytearray()
    for _ in range(size):
        value, pair = divmod(value, 100)
        out.append((pair // 10) << 4 | pair % 10)
    return bytes(out)


def bcd_decimal(data: bytes, decimals: int) -> Decimal:
    """``data`` as a decimal number with ``decimals`` implied digits (exact)."""
    return Decimal(bcd_to_int(data)).scaleb(-decimals)


def decimal_bcd(value: Decimal, size: int, decimals: int) -> bytes:
    """The BCD bytes of ``value`` with ``decimals`` implied digits; ValueError if not exact."""
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than {decimals} decimals")
    return int_to_bcd(int(scaled), size)
