"""Drop records name dropped intervals as runs per meter quantity (evidence.coalesce_refs)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from evidence.records import DropRecord, IntervalRef, coalesce_refs, decode_record, encode_record

L = 900
T0 = 1_767_225_600


def expand(runs: tuple[IntervalRef, ...]) -> set[IntervalRef]:
    return {IntervalRef(r.meter, r.quantity, s, s + L) for r in runs for s in range(r.start, r.end, L)}


refs = st.lists(
    st.builds(
        lambda m, q, k: IntervalRef(f"m{m}", q, T0 + k * L, T0 + (k + 1) * L),
        st.integers(0, 2),
        st.sampled_from(["energy_import", "energy_export"]),
        st.integers(0, 60),
    ),
    max_size=200,
)


@given(refs)
def test_runs_name_exactly_the_same_intervals_and_never_bridge_a_hole(items: list[IntervalRef]) -> None:
    runs = coalesce_refs(items)
    assert expand(runs) == set(items)
    series = {(r.meter, r.quantity) for r in items}
    blocks = sum(  # maximal blocks of consecutive intervals, per series
        1 for r in set(items) if IntervalRef(r.meter, r.quantity, r.start - L, r.start) not in set(items)
    )
    assert len(runs) == blocks >= len(series)
    assert coalesce_refs(runs) == runs  # already coalesced
    for r in runs:
        assert all(r.covers(x.meter, x.quantity, x.start, x.end) for x in expand((r,)))
        assert not r.covers(r.meter, r.quantity, r.end, r.end + L)


def test_a_month_of_dropped_intervals_is_one_run_per_series() -> None:
    month = [
        IntervalRef(f"meter-{m:02d}", "energy_import", T0 + k * L, T0 + (k + 1) * L)
        for m in range(50)
        for k in range(30 * 96)
    ]
    record = DropRecord("outbox_cap", "drop_oldest", (), coalesce_refs(month))
    encoded = encode_record(record)
    assert len(record.intervals) == 50
    assert len(encoded) < 6_000  # against 144,000 refs of about 80 bytes: 11.5 MB
    assert decode_record(encoded) == record
