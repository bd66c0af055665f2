"""DL/T 645-2007: frames, BCD formats, error answers, and the source against a simulated meter."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.contract import Invalid
from drivers.dlt645.errors import ErrorAnswer, FrameError, UnexpectedAnswer, error_meanings
from drivers.dlt645.frame import (
    READ_DATA,
    address_bytes,
    decode,
    encode,
    read_address_value,
    read_data_request,
    read_data_value,
    read_frame,
)
from drivers.dlt645.identifiers import CURRENT, ENERGY, ITEMS, POWER, VOLTAGE, BcdFormat, meter_time
from drivers.dlt645.source import Dlt645Source
from drivers.line.config import TcpServerLineConfig
from drivers.line.owner import LineOwner
from firmware_sim.build import build_device
from firmware_sim.config import expand
from firmware_sim.dlt645_meter import Dlt645Responder, _scaled
from firmware_sim.dlt645_meter import parse as sim_parse
from firmware_sim.line import SimLine, serve_tcp
from tests.sim.helpers import fleet_config

ADDRESSES = st.text("0123456789", min_size=12, max_size=12)


def test_the_worked_example_of_the_reference_byte_for_byte() -> None:
    # read forward active total energy (00 01 00 00) of meter 123456789012
    request = read_data_request("123456789012", 0x00010000)
    assert request.hex(" ") == "fe fe fe fe 68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16"
    answer = bytes.fromhex("68 12 90 78 56 34 12 68 91 08 33 33 34 33 89 67 45 33 54 16")
    value, follow_up = read_data_value(decode(answer), "123456789012", 0x00010000)
    assert ENERGY.decode(value) == 1234.56 and not follow_up


@given(ADDRESSES, st.integers(0, 0x1F), st.binary(max_size=200))
def test_frames_round_trip(address: str, function: int, data: bytes) -> None:
    frame = decode(encode(address, 0x80 | function, data))
    assert (frame.address, frame.control, frame.data) == (address, 0x80 | function, data)


@given(ADDRESSES, st.binary(min_size=1, max_size=40), st.data())
def test_any_changed_byte_between_the_68s_and_the_checksum_is_caught(
    address: str, data: bytes, draw: st.DataObject
) -> None:
    raw = bytearray(encode(address, 0x91, data, preamble=b""))
    i = draw.draw(st.integers(1, len(raw) - 3).filter(lambda i: i not in (7, 9)))
    raw[i] = (raw[i] + draw.draw(st.integers(1, 255))) & 0xFF
    with pytest.raises(FrameError):
        decode(bytes(raw))


@given(st.sampled_from([ENERGY, VOLTAGE, CURRENT, POWER, BcdFormat(2, 0)]), st.data())
def test_bcd_formats_round_trip(fmt: BcdFormat, draw: st.DataObject) -> None:
    digits = 2 * fmt.size
    top = 8 * 10 ** (digits - 1) if fmt.signed else 10**digits
    n = draw.draw(st.integers(-(top - 1) if fmt.signed else 0, top - 1))
    value = n / 10**fmt.decimals
    assert fmt.decode(fmt.encode(value)) == pytest.approx(value, abs=1e-12)
    # the simulator's independent encoder writes the same bytes
    assert _scaled(value, fmt.size, fmt.decimals, fmt.signed) == fmt.encode(value)


@given(st.binary(min_size=4, max_size=4).filter(lambda b: any(x >> 4 > 9 or x & 15 > 9 for x in b)))
def test_a_nibble_above_nine_is_invalid_not_a_number(raw: bytes) -> None:
    value = ENERGY.decode(raw)
    assert isinstance(value, Invalid) and value.reason == "not_bcd"


def test_values_at_the_edges_of_the_formats() -> None:
    assert ENERGY.decode(bytes.fromhex("99 99 99 99")) == 999999.99
    assert ENERGY.decode(bytes.fromhex("00 00 00 80")) == 800000.0  # no sign bit in energy
    assert POWER.decode(bytes.fromhex("00 50 81")) == -1.5  # XX.XXXX kW, sign in the top bit
    assert CURRENT.decode(bytes.fromhex("50 12 00")) == 1.25
    with pytest.raises(ValueError, match="does not fit"):
        POWER.encode(80.0)


def test_error_answers_name_each_bit_and_other_answers_are_refused() -> None:
    error = decode(encode("000000000007", 0xD1, bytes([0x02])))
    with pytest.raises(ErrorAnswer, match=r"meter 000000000007 DI 00010000: error answer 02 \(no such data"):
        read_data_value(error, "000000000007", 0x00010000)
    assert error_meanings(0x05) == ["other error", "password or authorisation error"]
    other = decode(encode("000000000008", 0x91, bytes.fromhex("00 00 01 00 00 00 00 00")))
    with pytest.raises(UnexpectedAnswer, match="answer from meter 000000000008"):
        read_data_value(other, "000000000007", 0x00010000)
    wrong_di = decode(encode("000000000007", 0x91, bytes.fromhex("00 00 02 00 00 00 00 00")))
    with pytest.raises(UnexpectedAnswer, match="answer for DI 00020000"):
        read_data_value(wrong_di, "000000000007", 0x00010000)
    assert (
        read_address_value(decode(encode("123456789012", 0x93, address_bytes("123456789012"))))
        == "123456789012"
    )


async def test_read_frame_skips_wake_up_bytes_and_reads_exactly_one_frame() -> None:
    answer = encode("123456789012", 0x91, bytes(8))
    stream = bytearray(answer + b"\x68trailing")

    async def read(n: int) -> bytes:
        out = bytes(stream[:n])
        del stream[:n]
        return out

    assert await read_frame(read) == answer[4:]
    assert bytes(stream) == b"\x68trailing"


def test_meter_time_is_beijing_time() -> None:
    # 2025-01-15 (a Wednesday, WW = 03) 08:30:05 in Beijing = 00:30:05 UTC
    values = meter_time([bytes.fromhex("03 15 01 25"), bytes.fromhex("05 30 08")])
    assert values == {"meter_time": 1736901005.0}
    assert isinstance(meter_time([bytes.fromhex("03 15 13 25"), bytes(3)])["meter_time"], Invalid)


def test_the_simulators_parser_agrees_with_the_driver() -> None:
    raw = read_data_request("000000000042", 0x02030000)
    parsed = sim_parse(raw)
    assert isinstance(parsed, tuple) and parsed[0] == len(raw)
    assert parsed[2] == READ_DATA and parsed[3] == bytes.fromhex("00 00 03 02")


async def test_the_source_reads_a_simulated_meter_and_a_dead_one_times_out() -> None:
    cfg = fleet_config(
        {"kind": "sdm630", "name": "m", "initial_kwh": 4321.0, "physics": {"model": "load", "base_w": 900}}
    )
    clock = ManualClock(cfg.clock.epoch_s)
    device = build_device(expand(cfg)[0], cfg, clock.now())
    sim = SimLine("l", clock)
    sim.add(Dlt645Responder(device, "000000000042"))
    items = [
        ITEMS[n]
        for n in ("energy_import", "energy_export", "energy_combined", "powers", "voltages", "meter_time")
    ]
    async with serve_tcp(sim) as server:
        line = TcpServerLineConfig(id="l", kind="tcp_server", host=server.host, port=server.port)
        async with LineOwner(line) as owner:
            source = Dlt645Source("m", "000000000042", items, owner, clock, timeout_s=0.3)
            result = await source.poll(slot=clock.now())
            missing = Dlt645Source("ghost", "000000000043", items[:1], owner, clock, timeout_s=0.1)
            silent = await missing.poll()
            device.set_faults(exception="illegal_address")
            refused = await source.poll(["fast"])
    assert result.ok, result.error
    values = {s.quantity: s.value for s in result.samples}
    assert values["energy_import"] == pytest.approx(4321.0, abs=0.01)
    assert values["energy_combined"] == values["energy_import"]
    assert values["voltage_l1"] == 230.0
    assert values["power"] == pytest.approx(sum(values[f"power_l{n}"] for n in (1, 2, 3)), abs=2e-4)  # type: ignore[misc]
    assert values["meter_time"] == clock.now()
    assert result.requests == 7  # meter_time is two identifiers
    assert not silent.ok and "ghost (dlt645): meter 000000000043 DI 00010000 on line l" in (
        silent.error or ""
    )
    assert not refused.ok and refused.samples == () and "no such data" in (refused.error or "")
    assert refused.requests == 5  # an error answer does not end the poll


async def test_the_timeout_of_a_dead_meter_is_its_own() -> None:
    sim = SimLine("l", ManualClock())
    async with serve_tcp(sim) as server:
        line = TcpServerLineConfig(id="l", kind="tcp_server", host=server.host, port=server.port)
        async with LineOwner(line) as owner:
            source = Dlt645Source(
                "dead", "000000000001", [ITEMS["energy_import"]], owner, ManualClock(), timeout_s=0.05
            )
            result = await asyncio.wait_for(source.poll(), 5)
    assert not result.ok and 0.05 <= result.latency_s < 1.0
