"""encode_records (msgspec on the plain records, one call a batch) writes exactly the bytes of
encode_record, record by record, for every record: plain, awkward, or of another type."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evidence.errors import MalformedRecord
from evidence.records import (
    DropRecord,
    IntervalRecord,
    KeyRotationRecord,
    Stats,
    encode_record,
    encode_records,
)
from tests.evidence.test_records import interval_records

# Values each side of where repr switches to an exponent, ints where floats are declared, and
# strings msgspec would spell otherwise (non-ASCII, control characters, quotes, DEL).
awkward_floats = st.sampled_from(
    [0.0, -0.0, 1e-4, 9.999e-5, -1e-4, 1e-5, 1e16, 9999999999999998.0, -1e16, 1.5e300, 5e-324, 15234.125]
)
awkward_text = st.sampled_from(["m1", "mé", "a\nb", 'q"', "b\\s", "d\x7f", "t\x01", "e-1", "电表"])


def _plain(i: int) -> IntervalRecord:
    return IntervalRecord(
        meter=f"m{i}", quantity="energy_import", unit="kWh", start=900 * i, end=900 * (i + 1),
        counter_start=1.5 + i, counter_start_time_ms=1000 * i, counter_end=2.5 + i,
        counter_end_time_ms=1000 * i + 500, delta=1.0, stats=Stats("W", 0.0, 1.25, 2.5),
        samples=90, expected=90,
    )  # fmt: skip


@given(st.lists(interval_records(), max_size=20))
def test_same_bytes_as_encode_record(records: list[IntervalRecord]) -> None:
    assert encode_records(records) == [encode_record(r) for r in records]


@given(st.lists(st.tuples(awkward_floats, awkward_text, st.sampled_from([1, 2**70, True])), max_size=10))
def test_awkward_values_mixed_with_plain_records(values: list[tuple[float, str, int]]) -> None:
    records: list[IntervalRecord] = []
    for i, (x, text, n) in enumerate(values):
        records.append(_plain(i))
        records.append(
            IntervalRecord(
                meter=text,
                quantity="q",
                unit="u",
                start=0,
                end=n + 1,
                counter_start=x,
                counter_end=float(n),
                delta=x,
                stats=Stats(text, x, x, x),
                samples=n,
            )
        )
    assert encode_records(records) == [encode_record(r) for r in records]


def test_plain_records_take_the_batch_path_and_others_keep_their_place() -> None:
    drop = DropRecord("outbox_cap", "drop_oldest", (), ())
    records = [_plain(0), KeyRotationRecord("k", "cHVi", 3), _plain(1), drop]
    assert encode_records(records) == [encode_record(r) for r in records]
    assert encode_records([]) == []


def test_nan_is_refused_as_encode_record_refuses_it() -> None:
    bad = IntervalRecord(meter="m9", quantity="energy_import", unit="kWh", start=0, end=900, delta=math.nan)
    with pytest.raises(MalformedRecord, match="m9/energy_import@0"):
        encode_records([_plain(0), bad])
