"""float_texts writes a batch's floats as repr does, byte for byte, whatever the values."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aggregator.influx import float_texts

edges = st.sampled_from([0.0, -0.0, 1e-4, 9.99e-5, 1e-5, -3e-7, 1e16, 9999999999999998.0, 1.5e300, 5e-324])


@given(st.lists(st.floats(width=64) | edges, max_size=30))
def test_same_text_as_repr(values: list[float]) -> None:
    assert float_texts(values) == [repr(v) for v in values]


def test_plain_values_and_the_empty_batch() -> None:
    assert float_texts([1.375, 15234.125, 0.0, -2.5]) == ["1.375", "15234.125", "0.0", "-2.5"]
    assert float_texts([]) == []
