"""The compiled per-plan decoder gives exactly the samples of the reference decoding.

Reference: each response sliced per field (``slice_response``), ``decode_fields``, then
``flagged``, samples in field order, as ``ModbusSource`` decoded before the decoder was
compiled. Held over random register images (words biased towards markers, NaN and inf
patterns), random prefixes of a plan's requests (a later request failed), for every
static profile in config/profiles and for random field sets covering every type, byte
order, scale, scale factor, marker policy, bit field, overlap and ``invalid_when``.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from common.clock import ManualClock
from drivers.contract import Invalid, Sample, new_sample
from drivers.errors import CodecError
from drivers.modbus.block import PlanDecoder, layout
from drivers.modbus.decode import ByteOrder, Decoded, FieldFormat, RegisterType, decode_fields, decode_raw
from drivers.modbus.plan import BIT_FUNCTIONS, ReadRequest, plan_reads, slice_response
from drivers.modbus.profiles import RegisterField, check_fields, load_profiles, select_fields
from drivers.modbus.source import ModbusSource, flagged

PROFILES = {name: p for name, p in load_profiles().items() if p.discovery == "static"}
SPECIAL_WORDS = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7F80, 0xFF80, 0x7FC0, 0x7FF0, 0x7FF8, 0x4120]


def reference(
    fields: Sequence[RegisterField],
    requests: Sequence[ReadRequest],
    responses: Sequence[tuple[Sequence[int], float]],
    slot: float | None,
) -> tuple[Sample, ...]:
    """The decoding ModbusSource did before it compiled its plans."""
    registers: dict[str, Sequence[int]] = {}
    times: dict[str, float] = {}
    for request, (words, now) in zip(requests, responses, strict=False):
        for key, regs in slice_response(request, words).items():
            registers[key], times[key] = regs, now
    formats: dict[str, FieldFormat] = {f.name: f for f in fields if f.name in registers}
    decoded: dict[str, Decoded] = decode_fields(formats, registers)
    out = []
    for f in fields:
        value = decoded.get(f.name)
        if f.quantity is None or value is None or isinstance(value, str):
            continue
        value = flagged(f, value, decoded)
        out.append(Sample("m1", f.quantity, value, times[f.name], "modbus", slot))
    return tuple(out)


def words_for(request: ReadRequest, data: st.DataObject) -> list[int]:
    if request.function in BIT_FUNCTIONS:
        return data.draw(st.lists(st.integers(0, 1), min_size=request.count, max_size=request.count))
    word = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(SPECIAL_WORDS))
    return data.draw(st.lists(word, min_size=request.count, max_size=request.count))


def same(fields: Sequence[RegisterField], groups: Sequence[str], max_gap: int, data: st.DataObject) -> None:
    requests = plan_reads((f.span(1) for f in select_fields(fields, groups)), max_gap=max_gap)
    compiled = PlanDecoder(requests, fields)
    assert compiled.requests == tuple(requests)
    read = data.draw(st.integers(0, len(requests)), label="requests answered")
    responses = [(words_for(r, data), 1000.0 + i) for i, r in enumerate(requests[:read])]
    slot = data.draw(st.none() | st.just(999.0))
    try:
        want = reference(fields, requests, responses, slot)
    except (CodecError, OverflowError) as exc:  # a coil that is no bit; 10.0 ** a huge scale factor
        with pytest.raises(type(exc)):
            compiled.samples("m1", responses, slot, "modbus")
        return
    got = compiled.samples("m1", responses, slot, "modbus")
    assert got == want
    assert repr(got) == repr(want)  # -0.0 and 0.0 compare equal; the samples carry the same one


@pytest.mark.parametrize("name", sorted(PROFILES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_profile_samples_equal_the_reference_decoding(name: str, data: st.DataObject) -> None:
    profile = PROFILES[name]
    groups = sorted({f.poll_group for f in profile.fields})
    chosen = data.draw(st.lists(st.sampled_from(groups), min_size=1, unique=True), label="groups")
    same(profile.fields, chosen, profile.max_gap, data)


NUMERIC = [t for t in RegisterType if t not in (RegisterType.STRING, RegisterType.BIT)]


@st.composite
def field_sets(draw: st.DrawFn) -> list[RegisterField]:
    """Valid field sets: every type and order, overlapping addresses, scale factors, flags."""
    out: list[RegisterField] = []
    for i in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["number", "number", "sunssf", "string", "bits", "coil"]))
        spec: dict[str, object] = {"name": f"f{i}", "quantity": f"q{i}", "address": draw(st.integers(0, 24))}
        if kind == "number":
            rtype = draw(st.sampled_from(NUMERIC))
            spec |= {"type": rtype.value, "order": draw(st.sampled_from(list(ByteOrder))).value,
                     "scale": draw(st.sampled_from([1.0, 0.1, 10.0, -2.5, 1e300])),
                     "not_implemented": draw(st.sampled_from(["none", "sunspec", (0, 65535, -1)])),
                     "function": draw(st.sampled_from([3, 4]))}  # fmt: skip
            sfs = [f.name for f in out if f.type is RegisterType.SUNSSF]
            if sfs:
                spec["scale_factor"] = draw(st.sampled_from([None, *sfs]))
            flags = [f.name for f in out if f.kind == "status" and f.type is not RegisterType.BIT]
            spec["invalid_when"] = (
                tuple(draw(st.lists(st.sampled_from(flags), unique=True, max_size=2))) if flags else ()
            )
            spec["kind"] = draw(st.sampled_from(["gauge", "counter"]))
        elif kind == "sunssf":
            spec |= {"type": "sunssf", "not_implemented": "sunspec", "function": 3,
                     "quantity": draw(st.sampled_from([None, f"q{i}"])), "kind": "info"}  # fmt: skip
        elif kind == "string":
            spec |= {"type": "string", "length": draw(st.integers(1, 4)), "kind": "info",
                     "order": draw(st.sampled_from(["AB", "BA"])), "function": 3}  # fmt: skip
        elif kind == "bits":
            word_type = draw(st.sampled_from(["uint16", "int16", "uint32", "int64"]))
            spec |= {"type": word_type, "bit": draw(st.integers(0, 15)), "bits": draw(st.integers(1, 3)),
                     "order": "BA" if word_type in ("uint16", "int16") else "CDAB", "function": 3,
                     "not_implemented": draw(st.sampled_from(["none", "sunspec"]))}  # fmt: skip
        else:
            spec |= {"function": draw(st.sampled_from([1, 2]))}
        try:
            out.append(RegisterField.model_validate(spec))
        except ValidationError:
            assume(False)
    assume(not check_fields(out))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=field_sets(), max_gap=st.sampled_from([0, 4, 64]), data=st.data())
def test_random_field_sets_decode_as_the_reference(
    fields: list[RegisterField], max_gap: int, data: st.DataObject
) -> None:
    groups = sorted({f.poll_group for f in fields})
    same(fields, groups, max_gap, data)


@given(
    rtype=st.sampled_from(NUMERIC),
    order=st.sampled_from(list(ByteOrder)),
    words=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
)
def test_each_order_unpacks_the_raw_value_decode_raw_gives(
    rtype: RegisterType, order: ByteOrder, words: list[int]
) -> None:
    try:
        field = RegisterField(name="x", address=0, type=rtype, order=order)
    except ValidationError:
        assume(False)
    regs = words[: field.registers]
    raw: dict[str, int | float] = {}
    PlanDecoder(plan_reads([field.span(1)]), [field]).blocks[0].unpack(regs, raw, {})
    want = decode_raw(regs, field)
    assert type(raw["x"]) is type(want)
    assert (
        struct.pack(">d", raw["x"]) == struct.pack(">d", want)
        if isinstance(want, float)
        else raw["x"] == want
    ), layout(field)


def test_a_coil_that_is_not_a_bit_still_raises_as_before() -> None:
    coil = RegisterField(name="c", quantity="c", function=1, address=0, type=RegisterType.BIT)
    requests = plan_reads([coil.span(1)])
    with pytest.raises(CodecError):
        PlanDecoder(requests, [coil]).samples("m1", [([2], 0.0)], None, "modbus")
    with pytest.raises(CodecError):
        reference([coil], requests, [([2], 0.0)], None)


def test_the_source_caches_one_compiled_plan_per_group_set() -> None:
    profile = PROFILES["sdm630"]

    class Unused:
        label = "none"

    source = ModbusSource("m1", profile.fields, Unused(), ManualClock(0.0), unit=1, max_gap=profile.max_gap)  # type: ignore[arg-type]
    assert source.plan(["fast", "slow"]) == source.plan(("slow", "fast"))
    assert source._compiled(["fast", "slow"]) is source._compiled(frozenset({"slow", "fast"}))
    assert [len(r.fields) for r in source.plan(["fast", "slow"])] == [13]


@given(
    meter=st.text(max_size=5),
    quantity=st.text(max_size=5),
    value=st.floats(allow_nan=False)
    | st.builds(Invalid, st.sampled_from(["nan", "flagged"]), st.text(max_size=3)),
    time=st.floats(allow_nan=False),
    source=st.text(max_size=5),
    slot=st.none() | st.floats(allow_nan=False),
)
def test_new_sample_is_the_sample_the_dataclass_builds(
    meter: str, quantity: str, value: float | Invalid, time: float, source: str, slot: float | None
) -> None:
    fast, slow = (
        new_sample(meter, quantity, value, time, source, slot),
        Sample(meter, quantity, value, time, source, slot),
    )
    assert type(fast) is Sample
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = 0.0  # type: ignore[misc]
