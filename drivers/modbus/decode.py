"""Register decoding and encoding: types, byte/word orders, scale, not-implemented markers.

Registers are 16-bit words as the Modbus library returns them (each word's two bytes in
wire order, first byte = high byte). A field's value is made of 1, 2 or 4 words (or
``length`` words for a string).

Byte orders (letters name the bytes of the big-endian value, ``A`` the most significant):

=========  ===============  =======================  ============================
order      16-bit field     32-bit field (2 words)   64-bit field (4 words)
=========  ===============  =======================  ============================
``AB``     AB  big-endian   not allowed              not allowed
``BA``     BA  bytes swapped not allowed             not allowed
``ABCD``   AB               ABCD big-endian          ABCDEFGH big-endian
``DCBA``   BA               DCBA little-endian       HGFEDCBA little-endian
``BADC``   BA               BADC bytes swapped       BADCFEHG bytes swapped in each word
``CDAB``   AB               CDAB words swapped       GHEFCDAB word order reversed
=========  ===============  =======================  ============================

So each 4-letter order is two independent switches that apply to any width: *byte swap*
(swap the two bytes of every word: BA, DCBA, BADC) and *word swap* (reverse the order of
all the words: DCBA, CDAB). That is the usual (Telegraf) reading of the 64-bit orders.
A 16-bit field takes only the byte swap of a 4-letter order, so a profile can use one
order for all its fields. Strings honour only the byte swap (characters stay in word order).

Value = raw x ``scale`` x 10^sf, where ``sf`` is the value of the field named by
``scale_factor`` (a SunSpec ``sunssf`` register), if any. Numbers come back as ``float``
(64-bit counters above 2^53 lose their last digits; no meter gets there), strings as
``str``; a value that is not a number comes back as an :class:`Invalid` with the reason,
never as a number.

Bits: ``type: bit`` is one coil or discrete input (function 1 or 2), 0 or 1. A bit field
of a register (a status word, an alarm word) is an integer field with ``bit`` (the lowest
bit, 0 = least significant of the raw value) and ``bits`` (how many, default 1): value =
(raw >> bit) & (2^bits - 1), taken from the raw value as unsigned, after the marker check
(a status word that reads "not implemented" gives no bits), never scaled.

Not-implemented markers (``not_implemented``): ``"none"`` (default: only NaN/inf are
invalid), ``"sunspec"`` (int16 0x8000, uint16 0xFFFF, int32 0x80000000, uint32
0xFFFFFFFF, int64/uint64 likewise, sunssf -32768; an acc32/acc64 of 0 is a real 0, not a
marker, unlike pysunspec2), or an explicit list of raw integer values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.contract import Invalid
from drivers.errors import CodecError, RegisterCountError


class RegisterType(StrEnum):
    """How a field's words are read."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    ACC32 = "acc32"  # unsigned accumulator (SunSpec); 0 is a real reading
    ACC64 = "acc64"
    SUNSSF = "sunssf"  # SunSpec scale factor, signed 16-bit exponent
    STRING = "string"  # ASCII, NUL-padded, ``length`` registers
    BIT = "bit"  # one coil or discrete input (function 1 or 2): 0 or 1


class ByteOrder(StrEnum):
    """Byte and word order of a field; see the module docstring for the exact layout."""

    AB = "AB"
    BA = "BA"
    ABCD = "ABCD"
    DCBA = "DCBA"
    BADC = "BADC"
    CDAB = "CDAB"


Decoded = float | str | Invalid

_WIDTH: dict[RegisterType, int] = {
    RegisterType.INT16: 1,
    RegisterType.UINT16: 1,
    RegisterType.SUNSSF: 1,
    RegisterType.INT32: 2,
    RegisterType.UINT32: 2,
    RegisterType.FLOAT32: 2,
    RegisterType.ACC32: 2,
    RegisterType.INT64: 4,
    RegisterType.UINT64: 4,
    RegisterType.FLOAT64: 4,
    RegisterType.ACC64: 4,
    RegisterType.BIT: 1,
}
_FORMAT: dict[RegisterType, str] = {
    RegisterType.INT16: ">h",
    RegisterType.UINT16: ">H",
    RegisterType.SUNSSF: ">h",
    RegisterType.INT32: ">i",
    RegisterType.UINT32: ">I",
    RegisterType.FLOAT32: ">f",
    RegisterType.ACC32: ">I",
    RegisterType.INT64: ">q",
    RegisterType.UINT64: ">Q",
    RegisterType.FLOAT64: ">d",
    RegisterType.ACC64: ">Q",
    RegisterType.BIT: ">H",
}
_SUNSPEC_MARKER: dict[RegisterType, int] = {
    RegisterType.INT16: -0x8000,
    RegisterType.UINT16: 0xFFFF,
    RegisterType.SUNSSF: -0x8000,
    RegisterType.INT32: -0x8000_0000,
    RegisterType.UINT32: 0xFFFF_FFFF,
    RegisterType.INT64: -0x8000_0000_0000_0000,
    RegisterType.UINT64: 0xFFFF_FFFF_FFFF_FFFF,
}
_BYTE_SWAP = frozenset({ByteOrder.BA, ByteOrder.DCBA, ByteOrder.BADC})
_WORD_SWAP = frozenset({ByteOrder.DCBA, ByteOrder.CDAB})
SIXTEEN_BIT_ORDERS = frozenset({ByteOrder.AB, ByteOrder.BA})
FLOAT_TYPES = frozenset({RegisterType.FLOAT32, RegisterType.FLOAT64})
NUMERIC_TYPES = tuple(t for t in RegisterType if t is not RegisterType.STRING)
# Integer types a bit field may be taken from (not scale factors, floats, strings, coils).
BIT_FIELD_TYPES = frozenset({
    RegisterType.INT16, RegisterType.UINT16, RegisterType.INT32, RegisterType.UINT32,
    RegisterType.INT64, RegisterType.UINT64,
})  # fmt: skip


def type_width(rtype: RegisterType) -> int:
    """Registers taken by a numeric type (strings: their ``length``)."""
    try:
        return _WIDTH[rtype]
    except KeyError:
        raise CodecError(f"{rtype.value} has no fixed width; give a length") from None


def orders_for(rtype: RegisterType) -> tuple[ByteOrder, ...]:
    """The distinct orders that make sense for a type (what :func:`probe` tries)."""
    if rtype is RegisterType.STRING or _WIDTH[rtype] == 1:
        return (ByteOrder.AB, ByteOrder.BA)
    return (ByteOrder.ABCD, ByteOrder.DCBA, ByteOrder.BADC, ByteOrder.CDAB)


class FieldFormat(BaseModel):
    """How one field's registers become a value (no address: see profiles for that)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: RegisterType
    order: ByteOrder = ByteOrder.ABCD
    length: int | None = Field(default=None, ge=1, le=125, description="registers, strings only")
    scale: float = Field(default=1.0, description="constant multiplier applied to the raw value")
    scale_factor: str | None = Field(default=None, description="name of a sunssf field: x 10^sf")
    not_implemented: Literal["none", "sunspec"] | tuple[int, ...] = "none"
    bit: int | None = Field(default=None, ge=0, le=63, description="bit field: its lowest bit (0 = LSB)")
    bits: int | None = Field(default=None, ge=1, le=64, description="bit field: its width (default 1)")

    @model_validator(mode="after")
    def _check_shape(self) -> FieldFormat:
        self._check_bits()
        is_string = self.type is RegisterType.STRING
        if is_string and self.length is None:
            raise ValueError("a string field needs a length (registers)")
        if not is_string and self.length is not None:
            raise ValueError(f"length is only for strings; {self.type.value} has a fixed width")
        if not is_string and _WIDTH[self.type] > 1 and self.order in SIXTEEN_BIT_ORDERS:
            raise ValueError(
                f"order {self.order.value} is for 16-bit fields; {self.type.value} needs "
                "ABCD, DCBA, BADC or CDAB"
            )
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError("scale must be a finite, non-zero number")
        return self

    def _check_bits(self) -> None:
        if self.bits is not None and self.bit is None:
            raise ValueError("bits (a width) needs bit (the lowest bit of the field)")
        unscaled = self.scale == 1.0 and self.scale_factor is None
        if self.type is RegisterType.BIT:
            if self.bit is not None:
                raise ValueError(
                    "type bit is a whole coil or discrete input; for a bit of a register give the "
                    "register's integer type and bit: N"
                )
            if not unscaled:
                raise ValueError("a coil or discrete input is not scaled (no scale, no scale_factor)")
            return
        if self.bit is None:
            return
        if self.type not in BIT_FIELD_TYPES:
            raise ValueError(f"a bit field is taken from an integer register, not {self.type.value}")
        top = self.bit + (self.bits or 1)
        if top > 16 * _WIDTH[self.type]:
            raise ValueError(f"bits {self.bit}..{top - 1} do not fit a {self.type.value}")
        if not unscaled:
            raise ValueError("a bit field is not scaled (no scale, no scale_factor)")

    @property
    def mask(self) -> int:
        """The bit field's mask after shifting (1 for a single bit)."""
        return (1 << (self.bits or 1)) - 1

    @property
    def registers(self) -> int:
        """Number of registers the field occupies."""
        return self.length if self.length is not None else _WIDTH[self.type]


_WORDS_BE = {n: struct.Struct(f">{n}H") for n in (1, 2, 4)}
_WORDS_LE = {n: struct.Struct(f"<{n}H") for n in (1, 2, 4)}
_VALUE = {t: struct.Struct(f) for t, f in _FORMAT.items()}


def _to_bytes(registers: Sequence[int], order: ByteOrder) -> bytes:
    words = list(registers)
    if order in _WORD_SWAP:
        words.reverse()
    n = len(words)
    packer = (_WORDS_LE if order in _BYTE_SWAP else _WORDS_BE).get(n) or struct.Struct(
        f"{'<' if order in _BYTE_SWAP else '>'}{n}H"
    )
    try:
        return packer.pack(*words)
    except struct.error as exc:
        raise CodecError(f"registers must be integers 0..65535, got {list(registers)}") from exc


def _from_bytes(raw: bytes, order: ByteOrder) -> list[int]:
    n = len(raw) // 2
    words = list((_WORDS_LE if order in _BYTE_SWAP else _WORDS_BE)[n].unpack(raw))
    if order in _WORD_SWAP:
        words.reverse()
    return words


def decode_raw(registers: Sequence[int], field: FieldFormat) -> int | float | str:
    """The raw value (before scale and marker checks). Raises :class:`RegisterCountError`."""
    if len(registers) != field.registers:
        raise RegisterCountError(
            f"{field.type.value} needs {field.registers} registers, got {len(registers)}"
        )
    if field.type is RegisterType.STRING:
        data = _to_bytes(registers, ByteOrder.BA if field.order in _BYTE_SWAP else ByteOrder.AB)
        return data.rstrip(b"\0").decode("latin-1")
    if field.type is RegisterType.BIT:
        if registers[0] not in (0, 1):
            raise CodecError(f"a coil or discrete input is 0 or 1, got {registers[0]}")
        return registers[0]
    value: int | float = _VALUE[field.type].unpack(_to_bytes(registers, field.order))[0]
    return value


def _marker(raw: int | float, field: FieldFormat) -> bool:
    policy = field.not_implemented
    if policy == "none":
        return False
    if policy == "sunspec":
        return _SUNSPEC_MARKER.get(field.type) == raw
    return raw in policy


def decode(registers: Sequence[int], field: FieldFormat, *, sf: float | Invalid | None = None) -> Decoded:
    """Decode one field's registers: a float, a string, or :class:`Invalid` with a reason.

    ``sf`` is the decoded value of the field's ``scale_factor`` register (required when the
    field has one). Raises :class:`RegisterCountError` on a wrong number of registers.
    """
    raw = decode_raw(registers, field)
    if isinstance(raw, str):
        return raw if raw.isascii() else Invalid("not_ascii", repr(raw))
    return finish(raw, field, sf)


def finish(raw: int | float, field: FieldFormat, sf: float | Invalid | None = None) -> Decoded:
    """A numeric raw value (:func:`decode_raw`'s) as :func:`decode` returns it: marker and
    NaN/inf checks, bit field, scale and scale factor."""
    if _marker(raw, field):
        return Invalid("not_implemented", f"raw {raw!r}")
    if isinstance(raw, float) and not math.isfinite(raw):
        return Invalid("nan" if math.isnan(raw) else "infinite")
    if field.bit is not None:
        unsigned = int(raw) & ((1 << (16 * field.registers)) - 1)
        return float((unsigned >> field.bit) & field.mask)
    return _scaled(raw, field, sf)


# SunSpec Information Model Specification, "sunssf": a signed power-of-ten exponent whose
# valid range is -10..10; anything else is a meter fault, not a scale (and 10.0 ** 32767
# would overflow).
SUNSSF_LIMIT = 10


def _scaled(raw: int | float, field: FieldFormat, sf: float | Invalid | None) -> Decoded:
    if field.type is RegisterType.SUNSSF:
        return float(raw)
    value = raw * field.scale
    if field.scale_factor is not None:
        if sf is None or isinstance(sf, Invalid):
            return Invalid("scale_factor", f"{field.scale_factor} is {'missing' if sf is None else sf}")
        if not -SUNSSF_LIMIT <= sf <= SUNSSF_LIMIT:
            return Invalid("scale_factor", f"{field.scale_factor} is {sf:g}, outside ±{SUNSSF_LIMIT}")
        value = value * 10.0 ** int(sf)
    value = float(value)
    if not math.isfinite(value):
        return Invalid("infinite", "after scaling")
    return value


def decode_fields(
    fields: Mapping[str, FieldFormat], registers: Mapping[str, Sequence[int]]
) -> dict[str, Decoded]:
    """Decode named fields, resolving ``scale_factor`` references among them by name.

    Fields whose registers are missing from ``registers`` are skipped; a field whose scale
    factor was not read decodes as ``Invalid("scale_factor")``.
    """
    out: dict[str, Decoded] = {}
    for name, field in fields.items():
        if field.type is RegisterType.SUNSSF and name in registers:
            out[name] = decode(registers[name], field)
    for name, field in fields.items():
        if name in out or name not in registers:
            continue
        sf = out.get(field.scale_factor) if field.scale_factor else None
        if isinstance(sf, str):
            sf = Invalid("scale_factor", f"{field.scale_factor} is not a number")
        out[name] = decode(registers[name], field, sf=sf)
    return out


def encode(value: float | str, field: FieldFormat, *, sf: int | None = None) -> list[int]:
    """Registers that :func:`decode` turns back into ``value`` (for tests, simulator, probe).

    Integer types round ``value / (scale x 10^sf)`` to the nearest integer; raises
    :class:`CodecError` when that does not fit the type or ``value`` has the wrong kind.
    """
    if field.type is RegisterType.STRING:
        if not isinstance(value, str):
            raise CodecError(f"a string field needs a str, got {value!r}")
        return _encode_string(value, field)
    if isinstance(value, str):
        raise CodecError(f"{field.type.value} needs a number, got {value!r}")
    if field.type is RegisterType.BIT:
        if value not in (0, 1):
            raise CodecError(f"a coil or discrete input is 0 or 1, not {value!r}")
        return [int(value)]
    if field.bit is not None:
        if value != int(value) or not 0 <= value <= field.mask:
            raise CodecError(f"{value!r} does not fit a bit field of {field.mask.bit_length()} bit(s)")
        return encode_raw(_signed(int(value) << field.bit, field), field)
    return encode_raw(_unscaled(value, field, sf), field)


def _signed(unsigned: int, field: FieldFormat) -> int:
    """The raw value of a signed type whose unsigned bit pattern is ``unsigned``."""
    width = 16 * field.registers
    signed = field.type in (RegisterType.INT16, RegisterType.INT32, RegisterType.INT64)
    return unsigned - (1 << width) if signed and unsigned >> (width - 1) else unsigned


def _unscaled(value: float, field: FieldFormat, sf: int | None) -> int | float:
    if field.type is RegisterType.SUNSSF:
        return int(value)
    divisor = field.scale * (10.0**sf if field.scale_factor is not None and sf is not None else 1.0)
    if field.scale_factor is not None and sf is None:
        raise CodecError(f"field scaled by {field.scale_factor} needs sf= to encode")
    raw = value / divisor if divisor != 1.0 else value
    if field.type in FLOAT_TYPES:
        return float(raw)
    if not math.isfinite(raw):
        raise CodecError(f"{value!r} cannot be stored in {field.type.value}")
    return round(raw)


def encode_raw(raw: int | float, field: FieldFormat) -> list[int]:
    """Registers holding the raw (unscaled) value in the field's type and order."""
    try:
        data = _VALUE[field.type].pack(raw)
    except (struct.error, OverflowError) as exc:
        raise CodecError(f"{raw!r} does not fit {field.type.value}") from exc
    return _from_bytes(data, field.order)


def _encode_string(text: str, field: FieldFormat) -> list[int]:
    size = 2 * field.registers
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise CodecError(f"{text!r} is not ASCII") from exc
    if len(data) > size:
        raise CodecError(f"{text!r} is longer than {size} bytes")
    order = ByteOrder.BA if field.order in _BYTE_SWAP else ByteOrder.AB
    return [_from_bytes(data.ljust(size, b"\0")[i : i + 2], order)[0] for i in range(0, size, 2)]


def not_implemented_registers(field: FieldFormat) -> list[int]:
    """The registers of the field's not-implemented marker (float: NaN), for simulators."""
    if field.type in FLOAT_TYPES:
        return encode_raw(math.nan, field)
    policy = field.not_implemented
    if policy == "sunspec" and field.type in _SUNSPEC_MARKER:
        return encode_raw(_SUNSPEC_MARKER[field.type], field)
    if isinstance(policy, tuple) and policy:
        return encode_raw(policy[0], field)
    raise CodecError(f"{field.type.value} with not_implemented={policy!r} has no marker")


@dataclass(frozen=True, slots=True)
class ProbeLine:
    """One way of reading a register block: where, as what, and what it gives."""

    address: int
    type: RegisterType
    order: ByteOrder
    value: float | str | Invalid
    plausible: bool

    def __str__(self) -> str:
        mark = "*" if self.plausible else " "
        return f"{mark} {self.address:5d} {self.type.value:<8} {self.order.value:<4} {self.value}"


_PROBE_TYPES = (
    RegisterType.INT16,
    RegisterType.UINT16,
    RegisterType.INT32,
    RegisterType.UINT32,
    RegisterType.FLOAT32,
    RegisterType.INT64,
    RegisterType.UINT64,
    RegisterType.FLOAT64,
)


def probe(registers: Sequence[int], *, base_address: int = 0) -> list[ProbeLine]:
    """Every decoding of a block: each start offset x numeric type x order, plus the block
    as a string. ``plausible`` marks finite numbers of a sensible size (0 or 1e-6..1e12) and
    printable strings, the lines an installer looks at first."""
    lines: list[ProbeLine] = []
    for offset in range(len(registers)):
        for rtype in _PROBE_TYPES:
            width = _WIDTH[rtype]
            if offset + width > len(registers):
                continue
            chunk = registers[offset : offset + width]
            for order in orders_for(rtype):
                value = decode(chunk, FieldFormat(type=rtype, order=order))
                lines.append(ProbeLine(base_address + offset, rtype, order, value, _plausible(value)))
    block = registers[:125]
    for order in (ByteOrder.AB, ByteOrder.BA) if block else ():
        text = decode(block, FieldFormat(type=RegisterType.STRING, order=order, length=len(block)))
        lines.append(ProbeLine(base_address, RegisterType.STRING, order, text, _plausible(text)))
    return lines


def _plausible(value: Decoded) -> bool:
    if isinstance(value, Invalid):
        return False
    if isinstance(value, str):
        return bool(value) and value.isprintable()
    return value == 0 or 1e-6 <= abs(value) <= 1e12
