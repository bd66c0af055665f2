"""The object path: attested intervals -> the engine's series x slot matrices.

The data policy is applied here, one interval at a time, in this order (the first that
applies is the interval's reason, so every excluded interval is counted once):

1. ``calibration_expired``: the interval ends after its meter's calibration validity
   (parameter sets with ``meter_accuracy``: :mod:`.accuracy`);
2. ``implausible:<issue>``: the aggregator's plausibility checks flagged it;
3. ``not_a_counter``: a gauge record for a counted quantity;
4. ``flag:<flag>``: a flag the parameter set's ``data_policy`` excludes (records' flags are
   sorted, so the first excluded flag in alphabetical order names the reason);
5. ``no_delta``: the counter delta is null;
6. ``unknown_unit:<unit>``: a unit the engine cannot convert.

Records whose length is not the subject's interval length or that are not aligned to the
period's grid are ``interval_length`` / ``misaligned``; two records for the same slot are
``duplicate_record`` (both excluded: the evidence contradicts itself). A slot without a
record is *missing* (reported, never filled in).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from aggregator.methodology.scenario import ROLE_UNITS, ScenarioRules
from aggregator.view import AttestedInterval, BatchRef
from evidence.records import IntervalRecord

if TYPE_CHECKING:
    from aggregator.methodology.subject import Period, Subject

OK, MISSING = 0, 1
PLACEHOLDER_ROLE = "none"  # a meter that delivered no usable series: its unit earns nothing


@dataclass(frozen=True, slots=True)
class SeriesKey:
    meter: str
    quantity: str
    role: str


@dataclass(slots=True)
class SeriesArrays:
    """Rows = series (sorted by unit), columns = interval slots of the period.

    ``values`` holds the activity in the role's unit (MWh or GJ), 0 where not credited-quality;
    ``status`` is 0 (ok), 1 (missing) or an index into ``reasons``.
    """

    keys: list[SeriesKey]
    unit_of_row: np.ndarray
    values: np.ndarray
    status: np.ndarray
    reasons: list[str] = field(default_factory=lambda: ["ok", "missing"])
    off_grid: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class EvidenceIndex:
    """The batches and plausibility verdicts the subject's intervals came from."""

    batches: dict[int, BatchRef] = field(default_factory=dict)
    implausible: list[tuple[str, str, int, tuple[str, ...]]] = field(default_factory=list)


def exclusion_reason(
    ai: AttestedInterval,
    flags: Mapping[str, str],
    factors: Mapping[str, float],
    valid_until: int | None = None,
) -> str | None:
    """Why this interval earns nothing, or None if it is credited-quality. ``valid_until``:
    when the meter's calibration ends (POSIX seconds), if the parameter set checks it."""
    rec = ai.record
    if valid_until is not None and rec.end > valid_until:
        return "calibration_expired"
    if ai.issues:
        return f"implausible:{sorted(ai.issues)[0]}"
    if rec.kind != "counter":
        return "not_a_counter"
    for flag in sorted(rec.flags):
        if flags.get(flag, "exclude") == "exclude":
            return f"flag:{flag}"
    if rec.delta is None:
        return "no_delta"
    if rec.unit not in factors:
        return f"unknown_unit:{rec.unit}"
    if rec.delta < 0:
        return "negative_delta"
    return None


def _rows(
    items: Sequence[AttestedInterval], subject: Subject, rules: ScenarioRules
) -> tuple[list[SeriesKey], list[int]]:
    quantities: dict[str, set[str]] = {m: set() for m in subject.meters}
    for ai in items:
        if ai.record.meter in quantities:
            quantities[ai.record.meter].add(ai.record.quantity)
    keys: list[SeriesKey] = []
    units: list[int] = []
    for u, unit in enumerate(subject.units):
        for meter in unit.meters:
            pairs = rules.series_for(meter, quantities[meter]) or [("", PLACEHOLDER_ROLE)]
            keys += [SeriesKey(meter, q, role) for q, role in pairs]
            units += [u] * len(pairs)
    return keys, units


def build_series(
    items: Sequence[AttestedInterval],
    subject: Subject,
    rules: ScenarioRules,
    flags: Mapping[str, str],
    period: Period,
    interval_s: int,
    valid_until: Mapping[str, int] | None = None,
) -> tuple[SeriesArrays, EvidenceIndex]:
    """Place every relevant interval of the period in its (series, slot) cell.
    ``valid_until``: per meter, the end of its calibration validity (POSIX seconds)."""
    valid_until = valid_until or {}
    keys, units = _rows(items, subject, rules)
    row_of = {(k.meter, k.quantity): r for r, k in enumerate(keys)}
    n_slots = -(-period.seconds // interval_s)
    reasons = ["ok", "missing"]
    code_of = {r: c for c, r in enumerate(reasons)}
    off_grid: Counter[str] = Counter()
    evidence = EvidenceIndex()
    cells: list[int] = []
    values: list[float] = []
    codes: list[int] = []
    for ai in items:
        rec = ai.record
        row = row_of.get((rec.meter, rec.quantity))
        if row is None or ai.batch.gateway != subject.gateway:
            continue
        if rec.start < period.start or rec.end > period.end:
            continue
        evidence.batches.setdefault(ai.batch.seq, ai.batch)
        if ai.issues:
            evidence.implausible.append((rec.meter, rec.quantity, rec.start, tuple(sorted(ai.issues))))
        offset = rec.start - period.start
        if rec.end - rec.start != interval_s or offset % interval_s:
            off_grid["interval_length" if rec.end - rec.start != interval_s else "misaligned"] += 1
            continue
        factors = ROLE_UNITS[keys[row].role]
        reason = exclusion_reason(ai, flags, factors, valid_until.get(rec.meter))
        code = OK if reason is None else code_of.setdefault(reason, len(code_of))
        cells.append(row * n_slots + offset // interval_s)
        values.append(_value(rec, factors) if code == OK else 0.0)
        codes.append(code)
    arrays = _matrices(len(keys), n_slots, cells, values, codes, code_of, off_grid)
    reasons = list(code_of)
    if len(reasons) > 255:
        raise ValueError("more than 253 distinct exclusion reasons")
    evidence.implausible.sort()
    unit_of_row = np.array(units, dtype=np.intp)
    return SeriesArrays(keys, unit_of_row, *arrays, reasons=reasons, off_grid=dict(off_grid)), evidence


def _value(rec: IntervalRecord, factors: Mapping[str, float]) -> float:
    assert rec.delta is not None
    return rec.delta * factors[rec.unit]


def _matrices(
    n_rows: int,
    n_slots: int,
    cells: list[int],
    values: list[float],
    codes: list[int],
    code_of: dict[str, int],
    off_grid: Counter[str],
) -> tuple[np.ndarray, np.ndarray]:
    val = np.zeros(n_rows * n_slots)
    status = np.full(n_rows * n_slots, MISSING, np.uint8)
    if cells:
        c = np.array(cells, np.intp)
        val[c] = values
        status[c] = codes
        uniq, counts = np.unique(c, return_counts=True)
        dup = uniq[counts > 1]
        if len(dup):
            code = code_of.setdefault("duplicate_record", len(code_of))
            val[dup] = 0.0
            status[dup] = code
            off_grid["duplicate_record"] += int((counts[counts > 1] - 1).sum())  # the extra copies
    return val.reshape(n_rows, n_slots), status.reshape(n_rows, n_slots)
