"""The methodology engine: attested intervals in, per-unit BE, PE, LE and ER out.

Two layers:

- :func:`evaluate`, the **array core**: a matrix of series x interval slots (activity in MWh
  or GJ, and a status code per slot) for every meter of a subject and the whole period,
  reduced with numpy. It knows nothing about records or batches; the benchmark feeds it
  arrays directly.
- :func:`compute`, the **object path**: reads :class:`AttestedInterval` from an
  :class:`EvidenceSource`, applies the data policy (:mod:`.series`), and calls the core.

Crediting rules applied here: a *unit* (a PV or EV meter, or a house's heating meters)
earns for a slot only if every one of its series has a credited interval there; its
completeness is credited time / period length; a unit below the parameter set's threshold
earns nothing for the period; credited activity is taken at the conservative end of each
meter's permissible error where the set says so; ER = max(0, BE - PE - LE) over the statement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from aggregator.methodology.accuracy import check_calibration, row_mpe, valid_until
from aggregator.methodology.assurance import AssuranceSplit, apply_assurance
from aggregator.methodology.baseline import HistoricalUse, baseline_caps
from aggregator.methodology.errors import ComputationError, IneligibleSubject
from aggregator.methodology.ev import EVRules
from aggregator.methodology.evaluation import Evaluation
from aggregator.methodology.heating import HeatingRules
from aggregator.methodology.meter_signed import SESSION_LEDGER, ChainLookup, read_chain_sessions
from aggregator.methodology.params import (
    EVMethod,
    GridFactor,
    HeatingMethod,
    LoadedParameterSet,
    ParameterSet,
    resolve_grid_factor,
)
from aggregator.methodology.pv import PVRules
from aggregator.methodology.scenario import Credited, ScenarioRules, Totals
from aggregator.methodology.series import MISSING, OK, EvidenceIndex, SeriesArrays, build_series
from aggregator.methodology.source import EvidenceSource
from aggregator.methodology.subject import Period, Subject, Unit
from aggregator.sessions.records import StoredSession
from aggregator.view import AttestedInterval, MeterInfo

DEFAULT_INTERVAL_S = 900


@dataclass(frozen=True, slots=True)
class EarlierClaims:
    """What a statement this one supplements already credited (a supplementary statement
    credits only what it did not): its credited runs, and its units' BE, which counts
    against their baseline caps. Built from the statement (``statements.earlier_claims``)."""

    statement: str
    er_tco2e: float
    runs: tuple[tuple[str, str, int, int], ...]  # (meter, quantity, start, end)
    unit_be: Mapping[str, float]


def rules_for(params: ParameterSet) -> ScenarioRules:
    m = params.method
    if isinstance(m, EVMethod):
        return EVRules(m)
    if isinstance(m, HeatingMethod):
        return HeatingRules(m)
    return PVRules(m)


def evaluate(
    series: SeriesArrays,
    n_units: int,
    rules: ScenarioRules,
    grid: np.ndarray,
    *,
    period: Period,
    interval_s: int,
    threshold: float,
    accuracy: np.ndarray | None = None,
    be_cap: np.ndarray | None = None,
    earlier: np.ndarray | None = None,
) -> Evaluation:
    """The array core: series x slots -> per-unit figures, counts and credited runs.

    ``accuracy``: per series row, the maximum permissible error of its meter (activity feeding
    BE is taken x (1 - MPE), feeding PE x (1 + MPE)); ``be_cap``: per unit, the most BE it
    may earn (tCO2, inf for no cap); ``earlier``: per series row and slot, credited by a
    statement this one supplements: such a slot counts towards completeness (the data are
    there) but earns nothing again."""
    ok = series.status == OK
    rows = series.unit_of_row
    valid_u = _all_per_unit(ok, rows, n_units)
    activity, present = _activity(series, rules.roles, n_units)
    rejects = rules.screen(activity, valid_u, present)
    valid = valid_u.copy()
    for mask in rejects.values():
        valid &= ~mask
    completeness = valid.sum(axis=1) * interval_s / period.seconds  # integers first: exact ratios
    credited = completeness >= threshold
    before = np.zeros_like(valid) if earlier is None else ~_all_per_unit(~earlier, rows, n_units)
    fresh = valid & ~before
    totals = {r: np.where(fresh, a, 0.0).sum(axis=1) * credited for r, a in activity.items()}
    used_rows = _per_row(fresh & credited[:, None], rows, n_units)
    bounds = Credited(totals, totals) if accuracy is None else _bounds(series, used_rows, totals, accuracy)
    figs = rules.figures(bounds, present, grid, period.year, be_cap)
    valid_rows, before_rows = _per_row(valid_u, rows, n_units), _per_row(before, rows, n_units)
    excluded = _reason_counts(series, ok, valid_rows, rejects, used_rows, credited, before_rows)
    return Evaluation(
        completeness=completeness,
        credited=credited,
        totals=totals,
        be=figs.be * credited,
        pe=figs.pe * credited,
        le=figs.le * credited,
        estimated=figs.estimated,
        used=int(used_rows.sum()),
        missing=int((series.status == MISSING).sum()),
        excluded=excluded,
        runs=_runs(used_rows, period.start, interval_s),
        bounds=None if accuracy is None else bounds,
        capped=None if figs.capped is None else figs.capped & credited,
    )


def _bounds(series: SeriesArrays, used_rows: np.ndarray, totals: Totals, mpe: np.ndarray) -> Credited:
    """Credited activity per role and unit with each row x (1 - MPE) and x (1 + MPE)."""
    row_sums = np.where(used_rows, series.values, 0.0).sum(axis=1)
    roles = np.array([k.role for k in series.keys], dtype=object)
    low: Totals = {}
    high: Totals = {}
    for role, total in totals.items():
        idx = roles == role
        units, sums = series.unit_of_row[idx], row_sums[idx]
        low[role] = np.bincount(units, weights=sums * (1.0 - mpe[idx]), minlength=len(total))
        high[role] = np.bincount(units, weights=sums * (1.0 + mpe[idx]), minlength=len(total))
    return Credited(low, high)


def _identity(rows: np.ndarray, n_units: int) -> bool:
    return len(rows) == n_units and bool(np.array_equal(rows, np.arange(n_units)))


def _all_per_unit(ok: np.ndarray, rows: np.ndarray, n_units: int) -> np.ndarray:
    """Per unit and slot: every series of the unit is credited-quality (rows sorted by unit)."""
    if _identity(rows, n_units):
        return ok
    out = np.zeros((n_units, ok.shape[1]), bool)
    counts = np.bincount(rows, minlength=n_units)
    has = counts > 0
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[has]
    if len(starts):
        out[has] = np.logical_and.reduceat(ok, starts, axis=0)
    return out


def _per_row(unit_mask: np.ndarray, rows: np.ndarray, n_units: int) -> np.ndarray:
    return unit_mask if _identity(rows, n_units) else unit_mask[rows]


def _activity(
    series: SeriesArrays, roles: Sequence[str], n_units: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    roles_of = np.array([k.role for k in series.keys], dtype=object)
    activity, present = {}, {}
    for role in roles:
        idx = np.flatnonzero(roles_of == role) if len(roles_of) else np.zeros(0, np.intp)
        units = series.unit_of_row[idx]
        if len(idx) == n_units and np.array_equal(units, np.arange(n_units)):
            activity[role] = series.values[idx] if len(idx) != len(roles_of) else series.values
        else:
            a = np.zeros((n_units, series.values.shape[1]))
            np.add.at(a, units, series.values[idx])
            activity[role] = a
        present[role] = np.bincount(units, minlength=n_units) > 0
    return activity, present


def _reason_counts(
    series: SeriesArrays,
    ok: np.ndarray,
    unit_valid_rows: np.ndarray,
    rejects: Mapping[str, np.ndarray],
    used_rows: np.ndarray,
    credited: np.ndarray,
    before_rows: np.ndarray,
) -> dict[str, int]:
    """Why each existing interval that was not used earned nothing (one reason each)."""
    counts = np.bincount(series.status.ravel(), minlength=len(series.reasons))
    out = {series.reasons[c]: int(n) for c, n in enumerate(counts) if c > MISSING and n}
    out.update(series.off_grid)
    rows, n_units = series.unit_of_row, len(credited)
    left = ok & unit_valid_rows
    _add(out, "partner_interval_excluded", int((ok & ~unit_valid_rows).sum()))
    for reason, mask in rejects.items():
        hit = left & _per_row(mask, rows, n_units)
        _add(out, reason, int(hit.sum()))
        left &= ~hit
    earlier = left & before_rows & _per_row(credited, rows, n_units)[:, None]
    _add(out, "credited_earlier", int(earlier.sum()))
    _add(out, "period_below_completeness", int((left & ~earlier & ~used_rows).sum()))
    return out


def _add(out: dict[str, int], reason: str, n: int) -> None:
    if n:
        out[reason] = out.get(reason, 0) + n


def _runs(used: np.ndarray, start: int, interval_s: int) -> list[list[tuple[int, int]]]:
    """Credited runs per row, as [start, end) seconds."""
    n_rows = used.shape[0]
    padded = np.zeros((n_rows, used.shape[1] + 2), np.int8)
    padded[:, 1:-1] = used
    edges = np.diff(padded, axis=1)
    r_on, c_on = np.nonzero(edges == 1)
    c_off = np.nonzero(edges == -1)[1]
    pairs = np.stack((start + c_on * interval_s, start + c_off * interval_s), axis=1).tolist()
    bounds = np.concatenate(([0], np.cumsum(np.bincount(r_on, minlength=n_rows)))).tolist()
    return [[(a, b) for a, b in pairs[bounds[r] : bounds[r + 1]]] for r in range(n_rows)]


@dataclass(frozen=True, slots=True)
class Computation:
    """Everything a statement is made of."""

    params: LoadedParameterSet
    subject: Subject
    period: Period
    interval_s: int
    meters: dict[str, MeterInfo]
    grid: list[GridFactor]  # per unit
    series: SeriesArrays
    evidence: EvidenceIndex
    result: Evaluation
    accuracy: np.ndarray | None = None  # per series row: the meter's MPE, with an accuracy discount
    be_cap: np.ndarray | None = None  # per unit: BE cap from recorded historical fuel use
    baselines: Mapping[str, HistoricalUse] = field(default_factory=dict)
    earlier: tuple[EarlierClaims, ...] = ()  # the statements this one supplements
    beneficiary: str | None = None  # the platform account the subject's reductions go to
    assurance: AssuranceSplit | None = None  # what each assurance level contributed (issue 24)

    def evaluate_values(self, values: np.ndarray, mask: np.ndarray, threshold: float = 0.0) -> Evaluation:
        """The same units, grid factors, accuracy and caps over other activity values (series x
        slots, in the engine's units) credited where ``mask`` is true: the demo's ground truth."""
        series = SeriesArrays(
            keys=self.series.keys,
            unit_of_row=self.series.unit_of_row,
            values=np.where(mask, values, 0.0),
            status=np.where(mask, OK, MISSING).astype(np.uint8),
        )
        return evaluate(
            series,
            len(self.subject.units),
            rules_for(self.params.params),
            np.array([g.value for g in self.grid]),
            period=self.period,
            interval_s=self.interval_s,
            threshold=threshold,
            accuracy=self.accuracy,
            be_cap=self.be_cap,
            earlier=_earlier_mask(self.series, self.period, self.interval_s, self.earlier),
        )


def compute(
    source: EvidenceSource,
    params: LoadedParameterSet,
    subject: Subject,
    period: Period,
    *,
    commissioned: Mapping[str, int] | None = None,
    baselines: Mapping[str, HistoricalUse] | None = None,
    earlier: Sequence[EarlierClaims] = (),
    beneficiary: str | None = None,
    sessions: Sequence[StoredSession] = (),
) -> Computation:
    """Compute a subject's reductions for a period from the evidence source; ``baselines``:
    recorded historical fuel use per heating unit (caps its BE, :mod:`.baseline`);
    ``earlier``: the statements of the same subject and period this one supplements;
    ``sessions``: a network's imported sessions, credited at platform_attested
    (:mod:`.assurance`). EV charging: the gateway's OCPP session records (chain sessions) are
    looked up in the source where it can (:mod:`.meter_signed`); meter-signed ones are credited
    at meter_signed in place of the intervals they span."""
    infos = _meter_infos(source, params.params, subject, period, commissioned or {})
    intervals = list(
        source.attested_intervals(
            gateway=subject.gateway, meters=subject.meters, start=period.start, end=period.end
        )
    )
    chain = (
        read_chain_sessions(source, subject, period)
        if params.params.method.scenario == "ev_charging"
        else None
    )
    return compute_from(
        intervals, infos, params, subject, period,
        baselines=baselines, earlier=earlier, beneficiary=beneficiary, sessions=sessions, chain=chain,
    )  # fmt: skip


def compute_from(
    intervals: Sequence[AttestedInterval],
    infos: dict[str, MeterInfo],
    params: LoadedParameterSet,
    subject: Subject,
    period: Period,
    *,
    baselines: Mapping[str, HistoricalUse] | None = None,
    earlier: Sequence[EarlierClaims] = (),
    beneficiary: str | None = None,
    sessions: Sequence[StoredSession] = (),
    chain: ChainLookup | None = None,
) -> Computation:
    """The object path over intervals already read (the verifier re-derives them); ``chain``:
    the chain sessions looked up (None: not considered, as before meter-signed crediting)."""
    items = list(intervals)
    p = params.params
    rules = rules_for(p)
    interval_s = _interval_length(items, subject)
    grid = [_grid_for(p, infos, u) for u in subject.units]
    until = valid_until(p, infos)
    series, evidence = build_series(items, subject, rules, p.data_policy.flags, period, interval_s, until)
    accuracy = row_mpe(p, infos, series.keys)
    be_cap = baseline_caps(p, subject, period, baselines or {})
    earlier = tuple(earlier)
    if earlier and be_cap is not None:  # the cap is the period's: what was credited before uses it up
        spent = np.array([sum(e.unit_be.get(u.id, 0.0) for e in earlier) for u in subject.units])
        be_cap = np.maximum(be_cap - spent, 0.0)
    before = _earlier_mask(series, period, interval_s, earlier)
    result = evaluate(
        series,
        len(subject.units),
        rules,
        np.array([g.value for g in grid]),
        period=period,
        interval_s=interval_s,
        threshold=p.completeness.threshold,
        accuracy=accuracy,
        be_cap=be_cap,
        earlier=before,
    )
    grid_values = np.array([g.value for g in grid])
    result, split = apply_assurance(
        result,
        rules,
        series,
        subject,
        period,
        grid_values,
        p.refused_assurance,
        sessions,
        _session_mpe(p, infos),
        chain,
        interval_s,
        accuracy,
        frozenset((m, a, b) for e in earlier for m, q, a, b in e.runs if q == SESSION_LEDGER),
        before,
    )
    return Computation(
        params, subject, period, interval_s, infos, grid, series, evidence, result, accuracy, be_cap,
        dict(baselines or {}), earlier, beneficiary, split,
    )  # fmt: skip


def _session_mpe(params: ParameterSet, infos: Mapping[str, MeterInfo]) -> dict[str, float]:
    """Per charger: the permissible error of its enrolled meter's class, with an accuracy
    discount (the network's sessions are read from that meter), else 0."""
    acc = params.meter_accuracy
    if acc is None or not acc.discount:
        return {}
    return {m: acc.mpe[i.meter_class].value for m, i in infos.items() if i.meter_class in acc.mpe}


def _earlier_mask(
    series: SeriesArrays, period: Period, interval_s: int, earlier: Sequence[EarlierClaims]
) -> np.ndarray | None:
    """Per series row and slot: credited by one of the ``earlier`` statements."""
    if not earlier:
        return None
    n_rows, n_slots = series.status.shape
    mask = np.zeros((n_rows, n_slots), bool)
    row_of = {(k.meter, k.quantity): r for r, k in enumerate(series.keys)}
    for claims in earlier:
        for meter, quantity, start, end in claims.runs:
            row = row_of.get((meter, quantity))
            if row is None:
                continue
            a = max(0, (start - period.start) // interval_s)
            b = min(n_slots, -(-(end - period.start) // interval_s))
            if a < b:
                mask[row, a:b] = True
    return mask


def _interval_length(items: Sequence[AttestedInterval], subject: Subject) -> int:
    meters = set(subject.meters)
    lengths = Counter(i.record.end - i.record.start for i in items if i.record.meter in meters)
    return lengths.most_common(1)[0][0] if lengths else DEFAULT_INTERVAL_S


def _grid_for(params: ParameterSet, infos: Mapping[str, MeterInfo], unit: Unit) -> GridFactor:
    regions = sorted({(infos[m].region or "").lower() for m in unit.meters})
    if len(regions) > 1:
        raise ComputationError(f"unit {unit.id}: meters name different grid regions {regions}")
    check_scope(params, {m: infos[m] for m in unit.meters})
    try:
        return resolve_grid_factor(params, regions[0] or None)
    except ValueError as exc:
        raise ComputationError(f"unit {unit.id}: {exc}") from exc


def _meter_infos(
    source: EvidenceSource,
    params: ParameterSet,
    subject: Subject,
    period: Period,
    commissioned: Mapping[str, int],
) -> dict[str, MeterInfo]:
    known = {m.meter: m for m in source.meters() if m.gateway == subject.gateway}
    missing = [m for m in subject.meters if m not in known]
    if missing:
        raise ComputationError(f"gateway {subject.gateway}: meters {missing} are not enrolled")
    infos = {m: known[m] for m in subject.meters}
    check_eligibility(params, infos, period, commissioned)
    return infos


def check_eligibility(
    params: ParameterSet, infos: Mapping[str, MeterInfo], period: Period, commissioned: Mapping[str, int]
) -> None:
    """Scenario, programme region, size cap, calibration and meter class, crediting life;
    raise :class:`IneligibleSubject`."""
    scenario = params.method.scenario
    wrong = sorted(m for m, i in infos.items() if i.scenario != scenario)
    if wrong:
        raise IneligibleSubject(f"meters {wrong} are not enrolled for {scenario} ({params.id})")
    check_scope(params, infos)
    check_calibration(params, infos, period)
    cap = params.eligibility.max_rated_power_kw
    if cap is not None:
        big = sorted(f"{m} ({i.rated_power_kw} kW)" for m, i in infos.items() if i.rated_power_kw > cap.value)
        if big:
            raise IneligibleSubject(
                f"{params.id}: {', '.join(big)} above the size cap {cap.value} kW ({cap.source})"
            )
    life = params.eligibility.crediting_life_years
    for meter, since in commissioned.items():
        if life is not None and meter in infos:
            last = datetime.fromtimestamp(since, UTC).replace(tzinfo=None)
            limit = last.replace(year=last.year + int(life.value)).replace(tzinfo=UTC).timestamp()
            if period.end > limit:
                raise IneligibleSubject(
                    f"{meter}: period ends after the {life.value:g}-year crediting life ({life.source})"
                )


def check_scope(params: ParameterSet, infos: Mapping[str, MeterInfo]) -> None:
    """Refuse meters enrolled outside the programme's regions (sets with a ``scope``)."""
    scope = params.scope
    if scope is None:
        return
    outside = sorted(
        f"{m} (region {i.region!r})" if i.region else f"{m} (its enrolment names no region)"
        for m, i in infos.items()
        if (i.region or "").lower() not in scope.regions
    )
    if outside:
        regions = ", ".join(f"{r} ({e.code})" for r, e in sorted(scope.regions.items()))
        raise IneligibleSubject(
            f"{params.id} {params.version}: {', '.join(outside)} outside the programme's regions "
            f"{regions} ({scope.source})"
        )
