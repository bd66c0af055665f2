"""CJ/T 188 codec properties: BCD, frames and checksum, the heat block, exact unit conversion."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.cjt188.bcd import NotBcd, bcd_to_int, int_to_bcd
from drivers.cjt188.errors import ChecksumError, FrameError
from drivers.cjt188.frame import Address, Frame, decode_frame, read_answer
from drivers.cjt188.heat import HeatFields, decode_heat_block, encode_heat_block
from drivers.cjt188.units import UNITS
from drivers.contract import Invalid
from drivers.line.contract import LineTimeout

addresses = st.text("0123456789", min_size=14, max_size=14).map(Address.parse)
frames = st.builds(Frame, st.integers(0, 255), addresses, st.integers(0, 255), st.binary(max_size=64))


@given(st.integers(0, 10**8 - 1))
def test_bcd_round_trip(value: int) -> None:
    raw = int_to_bcd(value, 4)
    assert bcd_to_int(raw) == value
    assert raw[0] == (value % 10 // 1) | (value // 10 % 10) << 4  # lowest two digits first


def test_bcd_edges() -> None:
    assert int_to_bcd(0, 4) == b"\x00\x00\x00\x00"
    assert int_to_bcd(99_999_999, 4) == b"\x99\x99\x99\x99"
    with pytest.raises(ValueError):
        int_to_bcd(10**8, 4)
    with pytest.raises(ValueError):
        int_to_bcd(-1, 4)


@given(st.binary(min_size=1, max_size=7).filter(lambda b: any(x >> 4 > 9 or x & 15 > 9 for x in b)))
def test_non_bcd_is_refused(raw: bytes) -> None:
    with pytest.raises(NotBcd):
        bcd_to_int(raw)


@given(frames, st.integers(0, 4))
def test_frame_round_trip(frame: Frame, preamble: int) -> None:
    raw = frame.encode(preamble)
    assert raw[:preamble] == b"\xfe" * preamble and raw[-1] == 0x16
    assert decode_frame(raw) == frame


@given(frames, st.data())
def test_any_single_corruption_is_caught(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(frame.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FrameError):  # a one-byte change moves the sum by 1..255: never silent
        decode_frame(bytes(raw))


def test_checksum_error_names_both_sums() -> None:
    raw = bytearray(Frame(0x20, Address.parse("00000012345678"), 0x01, b"\x90\x1f\x01").encode())
    raw[-2] ^= 0x01
    with pytest.raises(ChecksumError, match="checksum is 51, the bytes sum to 50"):
        decode_frame(bytes(raw))


@given(frames)
async def test_answer_reader_reads_exactly_one_frame(frame: Frame) -> None:
    wire = frame.encode(3) + b"\x68\x20trailing"
    pos = 0

    async def read(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(wire):
            raise LineTimeout("out of bytes")
        pos += n
        return wire[pos - n : pos]

    assert await read_answer(read) == frame.encode()


def test_address_digits() -> None:
    a = Address.parse("00000012345678")
    assert a.wire == bytes([0x78, 0x56, 0x34, 0x12, 0, 0, 0]) and a.digits == "00000012345678"
    for bad in ("1234", "0000001234567X", "000000123456789"):
        with pytest.raises(ValueError):
            Address.parse(bad)


energies = st.decimals(min_value=0, max_value=Decimal("999999.99"), places=2)


@given(energies, st.sampled_from(sorted(c for c, u in UNITS.items() if u.kind == "energy")))
def test_energy_conversion_is_exact(value: Decimal, code: int) -> None:
    fields = HeatFields(
        cooling=(Decimal(0), 0x05), heat=(value, code), power=(Decimal(0), 0x17),
        flow=(Decimal(0), 0x35), volume=(Decimal(0), 0x2C), supply_c=Decimal(0), return_c=Decimal(0),
        hours=0, time=dt.datetime(2024, 1, 1),
    )  # fmt: skip
    got = decode_heat_block(encode_heat_block(fields)).values["heat_energy"]
    assert got == float(Fraction(value) * UNITS[code].factor)


def test_gj_and_mwh_factors() -> None:
    assert UNITS[0x11].factor == Fraction(2500, 9)  # 1 GJ = 10^9 J / (3.6 x 10^6 J/kWh) = 277.78 kWh
    assert UNITS[0x08].factor == 1000 and UNITS[0x0A].factor == 100_000
    assert UNITS[0x0E].factor == Fraction(5, 18)  # 1 MJ = 1/3.6 kWh
    assert 0x36 not in UNITS  # m3/h x 10 in one source, volts in another


@given(
    st.builds(
        HeatFields,
        cooling=st.tuples(energies, st.just(0x05)),
        heat=st.tuples(energies, st.just(0x05)),
        power=st.tuples(energies, st.just(0x17)),
        flow=st.tuples(st.decimals(min_value=0, max_value=Decimal("9999.9999"), places=4), st.just(0x35)),
        volume=st.tuples(energies, st.just(0x2C)),
        supply_c=st.decimals(min_value=0, max_value=Decimal("9999.99"), places=2),
        return_c=st.decimals(min_value=0, max_value=Decimal("9999.99"), places=2),
        hours=st.integers(0, 999_999),
        time=st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31)).map(
            lambda t: t.replace(microsecond=0)
        ),
        st1=st.integers(0, 255),
        st2=st.integers(0, 255),
    )
)
def test_heat_block_round_trip(f: HeatFields) -> None:
    data = decode_heat_block(encode_heat_block(f))
    v = data.values
    assert v["heat_energy"] == float(f.heat[0]) and v["cooling_energy"] == float(f.cooling[0])
    assert v["power"] == float(f.power[0] * 1000) and v["flow_rate"] == float(f.flow[0] * 1000)
    assert v["volume"] == float(f.volume[0]) and v["operating_hours"] == f.hours
    assert (v["flow_temperature"], v["return_temperature"]) == (float(f.supply_c), float(f.return_c))
    assert data.meter_time == f.time and data.status.word == f.st1 | f.st2 << 8


def test_impossible_clock_is_invalid() -> None:
    block = bytearray(43)
    block[34:41] = bytes([0x00, 0x00, 0x25, 0x32, 0x13, 0x24, 0x20])  # 2024-13-32 25:00:00
    assert isinstance(decode_heat_block(bytes(block)).meter_time, Invalid)
