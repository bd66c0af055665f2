"""Register decoding: round trips for every type x order, markers, orders, probe."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.contract import Invalid
from drivers.errors import CodecError, RegisterCountError
from drivers.modbus.decode import (
    ByteOrder,
    FieldFormat,
    RegisterType,
    decode,
    decode_fields,
    encode,
    encode_raw,
    not_implemented_registers,
    orders_for,
    probe,
)

INT_RANGES = {
    RegisterType.INT16: (-(2**15), 2**15 - 1),
    RegisterType.UINT16: (0, 2**16 - 1),
    RegisterType.SUNSSF: (-(2**15), 2**15 - 1),
    RegisterType.INT32: (-(2**31), 2**31 - 1),
    RegisterType.UINT32: (0, 2**32 - 1),
    RegisterType.ACC32: (0, 2**32 - 1),
    RegisterType.INT64: (-(2**53), 2**53),  # exact in a float
    RegisterType.UINT64: (0, 2**53),
    RegisterType.ACC64: (0, 2**53),
    RegisterType.BIT: (0, 1),  # a coil or discrete input
}
CASES = [(t, o) for t in RegisterType if t is not RegisterType.STRING for o in orders_for(t)]
CASES += [(t, o) for t in RegisterType if t is not RegisterType.STRING and t.value.endswith("16")
          for o in (ByteOrder.ABCD, ByteOrder.DCBA, ByteOrder.BADC, ByteOrder.CDAB)]  # fmt: skip


@pytest.mark.parametrize(("rtype", "order"), CASES, ids=lambda x: str(x))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encode_then_decode_round_trips(rtype: RegisterType, order: ByteOrder, data: st.DataObject) -> None:
    field = FieldFormat(type=rtype, order=order)
    if rtype in INT_RANGES:
        lo, hi = INT_RANGES[rtype]
        value: float = data.draw(st.integers(lo, hi))
    else:
        width = 32 if rtype is RegisterType.FLOAT32 else 64
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    regs = encode(value, field)
    assert len(regs) == field.registers and all(0 <= r <= 0xFFFF for r in regs)
    assert decode(regs, field) == value


@pytest.mark.parametrize(("rtype", "order"), CASES, ids=lambda x: str(x))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decode_then_encode_gives_the_registers_back(
    rtype: RegisterType, order: ByteOrder, data: st.DataObject
) -> None:
    field = FieldFormat(type=rtype, order=order)
    top = 1 if rtype is RegisterType.BIT else 0xFFFF  # a coil's "register" is its bit
    regs = data.draw(st.lists(st.integers(0, top), min_size=field.registers, max_size=field.registers))
    value = decode(regs, field)
    if isinstance(value, Invalid):
        assert rtype in (RegisterType.FLOAT32, RegisterType.FLOAT64)
        return
    if rtype in (RegisterType.INT64, RegisterType.UINT64, RegisterType.ACC64) and abs(value) > 2**53:
        return  # a float carries 53 bits; such counters do not exist in meters
    assert encode(value, field) == regs


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=10),
       order=st.sampled_from([ByteOrder.AB, ByteOrder.BA, ByteOrder.ABCD, ByteOrder.BADC]))  # fmt: skip
def test_strings_round_trip_nul_padded(text: str, order: ByteOrder) -> None:
    field = FieldFormat(type=RegisterType.STRING, length=5, order=order)
    regs = encode(text, field)
    assert len(regs) == 5 and decode(regs, field) == text


def test_byte_orders_are_exactly_as_documented() -> None:
    value = struct.unpack(">I", bytes([0xA1, 0xB2, 0xC3, 0xD4]))[0]
    expect = {"ABCD": [0xA1B2, 0xC3D4], "DCBA": [0xD4C3, 0xB2A1], "BADC": [0xB2A1, 0xD4C3],
              "CDAB": [0xC3D4, 0xA1B2]}  # fmt: skip
    for order, regs in expect.items():
        assert encode_raw(value, FieldFormat(type="uint32", order=order)) == regs  # type: ignore[arg-type]
    v64 = int.from_bytes(bytes(range(0xA1, 0xA9)), "big")  # A..H = A1..A8
    expect64 = {
        "ABCD": [0xA1A2, 0xA3A4, 0xA5A6, 0xA7A8],  # ABCDEFGH
        "DCBA": [0xA8A7, 0xA6A5, 0xA4A3, 0xA2A1],  # HGFEDCBA
        "BADC": [0xA2A1, 0xA4A3, 0xA6A5, 0xA8A7],  # BADCFEHG
        "CDAB": [0xA7A8, 0xA5A6, 0xA3A4, 0xA1A2],  # GHEFCDAB
    }
    for order, regs in expect64.items():
        assert encode_raw(v64, FieldFormat(type="uint64", order=order)) == regs  # type: ignore[arg-type]
    assert encode_raw(0xA1B2, FieldFormat(type="uint16", order="BA")) == [0xB2A1]


def test_sdm_float_golden() -> None:
    # 230.5 V as an Eastron meter sends it (float32 big-endian)
    assert decode([0x4366, 0x8000], FieldFormat(type="float32")) == 230.5


def test_sunspec_markers_and_acc32_zero_is_real() -> None:
    sunspec = {"not_implemented": "sunspec"}
    assert decode([0x8000], FieldFormat(type="int16", **sunspec)) == Invalid("not_implemented", "raw -32768")
    assert isinstance(decode([0xFFFF], FieldFormat(type="uint16", **sunspec)), Invalid)
    assert isinstance(decode([0xFFFF, 0xFFFF], FieldFormat(type="uint32", **sunspec)), Invalid)
    assert isinstance(decode([0x8000], FieldFormat(type="sunssf", **sunspec)), Invalid)
    assert decode([0, 0], FieldFormat(type="acc32", **sunspec)) == 0.0
    assert decode([0xFFFF], FieldFormat(type="uint16")) == 65535.0  # no markers by default
    nan = decode([0x7FC0, 0], FieldFormat(type="float32"))
    assert isinstance(nan, Invalid) and nan.reason == "nan"
    inf = decode([0x7F80, 0], FieldFormat(type="float32"))
    assert isinstance(inf, Invalid) and inf.reason == "infinite"
    explicit = FieldFormat(type="uint32", not_implemented=(0xFFFFFFFF,))
    assert isinstance(decode(not_implemented_registers(explicit), explicit), Invalid)


def test_scale_and_scale_factor() -> None:
    f = FieldFormat(type="uint32", scale=0.1)
    assert decode([0, 2305], f) == pytest.approx(230.5)
    w = FieldFormat(type="int16", scale_factor="W_SF", not_implemented="sunspec")
    sf = FieldFormat(type="sunssf", not_implemented="sunspec")
    out = decode_fields({"W": w, "W_SF": sf}, {"W": encode(-123.4, w, sf=-1), "W_SF": [0xFFFF]})
    assert out == {"W_SF": -1.0, "W": pytest.approx(-123.4)}
    missing = decode_fields({"W": w, "W_SF": sf}, {"W": [5], "W_SF": [0x8000]})
    assert isinstance(missing["W"], Invalid) and missing["W"].reason == "scale_factor"
    assert isinstance(decode([5], w), Invalid)


@given(st.integers(-(2**15) + 1, 2**15 - 1))
def test_a_scale_factor_outside_sunspec_range_is_invalid_not_an_overflow(raw_sf: int) -> None:
    w = FieldFormat(type="int16", scale_factor="W_SF", not_implemented="sunspec")
    sf = FieldFormat(type="sunssf", not_implemented="sunspec")
    out = decode_fields({"W": w, "W_SF": sf}, {"W": [5], "W_SF": [raw_sf & 0xFFFF]})
    if -10 <= raw_sf <= 10:
        assert out["W"] == pytest.approx(5 * 10.0**raw_sf)
    else:
        assert isinstance(out["W"], Invalid) and out["W"].reason == "scale_factor"
        assert "W_SF" in out["W"].detail


def test_bad_fields_and_values() -> None:
    with pytest.raises(ValidationError, match="16-bit"):
        FieldFormat(type="float32", order="AB")
    with pytest.raises(ValidationError, match="length"):
        FieldFormat(type="string")
    with pytest.raises(RegisterCountError):
        decode([1], FieldFormat(type="float32"))
    with pytest.raises(CodecError):
        encode(70000, FieldFormat(type="uint16"))
    with pytest.raises(CodecError):
        encode("é", FieldFormat(type="string", length=2))
    assert decode([0xC3A9], FieldFormat(type="string", length=1)) == Invalid("not_ascii", "'Ã©'")


def test_probe_lists_every_decoding_and_marks_the_plausible_ones() -> None:
    regs = encode(230.5, FieldFormat(type="float32", order="CDAB"))
    lines = probe(regs, base_address=100)
    hits = {(ln.type.value, ln.order.value) for ln in lines if ln.value == 230.5}
    assert hits == {("float32", "CDAB")}
    assert {ln.address for ln in lines} == {100, 101}
    assert len([ln for ln in lines if ln.address == 100 and ln.type.value != "string"]) == 2 + 2 + 4 * 3
    assert all(not ln.plausible for ln in lines if isinstance(ln.value, Invalid))
    assert "float32" in str(lines[0]) or "int16" in str(lines[0])
    assert math.isfinite(len(probe([])))
