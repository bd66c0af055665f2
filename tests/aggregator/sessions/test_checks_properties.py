"""Property tests of the record checks: whatever the order and overlap of the sessions
offered, what the continuity check takes never overlaps on a connector and its readings never
go back; an energy off its readings beyond the tolerance is always refused."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.sessions.checks import Span, check_continuity, check_record
from aggregator.sessions.records import SessionRecord

session = st.tuples(
    st.integers(0, 2),  # connector
    st.integers(0, 200),  # start minute
    st.integers(1, 120),  # minutes
    st.integers(0, 500),  # start reading, kWh
    st.integers(0, 60),  # kWh delivered
)


def _record(i: int, c: int, start: int, minutes: int, reading: int, kwh: int) -> SessionRecord:
    return SessionRecord(
        "net", f"s{i}", "cp", str(c), start * 60_000, (start + minutes) * 60_000,
        reading * 1000.0, (reading + kwh) * 1000.0, kwh * 1000.0,
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(session, max_size=25), st.lists(session, max_size=5))
def test_taken_sessions_never_overlap_and_readings_never_go_back(
    offered: list[tuple[int, int, int, int, int]], held: list[tuple[int, int, int, int, int]]
) -> None:
    held_taken, _ = check_continuity([_record(100 + i, *h) for i, h in enumerate(held)], {})
    by_connector: dict[tuple[str, str, str], list[Span]] = {}
    for r in held_taken:
        by_connector.setdefault(r.connector_key, []).append(Span.of(r))
    records = [_record(i, *o) for i, o in enumerate(offered)]
    taken, refused = check_continuity(records, by_connector)
    assert len(taken) + len(refused) == len(records)
    for key in {r.connector_key for r in [*taken, *held_taken]}:
        spans = [*by_connector.get(key, []), *(Span.of(r) for r in taken if r.connector_key == key)]
        line = sorted(spans, key=lambda s: s.start_ms)
        for a, b in itertools.pairwise(line):
            assert a.stop_ms <= b.start_ms and a.stop_wh <= b.start_wh
    assert all(r.field in {"start", "stop", "start_reading", "stop_reading"} for r in refused)


@given(st.floats(0, 1e7), st.floats(0, 1e5), st.floats(-100, 100), st.integers(1, 10_000))
def test_energy_off_its_readings_beyond_the_tolerance_is_refused(
    reading: float, delivered: float, off: float, minutes: int
) -> None:
    r = SessionRecord(
        "net", "s", "cp", "1", 0, minutes * 60_000, reading, reading + delivered, delivered + off
    )
    why = check_record(r, now_ms=10**12)
    read = (reading + delivered) - reading
    if abs(delivered + off - read) > 10.0 + 0.001 * read + 1e-6:
        assert why is not None and why.field == "energy"
