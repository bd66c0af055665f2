"""Modbus RTU framing over a shared line: CRC, frames, answers, and ModbusSource through it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.line.config import TcpServerLineConfig
from drivers.line.owner import LineOwner
from drivers.modbus.errors import DeviceExceptionReply, DeviceTimeout, ModbusError
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profiles import load_profiles
from drivers.modbus.source import ModbusSource, ReadPolicy
from drivers.modbus_rtu.framing import LineRegisterReader, crc16, read_answer, read_request, registers_of
from firmware_sim.build import build_device
from firmware_sim.config import expand
from firmware_sim.line import SimLine, serve_tcp
from firmware_sim.rtu_responder import RtuResponder, crc16_modbus
from tests.sim.helpers import fleet_config


def test_crc_of_the_specifications_examples() -> None:
    # Modbus over Serial Line V1.02, 6.2.2 (the CRC worked in appendix B): a read of 3
    # holding registers from 0x006B at unit 0x11 is "11 03 00 6B 00 03 76 87".
    assert crc16(bytes.fromhex("11 03 00 6B 00 03")).to_bytes(2, "little") == bytes.fromhex("76 87")
    # the commonest frame on site: unit 1, FC 3, register 0, one register: CRC "84 0A"
    assert read_request(ReadRequest(1, 3, 0, 1, ())) == bytes.fromhex("01 03 00 00 00 01 84 0A")


@given(st.binary(max_size=64))
def test_the_drivers_crc_and_the_simulators_agree(data: bytes) -> None:
    assert crc16(data) == crc16_modbus(data)


@given(st.binary(min_size=1, max_size=40))
def test_a_frame_with_its_crc_checks_and_any_flipped_bit_does_not(body: bytes) -> None:
    frame = body + crc16(body).to_bytes(2, "little")
    assert crc16(frame) == 0  # the residue of a correct frame
    flipped = bytearray(frame)
    flipped[0] ^= 0x01
    assert crc16(bytes(flipped)) != 0


async def _read(frame: bytes, request: ReadRequest) -> list[int]:
    data = bytearray(frame)

    async def read(n: int) -> bytes:
        out = bytes(data[:n])
        del data[:n]
        return out

    return registers_of(await read_answer(read, request), request)


async def test_answers_decode_and_exceptions_and_bad_crcs_are_errors() -> None:
    req = ReadRequest(0x11, 3, 0x6B, 3, ())
    # the specification's answer: 02 2B, 00 00, 00 64
    ok = bytes.fromhex("11 03 06 02 2B 00 00 00 64")
    assert await _read(ok + crc16(ok).to_bytes(2, "little"), req) == [0x022B, 0, 0x64]
    exc = bytes.fromhex("11 83 02")
    with pytest.raises(DeviceExceptionReply, match=r"unit 17 fc3 0x006B..0x006D: exception reply \(code 2\)"):
        await _read(exc + crc16(exc).to_bytes(2, "little"), req)
    with pytest.raises(ModbusError, match="bad CRC"):
        await _read(ok + b"\x00\x00", req)
    other = bytes.fromhex("12 03 06 02 2B 00 00 00 64")
    with pytest.raises(ModbusError, match="answer from unit 18"):
        await _read(other + crc16(other).to_bytes(2, "little"), req)


async def test_a_modbus_source_reads_an_sdm120_through_a_tcp_serial_server() -> None:
    cfg = fleet_config({"kind": "sdm120", "name": "m", "unit": 7, "initial_kwh": 321.5,
                        "physics": {"model": "load"}})  # fmt: skip
    clock = ManualClock(cfg.clock.epoch_s)
    device = build_device(expand(cfg)[0], cfg, clock.now())
    sim = SimLine("rtu", clock)
    sim.add(RtuResponder(device))
    fields = load_profiles()["sdm120"].fields
    async with serve_tcp(sim) as server:
        line = TcpServerLineConfig(id="rtu", kind="tcp_server", host=server.host, port=server.port)
        async with LineOwner(line) as owner:
            reader = LineRegisterReader(owner, timeout_s=0.5, meter="m")
            async with ModbusSource(
                "m", fields, reader, clock, unit=7, policy=ReadPolicy(retries=0)
            ) as source:
                result = await source.poll()
                device.set_faults(timeout=True)
                silent = await source.poll()
    values = {s.quantity: s.value for s in result.samples}
    assert result.ok, result.error
    assert values["energy_import"] == pytest.approx(321.5, abs=0.01)
    assert values["serial_number"] == device.serial
    assert not silent.ok and silent.error is not None and "no complete answer within 0.5 s" in silent.error


async def test_line_timeouts_become_modbus_device_timeouts() -> None:
    sim = SimLine("rtu", ManualClock())
    async with serve_tcp(sim) as server:
        line = TcpServerLineConfig(id="rtu", kind="tcp_server", host=server.host, port=server.port)
        async with LineOwner(line) as owner:
            reader = LineRegisterReader(owner, timeout_s=0.05)
            with pytest.raises(DeviceTimeout, match=r"unit 3 fc4 0x0000\.\.0x0001 on line rtu"):
                await asyncio.wait_for(reader.read(ReadRequest(3, 4, 0, 2, ())), 5)
