"""A heat meter's RSP_UD (variable data structure) as puhui's quantities.

Which record is which quantity: the first record whose VIF is in the group below, with
function "instantaneous" (or "value during error state", which is flagged), storage
number 0, tariff 0 and subunit 0, and no VIFE other than a record error code. Records of
other storage numbers (due-day and monthly values), maxima, minima, tariffs and VIFEs that
change a record's meaning (FB / FD tables, "per hour", "only if negative"...) are not used.

=====================  ==========================  ========================  ===========
quantity               VIF group (pyMeterBus)      EN 13757-3 VIF            unit
=====================  ==========================  ========================  ===========
heat_energy            ENERGY_WH / ENERGY_J        0000 0nnn / 0000 1nnn     kWh
volume                 VOLUME                      0001 0nnn                 m3
power                  POWER_W / POWER_J_H         0010 1nnn / 0011 0nnn     W
flow_rate              VOLUME_FLOW (_EXT, _EXT_S)  0011 1nnn / 0100 xnnn     L/h
flow_temperature       FLOW_TEMPERATURE            0101 10nn                 degC
return_temperature     RETURN_TEMPERATURE          0101 11nn                 degC
=====================  ==========================  ========================  ===========

Flags: a status byte with an application error or busy (bits 1-0), a permanent (bit 3)
or temporary (bit 4) error makes every measured value ``Invalid("flagged")``: an error
flag never moves a counter. So does a record sent as "value during error state" or with
a record error VIFE (01-1F). Power low (bit 2) and the manufacturer's bits 5-7 are kept
in the ``status`` sample only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from drivers.contract import Invalid
from drivers.mbus._library import VIFUnit
from drivers.mbus.errors import UnknownVif
from drivers.mbus.records import Header, Record, Telegram, raw_number, vif_entry

Value = float | Invalid

# pyMeterBus VIF group -> (quantity, factor from the table's unit to puhui's)
GROUPS: dict[object, tuple[str, Fraction]] = {
    VIFUnit.ENERGY_WH: ("heat_energy", Fraction(1, 1000)),
    VIFUnit.ENERGY_J: ("heat_energy", Fraction(1, 3_600_000)),
    VIFUnit.VOLUME: ("volume", Fraction(1)),
    VIFUnit.POWER_W: ("power", Fraction(1)),
    VIFUnit.POWER_J_H: ("power", Fraction(1, 3600)),
    VIFUnit.VOLUME_FLOW: ("flow_rate", Fraction(1000)),
    VIFUnit.VOLUME_FLOW_EXT: ("flow_rate", Fraction(60_000)),
    VIFUnit.VOLUME_FLOW_EXT_S: ("flow_rate", Fraction(3_600_000)),
    VIFUnit.FLOW_TEMPERATURE: ("flow_temperature", Fraction(1)),
    VIFUnit.RETURN_TEMPERATURE: ("return_temperature", Fraction(1)),
}
MEASURED = tuple(dict.fromkeys(q for q, _ in GROUPS.values()))
DATE_TIME_VIF, FABRICATION_VIF = 0x6D, 0x78
APPLICATION = {0b00: "ok", 0b01: "busy", 0b10: "error", 0b11: "abnormal"}
RECORD_ERRORS = {
    0x01: "too many DIFEs", 0x02: "storage number not implemented", 0x03: "unit number not implemented",
    0x04: "tariff number not implemented", 0x05: "function not implemented",
    0x06: "data class not implemented", 0x07: "data size not implemented", 0x0B: "too many VIFEs",
    0x0C: "illegal VIF group", 0x0D: "illegal VIF exponent", 0x0E: "VIF/DIF mismatch",
    0x0F: "unimplemented action", 0x15: "no data available", 0x16: "data overflow",
    0x17: "data underflow", 0x18: "data error", 0x1C: "premature end of record",
}  # fmt: skip
MEDIA = {0x04: "heat (outlet)", 0x0C: "heat (inlet)", 0x0D: "heat / cooling", 0x0A: "cooling (outlet)",
         0x0B: "cooling (inlet)", 0x07: "water", 0x02: "electricity", 0x03: "gas"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Status:
    """The header's status byte (EN 13757-3): bits 1-0 application, 2 power low,
    3 permanent error, 4 temporary error, 7-5 manufacturer-specific."""

    byte: int

    @property
    def application(self) -> str:
        return APPLICATION[self.byte & 0b11]

    @property
    def power_low(self) -> bool:
        return bool(self.byte & 0x04)

    @property
    def permanent_error(self) -> bool:
        return bool(self.byte & 0x08)

    @property
    def temporary_error(self) -> bool:
        return bool(self.byte & 0x10)

    @property
    def error(self) -> bool:
        """Whether the meter says its values cannot be trusted."""
        return self.application != "ok" or self.permanent_error or self.temporary_error

    def describe(self) -> str:
        flags = [f"application {self.application}"] if self.application != "ok" else []
        flags += ["power low"] * self.power_low + ["permanent error"] * self.permanent_error
        flags += ["temporary error"] * self.temporary_error
        flags += [f"manufacturer bits {self.byte >> 5:03b}"] if self.byte & 0xE0 else []
        return f"status {self.byte:02X} ({', '.join(flags) or 'no error'})"


@dataclass(frozen=True, slots=True)
class HeatData:
    """One decoded RSP_UD: values in puhui's units, the meter's clock, its identity, status."""

    values: Mapping[str, Value]
    meter_time: dt.datetime | Invalid | None  # None: no date-time record
    status: Status
    header: Header
    fabrication_number: str | None
    ignored: tuple[str, ...]  # records not used because their VIF is unknown
    more_records_follow: bool


def decode_heat(telegram: Telegram) -> HeatData:
    """The quantities of ``telegram`` (see the module docstring)."""
    status = Status(telegram.header.status)
    values: dict[str, Value] = {}
    ignored: list[str] = []
    meter_time: dt.datetime | Invalid | None = None
    fabrication: str | None = None
    for record in telegram.records:
        if not _current(record):
            continue
        if record.vif == DATE_TIME_VIF and record.dif & 0x0F == 0x04 and meter_time is None:
            meter_time = type_f(record.data)
            continue
        if record.vif == FABRICATION_VIF and fabrication is None:
            fabrication = record.data[::-1].hex().upper()
            continue
        try:
            quantity, value = _measured(record)
        except UnknownVif as exc:
            ignored.append(str(exc))
            continue
        if quantity is not None and quantity not in values:
            values[quantity] = value
    for quantity in MEASURED:
        if quantity not in values:
            values[quantity] = Invalid("not_implemented", f"the telegram has no {quantity} record")
        elif status.error and not isinstance(values[quantity], Invalid):
            values[quantity] = Invalid("flagged", status.describe())
    return HeatData(
        values, meter_time, status, telegram.header, fabrication, tuple(ignored), telegram.more_records_follow
    )


def _current(record: Record) -> bool:
    """Instantaneous (or error state) value of storage 0, tariff 0, subunit 0."""
    return record.function in (0, 3) and record.storage == 0 and record.tariff == 0 and record.subunit == 0


def _measured(record: Record) -> tuple[str | None, Value]:
    factor, _unit, group = vif_entry(record)
    target = GROUPS.get(group)
    if target is None:
        return None, Invalid("not_implemented")
    vifes = [v & 0x7F for v in record.vifes] if record.vif not in (0xFB, 0xFD) else [0x7F]
    if any(v > 0x1F for v in vifes):  # a VIFE that changes what the record is
        return None, Invalid("not_implemented")
    quantity, to_ours = target
    errors = [RECORD_ERRORS.get(v, f"record error {v:02X}") for v in vifes if v]
    if errors or record.function == 3:
        what = ", ".join(errors) or "value during error state"
        return quantity, Invalid("flagged", f"{record.describe()}: {what}")
    number = raw_number(record)
    if number is None:
        return quantity, Invalid("not_implemented", f"{record.describe()}: no number in the data field")
    if isinstance(number, Invalid):
        return quantity, number
    return quantity, float(number * factor * to_ours)


def type_f(data: bytes) -> dt.datetime | Invalid:
    """Date and time type F (4 bytes): minute (bit 7 IV: invalid), hour (bits 6-5 hundred
    years, bit 7 summer time), day (bits 7-5 year low bits), month (bits 7-4 year high)."""
    if data[0] & 0x80:
        return Invalid("flagged", f"time point {data.hex(' ').upper()} marked invalid (IV)")
    minute, hour, day, month = data[0] & 0x3F, data[1] & 0x1F, data[2] & 0x1F, data[3] & 0x0F
    year = (data[3] >> 4) << 3 | data[2] >> 5
    hundreds = data[1] >> 5 & 0x03
    # EN 13757-3:2013 counts centuries from 1900; meters without them send 0-80 for 2000-2080
    year += 1900 + 100 * hundreds if hundreds else (2000 if year <= 80 else 1900)
    try:
        return dt.datetime(year, month, day, hour, minute)
    except ValueError as exc:
        return Invalid("not_implemented", f"time point {data.hex(' ').upper()} is not a date ({exc})")
