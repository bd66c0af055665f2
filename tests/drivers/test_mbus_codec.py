"""M-Bus codec properties: frames and checksum, exact scaling, BCD, type F dates, secondary
addresses, and the decoder fuzzed: whatever bytes arrive, only the driver's own errors."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.contract import Invalid
from drivers.line.contract import LineTimeout
from drivers.mbus.client import Target, check_rsp_ud
from drivers.mbus.errors import ChecksumError, FrameError, MbusError, TelegramError
from drivers.mbus.frame import LongFrame, SecondaryAddress, decode_answer, read_answer, short_frame
from drivers.mbus.heat import decode_heat, type_f
from drivers.mbus.records import parse_variable_data
from firmware_sim.mbus import type_f as sim_type_f
from tests.drivers.cjt188_lines import _Bytes

HEADER = bytes.fromhex("78563412 2D2C 01 04 00 00 0000")
frames = st.builds(
    LongFrame, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=200)
)


def telegram(records: bytes, status: int = 0) -> LongFrame:
    header = HEADER[:9] + bytes([status]) + HEADER[10:]
    return LongFrame(0x08, 5, 0x72, header + records)


def heat(records: bytes, status: int = 0) -> dict[str, float | Invalid]:
    return dict(decode_heat(check_rsp_ud(Target(5), telegram(records, status))).values)


def test_short_frames_as_the_standard_writes_them() -> None:
    assert short_frame(0x40, 0xFE) == bytes.fromhex("10 40 FE 3E 16")  # SND_NKE broadcast
    assert short_frame(0x5B, 0x01) == bytes.fromhex("10 5B 01 5C 16")  # REQ_UD2 to 1


@given(frames)
def test_long_frame_round_trip(frame: LongFrame) -> None:
    raw = frame.encode()
    assert raw[1] == raw[2] == len(frame.data) + 3 and raw[-1] == 0x16
    assert decode_answer(raw) == frame


@given(frames, st.data())
def test_any_single_corruption_is_caught(frame: LongFrame, data: st.DataObject) -> None:
    raw = bytearray(frame.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FrameError):
        decode_answer(bytes(raw))


def test_a_bad_checksum_is_named() -> None:
    raw = bytearray(telegram(b"").encode())
    raw[-2] ^= 1
    with pytest.raises(ChecksumError, match="checksum is"):
        decode_answer(bytes(raw))


@given(frames)
async def test_the_answer_reader_reads_exactly_one_frame(frame: LongFrame) -> None:
    raw = frame.encode()
    assert await read_answer(_Bytes(raw + b"\x00\x00", "t")) == raw
    assert await read_answer(_Bytes(b"\xe5\x68", "t")) == b"\xe5"


async def test_the_answer_reader_refuses_garbage_and_times_out_on_a_cut_frame() -> None:
    with pytest.raises(FrameError, match="neither E5 nor 68"):
        await read_answer(_Bytes(b"\x10\x08\x05\x0d\x16", "t"))
    with pytest.raises(LineTimeout):
        await read_answer(_Bytes(telegram(b"").encode()[:-3], "t"))


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 7))
def test_energy_in_wh_is_exact_kwh(value: int, n: int) -> None:
    got = heat(bytes([0x04, n]) + value.to_bytes(4, "little", signed=True))["heat_energy"]
    assert got == float(Fraction(value) * Fraction(10) ** (n - 3) / 1000)


@given(st.integers(0, 99_999_999), st.integers(0, 7))
def test_energy_in_joules_as_bcd_is_exact_kwh(value: int, n: int) -> None:
    bcd = bytes.fromhex(f"{value:08d}")[::-1]
    got = heat(bytes([0x0C, 0x08 + n]) + bcd)["heat_energy"]
    assert got == float(Fraction(value) * 10**n / 3_600_000)


def test_negative_bcd_and_non_bcd() -> None:
    assert heat(bytes.fromhex("0A 5B 45 F0"))["flow_temperature"] == -45.0  # F in the top nibble: minus
    bad = heat(bytes.fromhex("0A 5B 4B 00"))["flow_temperature"]
    assert isinstance(bad, Invalid) and bad.reason == "not_bcd"


@given(st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31, 23, 59)))
def test_type_f_reads_what_the_simulator_writes(t: dt.datetime) -> None:
    t = t.replace(second=0, microsecond=0)
    assert type_f(sim_type_f(t)) == t


def test_type_f_without_hundred_years_is_this_century_up_to_80() -> None:
    assert type_f(bytes.fromhex("1E 08 0F 31")) == dt.datetime(2024, 1, 15, 8, 30)
    assert type_f(bytes.fromhex("00 00 61 C1")) == dt.datetime(1999, 1, 1)  # year 1100011 = 99
    bad = type_f(bytes.fromhex("00 00 00 01"))  # day 0
    assert isinstance(bad, Invalid) and "not a date" in bad.detail


def test_secondary_addresses_with_wildcards() -> None:
    ident, rest = bytes.fromhex("21436587"), bytes.fromhex("2D2C0104")
    assert SecondaryAddress("87654321").matches(ident, rest)
    assert SecondaryAddress("8765432F").matches(ident, rest)
    assert SecondaryAddress("876543212D2CFF04").matches(ident, rest)
    assert not SecondaryAddress("87654320").matches(ident, rest)
    assert not SecondaryAddress("876543212D2C0107").matches(ident, rest)
    assert SecondaryAddress("87654321").select_data() == bytes.fromhex("21436587 FFFF FF FF")
    with pytest.raises(ValueError, match="not a secondary address"):
        SecondaryAddress("8765432")


# -- fuzz: random bytes never raise anything but the driver's own error ---------------------


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_answer_bytes(raw: bytes) -> None:
    try:
        frame = decode_answer(raw)
        if frame is not None:
            decode_heat(check_rsp_ud(Target(5), frame))
    except MbusError:
        pass


@settings(max_examples=2000)
@given(st.binary(max_size=250), st.integers(0, 255))
def test_fuzz_variable_data(data: bytes, status: int) -> None:
    """A well-formed RSP_UD around random records (the checksum is right)."""
    try:
        result = decode_heat(check_rsp_ud(Target(5), telegram(data, status)))
    except MbusError:
        return
    assert all(isinstance(v, float | Invalid) for v in result.values.values())


RECORD_HEADS = st.sampled_from(
    [bytes([d, v]) for d in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x09, 0x0A, 0x0B, 0x0C, 0x0E, 0x0D)
     for v in (0x03, 0x06, 0x0E, 0x13, 0x2B, 0x3B, 0x59, 0x5D, 0x6D, 0x78, 0x7D, 0xFD, 0x86, 0xD9)]
)  # fmt: skip


@settings(max_examples=1000)
@given(st.lists(st.tuples(RECORD_HEADS, st.binary(max_size=9)), max_size=12), st.integers(0, 255))
def test_fuzz_records_built_from_real_difs_and_vifs(records: list[tuple[bytes, bytes]], status: int) -> None:
    data = b"".join(head + body for head, body in records)
    try:
        result = decode_heat(parse_variable_data(HEADER[:9] + bytes([status]) + HEADER[10:] + data))
    except TelegramError:
        return
    for value in result.values.values():
        assert isinstance(value, Invalid) or value == value  # never NaN as a number
    if status & 0x1B:
        assert all(isinstance(v, Invalid) for v in result.values.values())


def test_importing_the_driver_leaves_logging_alone() -> None:
    code = (
        "import logging, {m}; root = logging.getLogger(); "
        "print(len(root.handlers), logging.getLevelName(root.level))"
    )
    run = lambda m: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code.format(m=m)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert run("meterbus") == ["1", "INFO"]  # the library's import-time basicConfig
    assert run("drivers.mbus.source") == ["0", "WARNING"]
