"""The DL/T 645-2007 data identifiers a metering chain reads, and their BCD formats.

Values are BCD, least significant byte first (DL/T 645-2007, appendix A, "数据格式").
Signed quantities (current, power) carry the sign in the top bit of the most significant
byte. A nibble above 9 (meters fill values they do not have with FF or EE) makes the value
:class:`~drivers.contract.Invalid` ("not_bcd"), never a number.

Identifiers (DI3 DI2 DI1 DI0; DI1 is the tariff, 00 = total; DI0 the settlement day, 00 =
current): appendix A.1 (energy) and A.3 (variables), A.5 (parameters: date and time).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from drivers.contract import Invalid

Value = float | Invalid
Kind = Literal["counter", "gauge", "info"]
CHINA = dt.timezone(dt.timedelta(hours=8), "CST")  # meters keep Beijing time


@dataclass(frozen=True, slots=True)
class BcdFormat:
    """``size`` bytes of BCD with ``decimals`` digits after the point, e.g. XXXXXX.XX = (4, 2)."""

    size: int
    decimals: int
    signed: bool = False

    def decode(self, raw: bytes) -> Value:
        if len(raw) != self.size:
            return Invalid("not_bcd", f"{len(raw)} bytes, {self.size} expected")
        negative = self.signed and bool(raw[-1] & 0x80)
        body = raw[:-1] + bytes([raw[-1] & 0x7F]) if self.signed else raw
        digits = bcd_digits(body)
        if digits is None:
            return Invalid("not_bcd", raw.hex(" "))
        value: float = digits / 10**self.decimals
        return -value if negative else value

    def encode(self, value: float) -> bytes:
        """The inverse of :meth:`decode` (simulators, tests); raises if it does not fit."""
        scaled = round(abs(value) * 10**self.decimals)
        digits = 2 * self.size
        limit = 8 * 10 ** (digits - 1) if self.signed else 10**digits  # the sign bit leaves the top digit 0-7
        if scaled >= limit:
            raise ValueError(f"{value} does not fit {self.size} BCD bytes with {self.decimals} decimals")
        raw = bytearray(int(f"{scaled:0{digits}d}"[i : i + 2], 16) for i in range(0, digits, 2))
        raw.reverse()
        if self.signed and value < 0 and scaled:
            raw[-1] |= 0x80
        return bytes(raw)


def bcd_digits(raw: bytes) -> int | None:
    """The number that BCD ``raw`` (least significant byte first) holds; None if not BCD."""
    value = 0
    for b in reversed(raw):
        high, low = b >> 4, b & 0x0F
        if high > 9 or low > 9:
            return None
        value = value * 100 + high * 10 + low
    return value


ENERGY = BcdFormat(4, 2)  # XXXXXX.XX kWh
VOLTAGE = BcdFormat(2, 1)  # XXX.X V
CURRENT = BcdFormat(3, 3, signed=True)  # XXX.XXX A
POWER = BcdFormat(3, 4, signed=True)  # XX.XXXX kW


@dataclass(frozen=True, slots=True)
class Field:
    """One quantity an identifier's answer carries, at ``offset`` in its value bytes."""

    quantity: str
    unit: str
    kind: Kind
    offset: int
    format: BcdFormat


Decoder = Callable[[Sequence[bytes]], dict[str, Value]]


@dataclass(frozen=True, slots=True)
class DataItem:
    """What a meter config names in ``read:``: the identifiers read and what they give."""

    name: str
    dis: tuple[int, ...]
    fields: tuple[Field, ...]
    group: str
    source: str  # where in DL/T 645-2007 the identifier and format come from
    decoder: Decoder | None = None  # for items whose values combine identifiers

    def decode(self, values: Sequence[bytes]) -> dict[str, Value]:
        if self.decoder is not None:
            return self.decoder(values)
        raw = values[0]
        out: dict[str, Value] = {}
        for f in self.fields:
            part = raw[f.offset : f.offset + f.format.size]
            out[f.quantity] = f.format.decode(part)
        return out


def _one(
    name: str, di: int, quantity: str, unit: str, kind: Kind, fmt: BcdFormat, group: str, src: str
) -> DataItem:
    return DataItem(name, (di,), (Field(quantity, unit, kind, 0, fmt),), group, src)


def _block(name: str, di: int, fields: Sequence[tuple[str, str]], fmt: BcdFormat, src: str) -> DataItem:
    parts = tuple(Field(q, unit, "gauge", i * fmt.size, fmt) for i, (q, unit) in enumerate(fields))
    return DataItem(name, (di,), parts, "fast", src)


def meter_time(values: Sequence[bytes]) -> dict[str, Value]:
    """04000101 (YYMMDDWW, WW first) and 04000102 (hhmmss, ss first) -> POSIX seconds."""
    date, time = values
    digits = (
        [bcd_digits(bytes([b])) for b in (*date[1:4], *time[:3])] if len(date) == 4 and len(time) == 3 else []
    )
    if len(digits) != 6 or any(d is None for d in digits):
        return {"meter_time": Invalid("not_bcd", f"{date.hex(' ')} / {time.hex(' ')}")}
    day, month, year, second, minute, hour = (int(d or 0) for d in digits)
    try:
        when = dt.datetime(2000 + year, month, day, hour, minute, second, tzinfo=CHINA)
    except ValueError as exc:
        return {"meter_time": Invalid("not_bcd", f"not a date and time ({exc})")}
    return {"meter_time": when.timestamp()}


_A1 = "DL/T 645-2007 A.1 (energy), XXXXXX.XX kWh, 4 bytes"
_A3V = "DL/T 645-2007 A.3 (variables), voltage XXX.X V, 2 bytes"
_A3I = "DL/T 645-2007 A.3 (variables), current XXX.XXX A, 3 bytes, sign in the top bit"
_A3P = "DL/T 645-2007 A.3 (variables), active power XX.XXXX kW, 3 bytes, sign in the top bit"
_PHASES = ("l1", "l2", "l3")

ITEMS: dict[str, DataItem] = {
    i.name: i
    for i in (
        _one("energy_combined", 0x00000000, "energy_combined", "kWh", "counter", ENERGY, "fast", _A1),
        # the combined block 0000FF00 answers total then each tariff; the total is the first 4 bytes
        DataItem(
            "energy_combined_block",
            (0x0000FF00,),
            (Field("energy_combined", "kWh", "counter", 0, ENERGY),),
            "fast",
            _A1 + "; block: total, tariff 1..n",
        ),
        _one("energy_import", 0x00010000, "energy_import", "kWh", "counter", ENERGY, "fast", _A1),
        _one("energy_export", 0x00020000, "energy_export", "kWh", "counter", ENERGY, "fast", _A1),
        _one("power", 0x02030000, "power", "kW", "gauge", POWER, "fast", _A3P),
        *(
            _one(f"power_{p}", 0x02030000 + (n << 8), f"power_{p}", "kW", "gauge", POWER, "fast", _A3P)
            for n, p in enumerate(_PHASES, 1)
        ),
        *(
            _one(f"voltage_{p}", 0x02010000 + (n << 8), f"voltage_{p}", "V", "gauge", VOLTAGE, "fast", _A3V)
            for n, p in enumerate(_PHASES, 1)
        ),
        *(
            _one(f"current_{p}", 0x02020000 + (n << 8), f"current_{p}", "A", "gauge", CURRENT, "fast", _A3I)
            for n, p in enumerate(_PHASES, 1)
        ),
        _block("voltages", 0x0201FF00, [(f"voltage_{p}", "V") for p in _PHASES], VOLTAGE, _A3V + "; A, B, C"),
        _block("currents", 0x0202FF00, [(f"current_{p}", "A") for p in _PHASES], CURRENT, _A3I + "; A, B, C"),
        _block(
            "powers",
            0x0203FF00,
            [("power", "kW")] + [(f"power_{p}", "kW") for p in _PHASES],
            POWER,
            _A3P + "; total, A, B, C",
        ),
        DataItem(
            "meter_time",
            (0x04000101, 0x04000102),
            (Field("meter_time", "s", "info", 0, BcdFormat(4, 0)),),
            "slow",
            "DL/T 645-2007 A.5: 04000101 date YYMMDDWW, 04000102 time hhmmss (Beijing time)",
            decoder=meter_time,
        ),
    )
}
DEFAULT_READ = ("energy_import", "energy_export", "power")


def item_quantities(items: Sequence[DataItem]) -> Mapping[str, Field]:
    """quantity -> its field, over ``items``."""
    return {f.quantity: f for item in items for f in item.fields}
