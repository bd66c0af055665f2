"""The one backoff (common.backoff): exponential, capped, jittered downwards only."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.backoff import Backoff

seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
multipliers = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)
jitters = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
attempts = st.integers(min_value=0, max_value=5000)


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    return Backoff(
        base_s=draw(seconds),
        max_s=draw(seconds),
        multiplier=draw(multipliers),
        jitter=draw(jitters),
        rng=random.Random(draw(st.integers())),
    )


@given(backoffs(), attempts)
def test_a_delay_is_the_capped_exponential_reduced_by_at_most_the_jitter(b: Backoff, attempt: int) -> None:
    raw = min(b.max_s, float(Decimal(b.base_s) * Decimal(b.multiplier) ** attempt))  # no overflow
    assert b.ceiling(attempt) == pytest.approx(raw, rel=1e-9)
    delay = b.delay(attempt)
    assert (1.0 - b.jitter) * b.ceiling(attempt) <= delay <= b.ceiling(attempt) <= b.max_s


@given(backoffs(), st.lists(attempts, min_size=2, max_size=20))
def test_the_ceiling_never_falls_as_attempts_grow(b: Backoff, tries: list[int]) -> None:
    ceilings = [b.ceiling(a) for a in sorted(tries)]
    assert ceilings == sorted(ceilings)


def test_jitter_spreads_delays_and_the_rng_repeats_them() -> None:
    def delays(seed: int) -> list[float]:
        b = Backoff(base_s=1.0, max_s=8.0, jitter=0.5, rng=random.Random(seed))
        return [b.delay(a) for a in range(6) for _ in range(20)]

    first = delays(1)
    assert first == delays(1)
    assert len(set(first[:20])) == 20  # attempt 0: twenty different waits in [0.5, 1]
    assert max(first[-20:]) <= 8.0 and min(first[-20:]) >= 4.0


def test_without_jitter_the_sequence_doubles_up_to_the_cap() -> None:
    b = Backoff(base_s=0.5, max_s=5.0, jitter=0.0)
    assert [b.delay(a) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert b.delay(10**6) == 5.0  # no overflow far beyond the cap


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"base_s": -1.0, "max_s": 1.0}, "base_s >= 0"),
        ({"base_s": float("nan"), "max_s": 1.0}, "base_s >= 0"),
        ({"base_s": 1.0, "max_s": 1.0, "multiplier": 0.5}, "multiplier >= 1"),
        ({"base_s": 1.0, "max_s": 1.0, "jitter": 1.5}, "jitter must be within"),
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Backoff(**kwargs)


def test_a_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        Backoff(base_s=1.0, max_s=2.0).delay(-1)
