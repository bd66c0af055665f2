"""The interval line builder (fast and general path) writes exactly what the generic line
protocol encoder writes for the documented schema (docs/influx-schema.md)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.influx import Point, encode_point
from aggregator.influx_writer import STATUS_VERIFIED, interval_lines
from aggregator.records import IntervalDoc, StatsDoc
from evidence.records import FLAGS, IntervalRecord, Stats

finite = st.floats(allow_nan=False, allow_infinity=False)
name = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6).filter(
    lambda s: not s.endswith("\\")
)
stats = st.builds(StatsDoc, unit=st.sampled_from(["kW", "W", '"q,= x']), min=finite, avg=finite, max=finite)


@st.composite
def records(draw: Any) -> IntervalDoc:
    start = draw(st.integers(0, 2**40))
    return IntervalDoc(
        type="interval",
        meter=draw(name),
        quantity=draw(st.sampled_from(["energy_import", "heat energy"])),
        unit=draw(st.sampled_from(["kWh", 'we"i,r=d x'])),
        start=start,
        end=start + draw(st.integers(1, 3600)),
        kind=draw(st.sampled_from(["counter", "gauge"])),
        counter_start=draw(st.none() | finite),
        counter_start_time_ms=draw(st.none() | st.integers(0, 2**50)),
        counter_end=draw(st.none() | finite),
        counter_end_time_ms=draw(st.none() | st.integers(0, 2**50)),
        delta=draw(st.none() | finite),
        stats=draw(st.none() | stats),
        samples=draw(st.integers(0, 1000)),
        expected=draw(st.integers(0, 1000)),
        flags=tuple(draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=3))),  # type: ignore[arg-type]
    )


def reference(gateway: str, seq: int, index: int, r: IntervalDoc, issues: tuple[str, ...]) -> str:
    fields: dict[str, Any] = {}
    for key in ("delta", "counter_start", "counter_end"):
        if getattr(r, key) is not None:
            fields[key] = float(getattr(r, key))
    for key in ("counter_start_time_ms", "counter_end_time_ms"):
        if getattr(r, key) is not None:
            fields[key] = getattr(r, key)
    if r.stats is not None:
        fields |= {"stat_min": r.stats.min, "stat_avg": r.stats.avg, "stat_max": r.stats.max}
    fields |= {
        "samples": r.samples, "expected": r.expected, "interval_s": r.end - r.start,
        "flags": ",".join(r.flags), "issues": ",".join(issues), "plausible": not issues,
        "batch_seq": seq, "batch_index": index,
    }  # fmt: skip
    tags = {"gateway": gateway, "meter": r.meter, "quantity": r.quantity, "unit": r.unit, "kind": r.kind,
            "status": STATUS_VERIFIED}  # fmt: skip
    if r.stats is not None:
        tags["stat_unit"] = r.stats.unit
    return encode_point(Point("puhui_interval", tags, fields, r.start * 1000))


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(records(), st.sampled_from([(), ("low_coverage",), ("a", "b")])), max_size=6),
    seq=st.integers(1, 2**40),
)
def test_lines_equal_the_generic_encoder(rows: list[tuple[IntervalDoc, tuple[str, ...]]], seq: int) -> None:
    items = [(i * 3, r, issues) for i, (r, issues) in enumerate(rows)]
    got = interval_lines("puhui_interval", "gw a", seq, items)
    assert got == [reference("gw a", seq, i, r, issues) for i, r, issues in items]


def test_evidence_interval_records_take_the_same_path() -> None:
    record = IntervalRecord("m", "energy_import", "kWh", 0, 900, "counter", 1.0, 5, 2.0, 895_000, 1.0,
                            Stats("kW", 1.0, 2.0, 3.0), 90, 90, ("first",))  # fmt: skip
    doc = IntervalDoc("interval", "m", "energy_import", "kWh", 0, 900, "counter", 1.0, 5, 2.0, 895_000, 1.0,
                      StatsDoc("kW", 1.0, 2.0, 3.0), 90, 90, ("first",))  # fmt: skip
    lines = interval_lines("puhui_interval", "gw", 1, [(0, record, ()), (1, doc, ())])
    assert lines[0].replace("batch_index=0i", "batch_index=1i") == lines[1]
    assert ",counter_end=2.0," in lines[0] and ",plausible=true," in lines[0]
