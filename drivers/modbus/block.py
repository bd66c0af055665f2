"""A request plan compiled for decoding: each response unpacked with precompiled structs.

:class:`PlanDecoder` is built once per plan (a :class:`~drivers.modbus.source.ModbusSource`
caches it per set of poll groups) and turns the responses of one poll into samples. It
gives exactly what slicing each response (:func:`~drivers.modbus.plan.slice_response`),
:func:`~drivers.modbus.decode.decode_fields` and :func:`~drivers.modbus.source.flagged`
give (tests/drivers/test_block_decode.py holds it to that over random register images),
with less Python per field:

- A response is packed once into bytes (big-endian words, and byte-swapped words when a
  field needs them); the numeric fields whose bytes do not overlap are unpacked together
  by one ``struct.Struct`` per (buffer, endianness) with pad bytes between them. The
  four 32/64-bit orders are two switches (module docstring of
  :mod:`~drivers.modbus.decode`): a word swap is a little-endian unpack of the whole
  value, which also swaps the bytes of each word, so the buffer is byte-swapped when
  exactly one of the two switches is on.
- Every raw value then goes through the same checks as :func:`~drivers.modbus.decode.decode`
  (:func:`~drivers.modbus.decode.finish`: markers, NaN/inf, bit fields, scale, scale factor),
  except a float field with no scale, scale factor or marker list, whose only check is
  NaN/inf and is done inline.
- Strings and coils/discrete inputs are decoded by :func:`~drivers.modbus.decode.decode`
  from their slice of the response, as before.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drivers.contract import Invalid, Sample, new_sample
from drivers.errors import CodecError, ResponseLengthError
from drivers.modbus.decode import (
    FLOAT_TYPES,
    ByteOrder,
    Decoded,
    FieldFormat,
    RegisterType,
    decode,
    finish,
    type_width,
)
from drivers.modbus.plan import BIT_FUNCTIONS, ReadRequest
from drivers.modbus.profiles import RegisterField

_BYTE_SWAP = frozenset({ByteOrder.BA, ByteOrder.DCBA, ByteOrder.BADC})
_WORD_SWAP = frozenset({ByteOrder.DCBA, ByteOrder.CDAB})
_CODE: dict[RegisterType, str] = {
    RegisterType.INT16: "h",
    RegisterType.UINT16: "H",
    RegisterType.SUNSSF: "h",
    RegisterType.INT32: "i",
    RegisterType.UINT32: "I",
    RegisterType.FLOAT32: "f",
    RegisterType.ACC32: "I",
    RegisterType.INT64: "q",
    RegisterType.UINT64: "Q",
    RegisterType.FLOAT64: "d",
    RegisterType.ACC64: "Q",
}


def layout(field: FieldFormat) -> tuple[bool, str]:
    """(unpack from the byte-swapped buffer, endianness character) of a numeric field."""
    byte_swap = field.order in _BYTE_SWAP
    word_swap = field.order in _WORD_SWAP and type_width(field.type) > 1
    return byte_swap != word_swap, "<" if word_swap else ">"


@dataclass(frozen=True, slots=True)
class _Unpack:
    """Numeric fields of one response unpacked together: one struct over one buffer."""

    swapped: bool
    struct: struct.Struct
    names: tuple[str, ...]


class BlockDecoder:
    """The raw values of one request's fields from its response."""

    def __init__(self, request: ReadRequest, formats: dict[str, FieldFormat]) -> None:
        self.request = request
        base, count = request.address, request.count
        numeric: dict[tuple[bool, str], list[tuple[int, str, FieldFormat]]] = {}
        self._sliced: list[tuple[str, int, int]] = []  # decoded from their registers by decode()
        for span in request.fields:
            f = formats[span.key]
            offset = span.address - base
            if request.function in BIT_FUNCTIONS or f.type not in _CODE:
                self._sliced.append((span.key, offset, offset + span.count))
            else:
                numeric.setdefault(layout(f), []).append((offset, span.key, f))
        self._unpacks: list[_Unpack] = []
        for (swapped, endian), members in numeric.items():
            self._unpacks.extend(_structs(swapped, endian, sorted(members, key=lambda m: (m[0], m[1]))))
        self._words = struct.Struct(f">{count}H") if self._unpacks else None
        self._swapped_words = struct.Struct(f"<{count}H") if any(u.swapped for u in self._unpacks) else None

    def check(self, words: Sequence[int]) -> None:
        """Raise :class:`ResponseLengthError` for a response of the wrong length."""
        r = self.request
        if len(words) != r.count:
            raise ResponseLengthError(
                f"unit {r.unit} fc {r.function} @{r.address}: asked for {r.count} registers, got {len(words)}"
            )

    def unpack(
        self, words: Sequence[int], raw: dict[str, int | float], sliced: dict[str, Sequence[int]]
    ) -> None:
        """Fill ``raw`` (numeric fields) and ``sliced`` (strings, bits) from one response."""
        if self._words is not None:
            try:
                plain = self._words.pack(*words)
                swapped = self._swapped_words.pack(*words) if self._swapped_words is not None else b""
            except struct.error as exc:
                raise CodecError(f"registers must be integers 0..65535, got {list(words)}") from exc
            for u in self._unpacks:
                raw.update(zip(u.names, u.struct.unpack_from(swapped if u.swapped else plain), strict=True))
        for name, start, end in self._sliced:
            sliced[name] = words[start:end]


def _structs(swapped: bool, endian: str, members: list[tuple[int, str, FieldFormat]]) -> list[_Unpack]:
    """Structs unpacking ``members`` (sorted by offset): one per run of non-overlapping fields."""
    out: list[_Unpack] = []
    pending = members
    while pending:
        fmt, names, end, overlapping = endian, [], 0, []
        for offset, name, f in pending:
            if offset < end:
                overlapping.append((offset, name, f))
                continue
            gap = 2 * (offset - end)
            fmt += (f"{gap}x" if gap else "") + _CODE[f.type]
            names.append(name)
            end = offset + type_width(f.type)
        out.append(_Unpack(swapped, struct.Struct(fmt), tuple(names)))
        pending = overlapping
    return out


@dataclass(frozen=True, slots=True)
class _Step:
    """How one read field becomes its decoded value (and maybe a sample)."""

    name: str
    quantity: str  # "" for a field that is no sample (a scale factor, a flag without quantity)
    field: RegisterField
    request: int  # index of its request in the plan
    plain_float: bool  # float, no scale, no scale factor, no marker list: only NaN/inf to check


class PlanDecoder:
    """Samples from the responses of one plan's requests (see the module docstring)."""

    def __init__(self, requests: Sequence[ReadRequest], fields: Sequence[RegisterField]) -> None:
        self.requests = tuple(requests)
        where = {span.key: i for i, r in enumerate(self.requests) for span in r.fields}
        formats: dict[str, FieldFormat] = {f.name: f for f in fields if f.name in where}
        self.blocks = tuple(BlockDecoder(r, formats) for r in self.requests)
        steps = [
            _Step(f.name, f.quantity or "", f, where[f.name], _plain_float(f))
            for f in fields
            if f.name in where
        ]
        # decode_fields' order: scale factors first, then the others, each in field order
        self._order = tuple(s for s in steps if s.field.type is RegisterType.SUNSSF) + tuple(
            s for s in steps if s.field.type is not RegisterType.SUNSSF
        )
        self._samples = tuple(s for s in steps if s.field.quantity is not None)  # in field order

    def samples(
        self, meter: str, responses: Sequence[tuple[Sequence[int], float]], slot: float | None, source: str
    ) -> tuple[Sample, ...]:
        """The samples of the first ``len(responses)`` requests' responses, each given with
        the clock time it was read at."""
        raw: dict[str, int | float] = {}
        sliced: dict[str, Sequence[int]] = {}
        for block, (words, _) in zip(self.blocks, responses, strict=False):
            block.unpack(words, raw, sliced)
        decoded = self._decode(raw, sliced)
        out = []
        for step in self._samples:
            value = decoded.get(step.name)
            if value is None or isinstance(value, str):
                continue  # not read (a later request failed), or a text field
            if step.field.invalid_when:
                value = flagged(step.field, value, decoded)
            out.append(new_sample(meter, step.quantity, value, responses[step.request][1], source, slot))
        return tuple(out)

    def _decode(self, raw: dict[str, int | float], sliced: dict[str, Sequence[int]]) -> dict[str, Decoded]:
        decoded: dict[str, Decoded] = {}
        isfinite = math.isfinite
        for step in self._order:
            name = step.name
            if name in raw:
                value = raw[name]
                if step.plain_float:
                    decoded[name] = value if isfinite(value) else _not_finite(value)
                    continue
                decoded[name] = finish(value, step.field, self._sf(step, decoded))
            elif name in sliced:
                decoded[name] = decode(sliced[name], step.field, sf=self._sf(step, decoded))
        return decoded

    @staticmethod
    def _sf(step: _Step, decoded: dict[str, Decoded]) -> float | Invalid | None:
        name = step.field.scale_factor
        if not name:
            return None
        sf = decoded.get(name)
        if isinstance(sf, str):
            return Invalid("scale_factor", f"{name} is not a number")
        return sf


def _plain_float(f: FieldFormat) -> bool:
    return (
        f.type in FLOAT_TYPES
        and f.scale == 1.0
        and f.scale_factor is None
        and f.not_implemented == "none"
        and f.bit is None
    )


def _not_finite(value: float) -> Invalid:
    return Invalid("nan" if math.isnan(value) else "infinite")


def flagged(field: RegisterField, value: float | Invalid, decoded: Mapping[str, Decoded]) -> float | Invalid:
    """``value``, or ``Invalid("flagged")`` when one of the field's ``invalid_when`` status
    fields is set, unreadable or was not read: a reading its own meter disowns is no reading."""
    if isinstance(value, Invalid):
        return value
    for name in field.invalid_when:
        flag = decoded.get(name)
        if flag is None or isinstance(flag, Invalid | str):
            return Invalid("flagged", f"{name} is {'not read' if flag is None else flag}")
        if flag:
            return Invalid("flagged", f"{name} = {flag:g}")
    return value
