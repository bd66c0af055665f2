"""The EN 13757-3 variable data structure (CI = 72) split into header and records by
pyMeterBus, and each record's raw number checked and decoded here.

The header (12 bytes after CI): identification number (4 BCD bytes, low first),
manufacturer (2 bytes, three letters of 5 bits), version, medium, access number, status,
signature (2). Then data records, each ``DIF [DIFE...] VIF [VIFE...] data``:

- DIF: bit 7 extension, bit 6 storage number LSB, bits 5-4 function (00 instantaneous,
  01 maximum, 10 minimum, 11 value during error state), bits 3-0 data field (1-4, 6, 7:
  signed binary integer of 1-4, 6, 8 bytes; 5: 32-bit real; 9-C, E: BCD of 2-8, 12
  digits; 0 no data; D variable length; F special functions);
- DIFE: bit 7 extension, bit 6 subunit, bits 5-4 tariff, bits 3-0 storage number;
- VIF: bit 7 extension, bits 6-0 unit and decimal exponent (table in README.md).

pyMeterBus splits the records (DIF/DIFE/VIF/VIFE chains, the data field's length) and
holds the VIF table; a cut or malformed structure raises :class:`TelegramError`. Numbers
are checked here (BCD nibbles, NaN) and never scaled through floats: a value is the exact
integer (or the float's exact rational) times the exponent as a ``Fraction``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction

from drivers.contract import Invalid
from drivers.mbus._library import MBusError, TelegramBody, VIFTable
from drivers.mbus.errors import TelegramError, UnknownVif

HEADER_SIZE = 12
INTEGER_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 6: 6, 7: 8}  # DIF data field -> bytes
BCD_SIZES = {9: 1, 10: 2, 11: 3, 12: 4, 14: 6}
REAL = 5
MANUFACTURER_DATA, MORE_RECORDS = 0x0F, 0x1F
FIRST_EXTENSION, SECOND_EXTENSION = 0xFB, 0xFD


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed part of a variable data structure."""

    identification: bytes  # 4 bytes as sent (BCD, low byte first)
    manufacturer: bytes  # 2 bytes as sent
    version: int
    medium: int
    access: int
    status: int
    signature: bytes

    @property
    def id_digits(self) -> str:
        """The identification number as printed on the meter (8 digits)."""
        return self.identification[::-1].hex().upper()

    @property
    def manufacturer_code(self) -> str:
        """Three letters (EN 13757-3 / FLAG association): ``KAM``, ``SEN``."""
        value = int.from_bytes(self.manufacturer, "little")
        return "".join(chr((value >> shift & 0x1F) + 64) for shift in (10, 5, 0))

    @property
    def secondary_address(self) -> str:
        """As mbus tools print it: identification, manufacturer as sent, version, medium."""
        rest = self.manufacturer + bytes([self.version, self.medium])
        return self.id_digits + rest.hex().upper()


@dataclass(frozen=True, slots=True)
class Record:
    """One data record: its DIB and VIB bytes, data bytes (as sent), and what the DIB says."""

    dib: bytes
    vib: bytes
    data: bytes
    function: int  # 0 instantaneous, 1 maximum, 2 minimum, 3 value during error state
    storage: int
    tariff: int
    subunit: int

    @property
    def dif(self) -> int:
        return self.dib[0]

    @property
    def vif(self) -> int:
        return self.vib[0] if self.vib else -1

    @property
    def vifes(self) -> bytes:
        return self.vib[1:]

    def describe(self) -> str:
        return f"DIF {self.dib.hex(' ').upper()} VIF {self.vib.hex(' ').upper() or '-'}"


@dataclass(frozen=True, slots=True)
class Telegram:
    header: Header
    records: tuple[Record, ...]
    more_records_follow: bool  # DIF 1F: the meter has another telegram (not read)


def parse_variable_data(data: bytes) -> Telegram:
    """Header and records of the data after CI = 72; raises :class:`TelegramError`."""
    if len(data) < HEADER_SIZE:
        raise TelegramError(f"variable data of {len(data)} bytes has no 12-byte header")
    body = TelegramBody()
    try:
        body.load([0x72, *data])
        parsed = list(body.bodyPayload.records)
    except (MBusError, IndexError) as exc:  # pyMeterBus runs off the end of a cut record
        raise TelegramError(f"records cannot be split ({type(exc).__name__}: {exc})") from exc
    header = Header(
        bytes(data[0:4]), bytes(data[4:6]), data[6], data[7], data[8], data[9], bytes(data[10:12])
    )
    records, more = [], False
    for n, rec in enumerate(parsed):
        dib = bytes(rec.dib.parts)
        if dib[0] == MORE_RECORDS:
            more = True
            continue
        if dib[0] == MANUFACTURER_DATA:
            continue
        records.append(_record(n, rec, dib))
    return Telegram(header, tuple(records), more)


def _record(n: int, rec: object, dib: bytes) -> Record:
    vib = bytes(rec.vib.parts)  # type: ignore[attr-defined]
    data = bytes(rec.dataField.parts)  # type: ignore[attr-defined]
    storage, tariff, subunit = rec.dib.parse_dife()  # type: ignore[attr-defined]
    record = Record(dib, vib, data, dib[0] >> 4 & 0x03, storage, tariff or 0, subunit or 0)
    if not vib:
        raise TelegramError(f"record {n} ({record.describe()}) has no VIF: the telegram is cut")
    size = data_size(dib[0])
    if size is not None and len(data) != size:
        raise TelegramError(
            f"record {n} ({record.describe()}) needs {size} data bytes, the telegram has {len(data)}"
        )
    return record


def data_size(dif: int) -> int | None:
    """Bytes of a numeric data field (None: no data, variable length or special)."""
    field = dif & 0x0F
    return INTEGER_SIZES.get(field) or BCD_SIZES.get(field) or (4 if field == REAL else None)


def vif_entry(record: Record) -> tuple[Fraction, str, object]:
    """pyMeterBus's VIF table entry of a record: exact factor, unit, VIF group; raises
    :class:`UnknownVif` for a VIF (or FB / FD extension code) the table does not define."""
    vif = record.vif
    if vif in (FIRST_EXTENSION, SECOND_EXTENSION):
        if not record.vifes:
            raise UnknownVif(f"{record.describe()}: extension table VIF without VIFE")
        code = (record.vifes[0] & 0x7F) | (0x200 if vif == FIRST_EXTENSION else 0x100)
    else:
        code = vif & 0x7F
    entry = VIFTable.lut.get(code)
    if entry is None:
        raise UnknownVif(f"{record.describe()}: VIF code {code:03X} is not in the EN 13757-3 tables")
    mult, unit, group = entry
    return Fraction(repr(float(mult))), str(getattr(unit, "value", unit)), group


def raw_number(record: Record) -> Fraction | Invalid | None:
    """The record's number before its VIF's exponent: exact, ``Invalid`` for non-BCD digits
    or a NaN / infinite real, None when the data field holds no number."""
    field, data = record.dif & 0x0F, record.data
    if field in INTEGER_SIZES:
        return Fraction(int.from_bytes(data, "little", signed=True))
    if field in BCD_SIZES:
        return _bcd(data)
    if field == REAL:
        (value,) = struct.unpack("<f", data)
        if math.isnan(value):
            return Invalid("nan", f"{record.describe()}: {data.hex(' ').upper()}")
        if math.isinf(value):
            return Invalid("infinite", f"{record.describe()}: {data.hex(' ').upper()}")
        return Fraction(value)
    return None


def _bcd(data: bytes) -> Fraction | Invalid:
    """Packed BCD, low byte first; a top nibble F makes the value negative (EN 13757-3)."""
    digits = data[::-1].hex().upper()
    negative = digits[0] == "F"
    if negative:
        digits = digits[1:]
    if not digits.isdigit():
        return Invalid("not_bcd", f"{data.hex(' ').upper()} is not BCD")
    return Fraction(-int(digits) if negative else int(digits))
