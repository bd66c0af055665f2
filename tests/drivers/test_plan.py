"""Request planning: coverage, limits, gaps, stability; the SDM630 costs one or two requests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import PlanError, ResponseLengthError
from drivers.modbus.plan import RegisterSpan, plan_reads, slice_response
from drivers.modbus.profiles import load_profiles

span_st = st.builds(
    lambda i, unit, fc, addr, count: RegisterSpan(f"f{i}", unit, fc, addr, count),
    st.integers(),
    st.integers(1, 2),
    st.sampled_from([3, 4]),
    st.integers(0, 600),
    st.integers(1, 8),
)


@settings(max_examples=300, deadline=None)
@given(spans=st.lists(span_st, max_size=60, unique_by=lambda s: s.key), max_gap=st.integers(0, 30),
       max_registers=st.integers(8, 125))  # fmt: skip
def test_every_field_in_exactly_one_request_within_limits(
    spans: list[RegisterSpan], max_gap: int, max_registers: int
) -> None:
    plan = plan_reads(spans, max_registers=max_registers, max_gap=max_gap)
    carried = [f for r in plan for f in r.fields]
    assert sorted(f.key for f in carried) == sorted(s.key for s in spans)
    for r in plan:
        assert r.count <= max_registers
        for f in r.fields:
            assert (f.unit, f.function) == (r.unit, r.function)
            assert r.address <= f.address and f.end <= r.address + r.count
        ordered = sorted(r.fields, key=lambda f: f.address)
        reach = ordered[0].end
        for f in ordered[1:]:
            assert f.address - reach <= max_gap
            reach = max(reach, f.end)
    shuffled = list(spans)
    random.Random(1).shuffle(shuffled)
    assert plan_reads(shuffled, max_registers=max_registers, max_gap=max_gap) == plan


@settings(max_examples=200, deadline=None)
@given(st.lists(span_st, min_size=1, max_size=30, unique_by=lambda s: s.key), st.integers(0, 10))
def test_plan_is_minimal_against_brute_force_lower_bound(spans: list[RegisterSpan], max_gap: int) -> None:
    # Requests of one (unit, fc) group never merge across a hole larger than max_gap, so the
    # number of "islands" is a lower bound; with a large limit the plan must meet it.
    plan = plan_reads(spans, max_registers=125, max_gap=max_gap)
    islands = 0
    for key in {(s.unit, s.function) for s in spans}:
        group = sorted((s for s in spans if (s.unit, s.function) == key), key=lambda s: s.address)
        reach = None
        for s in group:
            if reach is None or s.address - reach > max_gap:
                islands += 1
                reach = s.end
            reach = max(reach, s.end)
    assert len(plan) >= islands
    assert len(plan) == islands or any(r.count > 100 for r in plan)


def test_slice_response_gives_each_field_its_registers() -> None:
    spans = [RegisterSpan("a", 1, 4, 10, 2), RegisterSpan("b", 1, 4, 14, 1)]
    [req] = plan_reads(spans, max_gap=2)
    assert (req.address, req.count) == (10, 5)
    assert slice_response(req, [1, 2, 3, 4, 5]) == {"a": [1, 2], "b": [5]}
    with pytest.raises(ResponseLengthError):
        slice_response(req, [1, 2])


def test_limits_are_enforced() -> None:
    with pytest.raises(PlanError):
        plan_reads([RegisterSpan("a", 1, 3, 0, 126)])
    with pytest.raises(PlanError):
        plan_reads([RegisterSpan("a", 1, 3, 0, 1), RegisterSpan("a", 1, 3, 5, 1)])
    with pytest.raises(PlanError):
        plan_reads([RegisterSpan("a", 1, 3, 65535, 2)])
    assert len(plan_reads([RegisterSpan(f"r{i}", 1, 3, i, 1) for i in range(250)])) == 2


def test_sdm630_profile_costs_at_most_two_requests_per_cycle() -> None:
    profile = load_profiles()["sdm630"]
    fields = [f for f in profile.fields if f.poll_group != "identity"]
    plan = plan_reads([f.span(1) for f in fields], max_gap=profile.max_gap)
    assert len(plan) <= 2
    assert len(plan_reads([f.span(1) for f in profile.fields], max_gap=profile.max_gap)) <= 2
