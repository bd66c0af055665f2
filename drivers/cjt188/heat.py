"""The heat meter's metering data (identifier 90 1F, meter type 0x20 / 0x21).

The answer's DATA is the identifier (2 bytes), SER, then 43 bytes (L = 0x2E = 46):

======  =====  ============================  =============  =========================
offset  bytes  field                         format         puhui quantity (unit)
======  =====  ============================  =============  =========================
0       4 + 1  cumulative cooling energy     XXXXXX.XX + u  cooling_energy (kWh)
5       4 + 1  cumulative heat energy        XXXXXX.XX + u  heat_energy (kWh)
10      4 + 1  heat power                    XXXXXX.XX + u  power (W)
15      4 + 1  flow rate                     XXXX.XXXX + u  flow_rate (L/h)
20      4 + 1  cumulative volume             XXXXXX.XX + u  volume (m3)
25      3      supply (flow) temperature     XXXX.XX degC   flow_temperature (degC)
28      3      return temperature            XXXX.XX degC   return_temperature (degC)
31      3      accumulated working time      XXXXXX h       operating_hours (h)
34      7      real time                     YYYYMMDDhhmmss (information, not a sample)
41      2      status ST1 ST2                bits           status (info)
======  =====  ============================  =============  =========================

Every multi-byte BCD field is sent least significant byte first, the real time too
(ss mm hh DD MM YY YY). A field with non-BCD digits decodes to ``Invalid("not_bcd")``
(all FF: ``Invalid("not_implemented")``, the usual "not measured" fill); a unit code that
is not in the table, or of the wrong kind, to ``Invalid("unknown_unit")``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from drivers.cjt188.bcd import NotBcd, bcd_decimal, bcd_to_int, decimal_bcd
from drivers.cjt188.errors import LayoutError
from drivers.cjt188.units import UnitKind, unit_of
from drivers.contract import Invalid

BLOCK_SIZE = 43  # after identifier and SER
UNIT_FIELDS: tuple[tuple[str, int, int, UnitKind], ...] = (  # name, offset, decimals, kind
    ("cooling_energy", 0, 2, "energy"),
    ("heat_energy", 5, 2, "energy"),
    ("power", 10, 2, "power"),
    ("flow_rate", 15, 4, "flow"),
    ("volume", 20, 2, "volume"),
)
PLAIN_FIELDS: tuple[tuple[str, int, int], ...] = (  # name, offset, decimals (3 bytes each)
    ("flow_temperature", 25, 2),
    ("return_temperature", 28, 2),
    ("operating_hours", 31, 0),
)
TIME_OFFSET, STATUS_OFFSET = 34, 41
VALVE = {0b00: "open", 0b01: "closed", 0b10: "reserved", 0b11: "abnormal"}

Value = float | Invalid


@dataclass(frozen=True, slots=True)
class Status:
    """ST1 (first byte): D0-D1 valve (00 open, 01 closed, 11 abnormal), D2 battery low;
    ST1 D3-D7 and ST2 are manufacturer-defined and kept raw."""

    st1: int
    st2: int

    @property
    def word(self) -> int:
        """ST1 | ST2 << 8, the ``status`` sample."""
        return self.st1 | self.st2 << 8

    @property
    def valve(self) -> str:
        return VALVE[self.st1 & 0b11]

    @property
    def battery_low(self) -> bool:
        return bool(self.st1 & 0b100)

    def describe(self) -> str:
        flags = [f"valve {self.valve}"] + (["battery low"] if self.battery_low else [])
        return f"ST1={self.st1:02X} ST2={self.st2:02X} ({', '.join(flags)})"


@dataclass(frozen=True, slots=True)
class HeatData:
    """One decoded 90 1F block: values in puhui's units, the meter's clock, status."""

    values: Mapping[str, Value]
    meter_time: dt.datetime | Invalid
    status: Status


def decode_heat_block(block: bytes) -> HeatData:
    """Decode the 43 bytes after identifier and SER; raises :class:`LayoutError` on length."""
    if len(block) != BLOCK_SIZE:
        raise LayoutError(f"heat meter data of {len(block)} bytes, the 90 1F layout has {BLOCK_SIZE}")
    values: dict[str, Value] = {}
    for name, off, decimals, kind in UNIT_FIELDS:
        values[name] = _with_unit(block[off : off + 4], block[off + 4], decimals, kind)
    for name, off, decimals in PLAIN_FIELDS:
        number = _number(block[off : off + 3], decimals)
        values[name] = number if isinstance(number, Invalid) else float(number)
    status = Status(block[STATUS_OFFSET], block[STATUS_OFFSET + 1])
    return HeatData(values, _meter_time(block[TIME_OFFSET:STATUS_OFFSET]), status)


def _number(raw: bytes, decimals: int) -> Decimal | Invalid:
    if all(b == 0xFF for b in raw):
        return Invalid("not_implemented", f"{raw.hex(' ').upper()} (no value)")
    try:
        return bcd_decimal(raw, decimals)
    except NotBcd as exc:
        return Invalid("not_bcd", str(exc))


def _with_unit(raw: bytes, code: int, decimals: int, kind: UnitKind) -> Value:
    number = _number(raw, decimals)
    if isinstance(number, Invalid):
        return number
    unit = unit_of(code, kind)
    if isinstance(unit, str):
        return Invalid("unknown_unit", unit)
    return float(unit.convert(Fraction(number)))


def _meter_time(raw: bytes) -> dt.datetime | Invalid:
    try:
        digits = f"{bcd_to_int(raw):014d}"  # YYYYMMDDhhmmss
        return dt.datetime.strptime(digits, "%Y%m%d%H%M%S")
    except NotBcd as exc:
        return Invalid("not_bcd", str(exc))
    except ValueError as exc:
        return Invalid("not_bcd", f"{raw.hex(' ').upper()} is not a date and time: {exc}")


# -- encoding (tests and tools; the simulator has its own) ----------------------------------


@dataclass(frozen=True, slots=True)
class HeatFields:
    """What a heat meter shows, in its own units (for building frames)."""

    cooling: tuple[Decimal, int]
    heat: tuple[Decimal, int]
    power: tuple[Decimal, int]
    flow: tuple[Decimal, int]
    volume: tuple[Decimal, int]
    supply_c: Decimal
    return_c: Decimal
    hours: int
    time: dt.datetime
    st1: int = 0
    st2: int = 0


def encode_heat_block(f: HeatFields) -> bytes:
    """The 43 bytes of a 90 1F block; ValueError if a value does not fit its format."""
    out = bytearray()
    for (value, code), (_, _, decimals, _) in zip(
        (f.cooling, f.heat, f.power, f.flow, f.volume), UNIT_FIELDS, strict=True
    ):
        out += decimal_bcd(value, 4, decimals) + bytes([code])
    out += decimal_bcd(f.supply_c, 3, 2) + decimal_bcd(f.return_c, 3, 2) + decimal_bcd(Decimal(f.hours), 3, 0)
    out += decimal_bcd(Decimal(f.time.strftime("%Y%m%d%H%M%S")), 7, 0)
    return bytes(out + bytes([f.st1, f.st2]))
