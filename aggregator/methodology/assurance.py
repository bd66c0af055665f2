"""Assurance levels in a computation (evidence/assurance.py, docs/ev-sessions.md, "Which level
a kWh gets").

Every credited quantity rests on evidence at one level: OCPP session records whose readings the
meter signed are ``meter_signed`` (:mod:`.meter_signed`); interval records sealed by a puhui
gateway are ``gateway_signed``; sessions imported from a network's platform are
``platform_attested``. A parameter set may refuse levels (``refused_assurance``): evidence at a
refused level credits nothing, and the statement says how much was offered at it.

A kWh is credited once, from the strongest evidence that covers it (EV only, per meter):

- a ``meter_signed`` session record (not flagged ``signature_failed``, inside the period, not
  overlapping another credited one) is credited whole with its signed energy, and the
  gateway-signed intervals of its meter credited within its span are displaced; if the set
  refuses ``meter_signed``, the intervals stand;
- imported sessions are credited to the unit whose meter is the session's charger, whole (the
  completeness threshold is a rule for interval series), unless ``assurance_refused`` (the set
  refuses ``platform_attested``), ``meter_signed_evidence_covers`` (a credited meter-signed
  session of the charger overlaps it) or ``gateway_evidence_covers`` (the charger has
  gateway-signed intervals credited within the session's time).

The scenario rules are linear in activity (EV: BE, PE and LE are proportional to E), so the
figures of each level are the rules applied to that level's activity, and they add up.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from aggregator.methodology.errors import ComputationError
from aggregator.methodology.evaluation import Evaluation
from aggregator.methodology.meter_signed import (
    ChainLookup,
    ChainSessionUse,
    MeterSignedPart,
    place_chain_sessions,
)
from aggregator.methodology.scenario import TO_MWH, Credited, ScenarioRules
from aggregator.sessions.records import StoredSession
from evidence.assurance import LEVELS, Assurance

if TYPE_CHECKING:
    from aggregator.methodology.series import SeriesArrays
    from aggregator.methodology.subject import Period, Subject

SESSION_ROLE = "energy_mwh"
CREDITED, REFUSED, COVERED = "credited", "assurance_refused", "gateway_evidence_covers"
SIGNED_COVERS = "meter_signed_evidence_covers"
COVERS = (COVERED, SIGNED_COVERS)


@dataclass(frozen=True, slots=True)
class SessionUse:
    """One imported session the computation considered, and what became of it."""

    session: StoredSession
    unit: int
    status: str

    def to_json(self) -> dict[str, Any]:
        r = self.session.record
        return {
            "session_id": r.session_id, "charger": r.charger, "connector": r.connector,
            "start_ms": r.start_ms, "stop_ms": r.stop_ms, "energy_wh": r.energy_wh,
            "sha256": self.session.sha256, "source_sha256": self.session.source_sha256,
            "status": self.status,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class LevelFigures:
    """What one assurance level contributed: activity credited (engine units, per role), the
    activity offered at the level (credited or not) and its BE, PE, LE (tCO2e)."""

    level: Assurance
    refused: bool
    activity: dict[str, float]
    offered: dict[str, float]
    be: float
    pe: float
    le: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "credited": not self.refused,
            "activity": dict(sorted(self.activity.items())),
            "be_tco2e": self.be,
            "pe_tco2e": self.pe,
            "le_tco2e": self.le,
            "reduction_tco2e": self.be - self.pe - self.le,
        }
        if SESSION_ROLE in self.activity:
            out["kwh"] = self.activity[SESSION_ROLE] * 1000.0
        if self.refused:
            out["refused_by_parameter_set"] = True
            out["activity_not_credited"] = dict(sorted(self.offered.items()))
        return out


@dataclass(frozen=True, slots=True)
class AssuranceSplit:
    """Every level, strongest first, the imported sessions considered, and the chain sessions
    considered (None: not looked up; ``chain_considered`` False: the computation was not asked
    to, as for statements signed before meter-signed crediting)."""

    levels: tuple[LevelFigures, ...]
    network: str | None
    sessions: tuple[SessionUse, ...]
    chain: tuple[ChainSessionUse, ...] | None = None
    chain_considered: bool = False

    def level(self, name: Assurance) -> LevelFigures:
        return next(lv for lv in self.levels if lv.level == name)


def apply_assurance(
    result: Evaluation,
    rules: ScenarioRules,
    series: SeriesArrays,
    subject: Subject,
    period: Period,
    grid: np.ndarray,
    refused: Sequence[Assurance],
    sessions: Sequence[StoredSession],
    mpe: Mapping[str, float],
    chain: ChainLookup | None = None,
    interval_s: int = 900,
    accuracy: np.ndarray | None = None,
    earlier_sessions: Collection[tuple[str, int, int]] = (),
    earlier_slots: np.ndarray | None = None,
) -> tuple[Evaluation, AssuranceSplit]:
    """The evaluation with meter-signed chain sessions and imported sessions added (and the
    intervals they displace or that cover them taken out) and refused levels removed, and the
    split. ``mpe``: per charger (an enrolled meter), the permissible error its sessions are
    taken at; ``chain``: the gateways' OCPP session records (None: not considered at all);
    ``earlier_sessions``: the session records statements this one supplements credited
    (ledger entries ``(meter, start, stop)``); ``earlier_slots``: per series row and slot,
    credited by them."""
    found = () if chain is None or chain.sessions is None else chain.sessions
    signed = place_chain_sessions(
        found, series, subject, period, result, interval_s, "meter_signed" in refused, mpe, accuracy,
        earlier_sessions, earlier_slots,
    )  # fmt: skip
    if any(u.status == CREDITED for u in signed.uses) and rules.scenario != "ev_charging":
        raise ComputationError(f"OCPP session records are EV charging evidence, not {rules.scenario}")
    result = _displace(result, rules, signed, grid, period)
    offered_gw = {role: float(t.sum()) for role, t in result.totals.items()}
    gw_refused = "gateway_signed" in refused
    if gw_refused:
        result = _without_intervals(result)
    gateway = _level("gateway_signed", gw_refused, result, offered_gw)
    uses, per_unit = _place(
        sessions, series, subject, period, result, "platform_attested" in refused, mpe, signed.spans
    )
    network = sessions[0].record.network if sessions else None
    if any(u.status == CREDITED for u in uses) and rules.scenario != "ev_charging":
        raise ComputationError(f"imported sessions are EV charging evidence, not {rules.scenario}")
    offered_pa = sum(u.session.record.energy_wh for u in uses if u.status not in COVERS) * TO_MWH["Wh"]
    platform, result = _add_level(
        "platform_attested", result, rules, per_unit, offered_pa, bool(uses), grid, period, refused
    )
    meter, result = _add_level(
        "meter_signed", result, rules, signed.activity, signed.offered,
        any(u.status in (CREDITED, REFUSED) for u in signed.uses), grid, period, refused,
    )  # fmt: skip
    by_name = {"gateway_signed": gateway, "platform_attested": platform, "meter_signed": meter}
    chain_uses = None if chain is None or chain.sessions is None else tuple(signed.uses)
    split = AssuranceSplit(
        tuple(by_name[lv] for lv in LEVELS), network, tuple(uses), chain_uses, chain is not None
    )
    return result, split


def _displace(
    r: Evaluation, rules: ScenarioRules, signed: MeterSignedPart, grid: np.ndarray, period: Period
) -> Evaluation:
    """The evaluation without the gateway-signed interval activity meter-signed sessions displace."""
    d_tot, d_low, d_high = signed.displaced
    if not d_tot.any():
        return r
    totals = {role: np.maximum(t - d_tot, 0.0) if role == SESSION_ROLE else t for role, t in r.totals.items()}
    bounds = None
    if r.bounds is not None:
        bounds = Credited(
            {**r.bounds.low, SESSION_ROLE: np.maximum(r.bounds.low[SESSION_ROLE] - d_low, 0.0)},
            {**r.bounds.high, SESSION_ROLE: np.maximum(r.bounds.high[SESSION_ROLE] - d_high, 0.0)},
        )
    at = bounds if bounds is not None else Credited(totals, totals)
    present = {role: np.ones(len(r.credited), bool) for role in rules.roles}
    figs = rules.figures(at, present, grid, period.year, None)
    return replace(
        r,
        totals=totals,
        bounds=bounds,
        be=figs.be * r.credited,
        pe=figs.pe * r.credited,
        le=figs.le * r.credited,
    )


def _level(name: Assurance, refused: bool, r: Evaluation, offered: dict[str, float]) -> LevelFigures:
    be, pe, le = r.totals_be_pe_le
    activity = {role: float(t.sum()) for role, t in r.totals.items()}
    return LevelFigures(name, refused, activity, offered, be, pe, le)


def _without_intervals(r: Evaluation) -> Evaluation:
    """The evaluation when gateway-signed evidence is refused: nothing credited from intervals."""
    zero = np.zeros_like(r.be)
    excluded = dict(r.excluded)
    if r.used:
        excluded["assurance_refused:gateway_signed"] = r.used
    bounds = None
    if r.bounds is not None:
        low = {k: np.zeros_like(v) for k, v in r.bounds.low.items()}
        bounds = Credited(low, {k: np.zeros_like(v) for k, v in r.bounds.high.items()})
    return replace(
        r, totals={k: np.zeros_like(v) for k, v in r.totals.items()}, be=zero, pe=zero.copy(), le=zero.copy(),
        used=0, excluded=excluded, runs=[[] for _ in r.runs], bounds=bounds,
    )  # fmt: skip


def _place(
    sessions: Sequence[StoredSession],
    series: SeriesArrays,
    subject: Subject,
    period: Period,
    result: Evaluation,
    refused: bool,
    mpe: Mapping[str, float],
    signed_spans: Mapping[str, Sequence[tuple[float, float]]],
) -> tuple[list[SessionUse], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    unit_of = {m: i for i, u in enumerate(subject.units) for m in u.meters}
    runs: dict[str, list[tuple[int, int]]] = {}
    for key, row_runs in zip(series.keys, result.runs, strict=True):
        runs.setdefault(key.meter, []).extend(row_runs)
    per_unit, low, high = (np.zeros(len(subject.units)) for _ in range(3))
    uses = []
    for s in sorted(sessions, key=lambda s: (s.record.charger, s.record.start_ms, s.record.session_id)):
        r = s.record
        if r.charger not in unit_of or r.start_ms < period.start * 1000 or r.stop_ms > period.end * 1000:
            continue
        unit = unit_of[r.charger]
        a, b = r.start_ms / 1000, r.stop_ms / 1000
        if any(x < b and a < y for x, y in signed_spans.get(r.charger, ())):
            status = SIGNED_COVERS
        elif any(x < b and a < y for x, y in runs.get(r.charger, ())):
            status = COVERED
        elif refused:
            status = REFUSED
        else:
            status = CREDITED
            e, err = r.energy_wh * TO_MWH["Wh"], mpe.get(r.charger, 0.0)
            per_unit[unit] += e
            low[unit] += e * (1.0 - err)
            high[unit] += e * (1.0 + err)
        uses.append(SessionUse(s, unit, status))
    return uses, (per_unit, low, high)


def _add_level(
    name: Assurance,
    r: Evaluation,
    rules: ScenarioRules,
    activity: tuple[np.ndarray, np.ndarray, np.ndarray],
    offered: float,
    any_offered: bool,
    grid: np.ndarray,
    period: Period,
    refused: Sequence[Assurance],
) -> tuple[LevelFigures, Evaluation]:
    """Sessions' activity (per unit; at -MPE, +MPE) credited at level ``name``, added to ``r``."""
    per_unit, at_low, at_high = activity
    is_refused = name in refused
    zeros = {role: 0.0 for role in rules.roles}
    if not per_unit.any():
        offered_by_role = {**zeros, SESSION_ROLE: offered} if any_offered else zeros
        return LevelFigures(name, is_refused, zeros, offered_by_role, 0.0, 0.0, 0.0), r
    low, high = {SESSION_ROLE: at_low}, {SESSION_ROLE: at_high}
    present = {SESSION_ROLE: np.ones(len(per_unit), bool)}
    figs = rules.figures(Credited(low, high), present, grid, period.year, None)
    level = LevelFigures(
        name, False, {SESSION_ROLE: float(per_unit.sum())}, {SESSION_ROLE: offered},
        float(figs.be.sum()), float(figs.pe.sum()), float(figs.le.sum()),
    )  # fmt: skip
    totals = dict(r.totals)
    totals[SESSION_ROLE] = totals.get(SESSION_ROLE, np.zeros_like(per_unit)) + per_unit
    bounds = r.bounds
    if bounds is not None:
        bounds = Credited(
            {**bounds.low, SESSION_ROLE: bounds.low.get(SESSION_ROLE, 0.0) + low[SESSION_ROLE]},
            {**bounds.high, SESSION_ROLE: bounds.high.get(SESSION_ROLE, 0.0) + high[SESSION_ROLE]},
        )
    out = replace(r, totals=totals, be=r.be + figs.be, pe=r.pe + figs.pe, le=r.le + figs.le, bounds=bounds)
    return level, out


class SessionReader(Protocol):
    """Where a verifier re-reads imported sessions (the aggregator's SQLite store)."""

    def imported_sessions(
        self, network: str, *, chargers: Collection[str] | None = None, start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[StoredSession]: ...  # fmt: skip

    def session_source(self, sha256: str) -> tuple[bytes, bytes] | None: ...


def reread_sessions(
    listed: Mapping[str, Any],
    reader: SessionReader | None,
    subject: Subject,
    period: Period,
    problems: list[str],
) -> list[StoredSession]:
    """The sessions a statement lists, re-read from the store: each must be held with the same
    content digest, its record must hash to it, and the file it came from must be kept."""
    if reader is None:
        problems.append("sessions: the statement credits imported sessions; no session store was given")
        return []
    network = str(listed.get("network"))
    held = {
        s.record.session_id: s
        for s in reader.imported_sessions(
            network, chargers=subject.meters, start_ms=period.start * 1000, end_ms=period.end * 1000
        )
    }
    out = []
    for item in listed.get("items", []):
        sid = str(item.get("session_id"))
        s = held.get(sid)
        if s is None:
            problems.append(f"sessions: {network} session {sid} is not in the session store")
        elif s.sha256 != item.get("sha256") or s.record.sha256 != s.sha256:
            problems.append(f"sessions: {network} session {sid}: content differs from the statement's")
        elif (src := reader.session_source(s.source_sha256)) is None or sha256(
            src[0]
        ).hexdigest() != s.source_sha256:
            problems.append(
                f"sessions: {network} session {sid}: its imported file {s.source_sha256} is not kept"
            )
        else:
            out.append(s)
    return out
