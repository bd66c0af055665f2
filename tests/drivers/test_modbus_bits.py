"""Coils, discrete inputs (function 1 and 2) and bit fields of status words.

Fast tier: decoding and encoding bit fields, the profile model's rules, planning in bits,
RTU frames of function 1/2 from the Modbus specification's own examples, and the
interval builder refusing a flagged counter reading. Real tier: the simulated heat-meter
converter (puhui-hm1 map) read over Modbus TCP by the gateway's source, and over a
simulated RS-485 line by the line RTU reader.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from common.clock import ManualClock
from drivers.contract import Invalid, Sample
from drivers.errors import PlanError, ProfileError
from drivers.modbus.decode import FieldFormat, RegisterType, decode, encode
from drivers.modbus.errors import DeviceExceptionReply, ModbusError
from drivers.modbus.plan import MODBUS_MAX_BITS, ReadRequest, RegisterSpan, plan_reads
from drivers.modbus.profiles import RegisterField, parse_profile, select_fields
from drivers.modbus.source import ModbusSource, ReadPolicy
from drivers.modbus_rtu.framing import LineRegisterReader, read_request, registers_of, with_crc
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.modbus_tcp.driver import tcp_source
from firmware_sim import Fleet
from firmware_sim.build import build_device
from firmware_sim.config import expand
from firmware_sim.rtu_responder import RtuResponder
from gateway.config import parse_site, series_specs
from gateway.errors import ConfigError
from gateway.intervals import IntervalBuilder
from tests.drivers.cjt188_lines import ResponderLine
from tests.sim.helpers import fleet_config

HEAT = {"kind": "heat_meter", "name": "hm", "unit": 2, "physics": {"model": "heating"}}
# The converter read bit by bit (puhui-hm1: status word 0x0008, coil 0, discrete inputs 0-1).
BIT_FIELDS = [
    {"name": "heat_energy", "quantity": "heat_energy", "unit": "Wh", "address": 0, "type": "uint32",
     "kind": "counter", "invalid_when": ["value_error"]},
    {"name": "value_error", "quantity": "value_error", "address": 8, "type": "uint16", "bit": 0},
    {"name": "no_flow", "quantity": "no_flow", "address": 8, "type": "uint16", "bit": 1},
    {"name": "polling", "quantity": "polling", "function": 1, "address": 0},
    {"name": "value_error_di", "quantity": "value_error_di", "function": 2, "address": 0},
    {"name": "no_flow_di", "quantity": "no_flow_di", "function": 2, "address": 1},
]  # fmt: skip


def _fields() -> list[RegisterField]:
    return [RegisterField.model_validate(f) for f in BIT_FIELDS]


# -- decoding -------------------------------------------------------------------------------------


def test_bit_fields_of_a_status_word() -> None:
    word = [0b1010_0000_0000_0110]
    assert decode(word, FieldFormat(type="uint16", bit=1)) == 1.0  # type: ignore[arg-type]
    assert decode(word, FieldFormat(type="uint16", bit=0)) == 0.0  # type: ignore[arg-type]
    assert decode(word, FieldFormat(type="uint16", bit=1, bits=2)) == 3.0  # type: ignore[arg-type]
    assert decode(word, FieldFormat(type="uint16", bit=13, bits=3)) == 0b101  # type: ignore[arg-type]
    # a signed word's bits are its bit pattern, not its value: 0x8000 has bit 15 set
    assert decode([0x8000], FieldFormat(type="int16", bit=15)) == 1.0  # type: ignore[arg-type]
    # 32-bit alarm word, word-swapped device: bit 20 lives in the high word, sent second
    alarm = FieldFormat(type="uint32", order="CDAB", bit=20)  # type: ignore[arg-type]
    assert decode([0x0000, 0x0010], alarm) == 1.0 and decode([0x0010, 0x0000], alarm) == 0.0


def test_a_status_word_that_is_not_implemented_gives_no_bits() -> None:
    field = FieldFormat(type="uint16", bit=3, not_implemented="sunspec")  # type: ignore[arg-type]
    value = decode([0xFFFF], field)
    assert isinstance(value, Invalid) and value.reason == "not_implemented"


def test_coils_are_zero_or_one() -> None:
    coil = FieldFormat(type=RegisterType.BIT)
    assert decode([1], coil) == 1.0 and decode([0], coil) == 0.0 and encode(1, coil) == [1]


@settings(max_examples=80, deadline=None)
@given(
    rtype=st.sampled_from(["uint16", "int16", "uint32", "int32"]),
    data=st.data(),
)
def test_bit_fields_round_trip(rtype: str, data: st.DataObject) -> None:
    width = 16 if rtype.endswith("16") else 32
    bit = data.draw(st.integers(0, width - 1))
    bits = data.draw(st.integers(1, width - bit))
    field = FieldFormat(type=rtype, bit=bit, bits=bits)  # type: ignore[arg-type]
    value = data.draw(st.integers(0, 2**bits - 1))
    regs = encode(value, field)
    assert decode(regs, field) == value
    assert sum(bin(r).count("1") for r in regs) == bin(value).count("1")  # no other bit set


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"type": "float32", "bit": 0}, "integer register, not float32"),
        ({"type": "uint16", "bits": 2}, r"bits \(a width\) needs bit"),
        ({"type": "uint16", "bit": 15, "bits": 2}, "bits 15..16 do not fit a uint16"),
        ({"type": "uint16", "bit": 0, "scale": 0.1}, "not scaled"),
        ({"type": "bit", "bit": 0}, "type bit is a whole coil"),
        ({"type": "bit", "scale": 2}, "not scaled"),
    ],
)
def test_bad_bit_shapes_say_why(shape: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FieldFormat.model_validate(shape)


# -- the profile model ------------------------------------------------------------------------------


def test_coils_default_to_type_bit_and_bits_to_kind_status() -> None:
    fields = {f.name: f for f in _fields()}
    assert fields["polling"].type is RegisterType.BIT and fields["polling"].kind == "status"
    assert fields["value_error"].kind == "status" and fields["value_error"].poll_group == "fast"
    assert fields["heat_energy"].kind == "counter"


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"function": 1, "type": "uint16"}, "function 1 reads bits: type bit"),
        ({"function": 3, "type": "bit"}, "type bit is for function 1"),
        ({"function": 3, "type": "uint16", "bit": 2, "kind": "counter"}, "is kind status, not counter"),
        ({"function": 2, "kind": "gauge"}, "is kind status, not gauge"),
        ({"function": 3, "type": "float32", "kind": "status"}, "a bit or an integer register, not float32"),
        ({"function": 3, "type": "uint16", "kind": "status", "scale": 10}, "not scaled"),
    ],
)
def test_bad_status_fields_say_why(field: dict[str, object], message: str) -> None:
    data = {"name": "p", "source": "s", "fields": [{"name": "x", "quantity": "x", "address": 0, **field}]}
    with pytest.raises(ProfileError, match=message):
        parse_profile(data, "p.yaml")


def test_invalid_when_names_a_status_field_and_is_read_with_its_field() -> None:
    def profile(flag: str) -> dict[str, object]:
        return {"name": "p", "source": "s", "fields": [
            {"name": "e", "quantity": "e", "address": 0, "type": "uint32", "kind": "counter",
             "invalid_when": [flag]},
            {"name": "err", "quantity": "err", "address": 4, "type": "uint16", "bit": 0},
            {"name": "w", "quantity": "w", "address": 5, "type": "int16"},
        ]}  # fmt: skip

    with pytest.raises(ProfileError, match=r"invalid_when 'er' is not a field \(err\?\)"):
        parse_profile(profile("er"), "p.yaml")
    with pytest.raises(ProfileError, match="invalid_when 'w' is not a status field"):
        parse_profile(profile("w"), "p.yaml")
    p = parse_profile(profile("err"), "p.yaml")
    # the counter is slow, its flag fast: a slow poll reads the flag too
    assert [f.name for f in select_fields(p.fields, ["slow"])] == ["e", "err"]


def _site(counts: list[str], registers: list[dict[str, object]]) -> dict[str, object]:
    meter = {"id": "hm", "driver": "modbus_tcp", "connection": {"host": "127.0.0.1"}, "unit_id": 2,
             "registers": registers, "scenario": "clean_heating",
             "nameplate": {"rated_power_kw": 10, "meter_class": "heat_2"}, "counts": counts}  # fmt: skip
    return {"gateway": {"id": "gw", "site": "s"}, "meters": [meter]}


def test_a_status_cannot_be_counted_and_makes_no_series() -> None:
    with pytest.raises(ConfigError, match=r"meters\[0\]\.counts\[1\]: 'no_flow' is a status"):
        parse_site(_site(["heat_energy", "no_flow"], BIT_FIELDS), "site.yaml", {})
    site = parse_site(_site(["heat_energy"], BIT_FIELDS), "site.yaml", {})
    specs = series_specs(site.meters[0], _fields())
    assert [(s.quantity, s.kind) for s in specs] == [("heat_energy", "counter")]


# -- planning and framing --------------------------------------------------------------------------


def test_bits_are_planned_per_table_in_bits() -> None:
    spans = [RegisterSpan("a", 1, 2, 0, 1), RegisterSpan("b", 1, 2, 1, 1), RegisterSpan("c", 1, 1, 0, 1),
             RegisterSpan("d", 1, 3, 8, 1), RegisterSpan("e", 1, 2, 1999, 1)]  # fmt: skip
    plan = plan_reads(spans, max_gap=2000)
    assert [(r.function, r.address, r.count) for r in plan] == [(1, 0, 1), (2, 0, MODBUS_MAX_BITS), (3, 8, 1)]
    with pytest.raises(PlanError, match="2001 bits do not fit one request of 2000"):
        plan_reads([RegisterSpan("x", 1, 1, 0, 2001)])


def test_rtu_frames_of_function_1_and_2_are_the_specifications_examples() -> None:
    # Modbus Application Protocol V1.1b3, 6.1: read coils 20-38 (0x0013, 19 coils); the answer
    # carries CD 6B 05: coils 27-20 = CD, 35-28 = 6B, 38-36 = 5 (zero-padded).
    coils = ReadRequest(0x11, 1, 0x0013, 0x0013, ())
    assert read_request(coils) == with_crc(bytes.fromhex("11 01 00 13 00 13"))
    bits = registers_of(with_crc(bytes.fromhex("11 01 03 CD 6B 05")), coils)
    assert len(bits) == 19
    assert bits[:8] == [1, 0, 1, 1, 0, 0, 1, 1]  # 0xCD, coil 20 in bit 0
    assert bits[8:16] == [1, 1, 0, 1, 0, 1, 1, 0]  # 0x6B
    assert bits[16:] == [1, 0, 1]  # 0x05, coils 36-38
    # 6.2: read discrete inputs 197-218 (0x00C4, 22 inputs): AC DB 35
    inputs = ReadRequest(0x11, 2, 0x00C4, 0x0016, ())
    got = registers_of(with_crc(bytes.fromhex("11 02 03 AC DB 35")), inputs)
    assert len(got) == 22 and got[:8] == [0, 0, 1, 1, 0, 1, 0, 1] and got[16:] == [1, 0, 1, 0, 1, 1]
    with pytest.raises(ModbusError, match="answer carries 2 bytes, 3 expected"):
        registers_of(with_crc(bytes.fromhex("11 02 02 AC DB")), inputs)


# -- counters: a flagged reading moves nothing -------------------------------------------------------


def test_a_flagged_reading_does_not_move_the_counter() -> None:
    site = parse_site(_site(["heat_energy"], BIT_FIELDS), "site.yaml", {})
    (spec,) = series_specs(site.meters[0], _fields())
    t0 = 1_736_899_200
    builder = IntervalBuilder([spec], clock=ManualClock(t0), interval_s=900, grace_s=30.0, max_future_s=1e9)
    readings: list[float | Invalid] = [1000.0, 1010.0, Invalid("flagged", "value_error = 1"), 1030.0]
    readings += [1040.0 + 10 * i for i in range(11)]
    for i, value in enumerate(readings):
        builder.add(Sample("hm", "heat_energy", value, t0 + 60 * i))
    (record,) = builder.close_due(t0 + 900 + 30)
    assert record.counter_start == 1000.0 and record.counter_end == 1140.0 and record.delta == 140.0
    assert builder.counts.invalid == 1 and record.samples == len(readings) - 1
    assert "invalid_value" in record.flags


# -- simulator round trips -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_the_converter_over_tcp_status_bits_coils_and_discrete_inputs() -> None:
    cfg = fleet_config(HEAT)
    clock = ManualClock(cfg.clock.epoch_s + 3600)
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["hm"]
        connection = ModbusTcpConnection(host="127.0.0.1", port=dev.endpoint.port or 0)
        policy = ReadPolicy(timeout_s=2, retries=0)
        source = tcp_source(
            "hm", connection, 2, _fields(), clock, max_gap=8, policy=policy, rng=random.Random(1)
        )
        async with source:
            await clock.advance(900)
            good = await source.poll()
            counter_wh, flow = dev.meter().counter_wh(), dev.meter().sample.flow_m3h or 0.0
            dev.set_faults(value="nan")
            bad = await source.poll()
    assert good.ok and bad.ok, (good.error, bad.error)
    assert good.requests == 3  # one read per table: coils, discrete inputs, holding
    ok, flagged = ({s.quantity: s.value for s in r.samples} for r in (good, bad))
    assert ok["value_error"] == ok["value_error_di"] == 0 and ok["polling"] == 1
    assert ok["no_flow"] == ok["no_flow_di"] == (flow <= 0)
    assert ok["heat_energy"] == pytest.approx(counter_wh, abs=1)
    assert flagged["value_error"] == flagged["value_error_di"] == 1
    assert isinstance(flagged["heat_energy"], Invalid)  # NaN shows as the not-implemented marker


async def test_the_converter_on_a_shared_line_answers_function_1_and_2() -> None:
    cfg = fleet_config(HEAT)
    device = build_device(expand(cfg)[0], cfg, cfg.clock.epoch_s)
    line = ResponderLine([RtuResponder(device)], now=cfg.clock.epoch_s + 600)
    reader = LineRegisterReader(line, timeout_s=1.0, meter="hm")
    source = ModbusSource("hm", _fields(), reader, ManualClock(line.now), unit=2, max_gap=8)
    result = await source.poll()
    assert result.ok, result.error
    values = {s.quantity: s.value for s in result.samples}
    assert values["polling"] == 1 and values["value_error_di"] == values["value_error"] == 0
    assert values["no_flow_di"] == values["no_flow"]
    assert line.exchanges == 3
    device.set_faults(value="nan")
    assert {s.quantity: s.value for s in (await source.poll()).samples}["value_error_di"] == 1


async def test_a_device_without_coils_answers_illegal_function() -> None:
    cfg = fleet_config({"kind": "sdm630", "name": "m", "unit": 1, "physics": {"model": "load"}})
    device = build_device(expand(cfg)[0], cfg, cfg.clock.epoch_s)
    reader = LineRegisterReader(ResponderLine([RtuResponder(device)]), timeout_s=1.0)
    with pytest.raises(DeviceExceptionReply) as exc:
        await reader.read(ReadRequest(1, 1, 0, 1, ()))
    assert exc.value.code == 1
