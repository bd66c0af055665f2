"""Methodology filing (备案): the production check and the precedence rule among parameter sets.

Pure functions of the parameter sets, scenario, region and period they are given: no I/O and
no clock (a filing's validity is judged against the statement's period, China time, so the
verifier reaches the same answer years later). The rule is described once, in
docs/methodologies.md, *Filing and precedence*; statements name it by :data:`RULE`.

::

    FilingError (MethodologyError)
    ├── NotFiled          production refuses a set: unfiled, pending, withdrawn, outside validity
    └── NoApplicableSet   no set of the scenario applies to the unit's region and period
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aggregator.methodology.errors import MethodologyError
from aggregator.methodology.params import Filing, LoadedParameterSet
from aggregator.methodology.subject import CHINA_TZ, Period

RULE = "puhui-precedence/1"
TIER_ORDER = ("national", "local", "group", "international", "none")  # Hefei: 国标、地标、团标
STATUS_ORDER = ("filed", "pending", "unfiled")  # a withdrawn filing never applies
# What the ranking compares, in order; a losing candidate's reason names the first that differs.
RANK_KEYS = ("filing_status", "tier", "valid_from", "version", "id", "sha256")
# Why a set of the scenario was dropped, in the order the checks run.
DROP_REASONS = (
    "outside_scope_region",
    "outside_standard_region",
    "withdrawn",
    "not_yet_valid",
    "expired",
    "unfiled",
    "pending",
)
PRODUCTION_NEEDS = "production signs only with a filed set valid for the whole period"


class FilingError(MethodologyError, ValueError):
    """A parameter set's filing does not allow what was asked."""


class NotFiled(FilingError):
    """Production mode refuses the set: not filed, withdrawn, or not valid for the period."""


class NoApplicableSet(FilingError):
    """No parameter set of the scenario applies to the unit's region and the period."""


def status_of(loaded: LoadedParameterSet) -> str:
    """The set's filing status; a set without a ``filing`` section is ``unfiled``."""
    f = loaded.params.filing
    return "unfiled" if f is None else f.status


def tier_of(loaded: LoadedParameterSet) -> str:
    """The tier of the standard the set implements; without a ``filing`` section ``none``."""
    f = loaded.params.filing
    return "none" if f is None else f.tier


def _day_start(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), CHINA_TZ).timestamp())


def validity_problem(filing: Filing | None, period: Period) -> str | None:
    """``withdrawn``, ``not_yet_valid`` or ``expired`` when the filing does not cover the whole
    period (``valid_from`` 00:00 through ``valid_to`` 24:00 China time); None when it does."""
    if filing is None:
        return None
    if filing.status == "withdrawn":
        return "withdrawn"
    if filing.valid_from is not None and period.start < _day_start(filing.valid_from):
        return "not_yet_valid"
    if filing.valid_to is not None and period.end > _day_start(filing.valid_to + dt.timedelta(days=1)):
        return "expired"
    return None


def production_problem(loaded: LoadedParameterSet, period: Period) -> str | None:
    """Why production may not sign with ``loaded`` for ``period`` (a reason code), or None."""
    found = validity_problem(loaded.params.filing, period)
    if found is not None:
        return found
    status = status_of(loaded)
    return None if status == "filed" else status


def require_filed(loaded: LoadedParameterSet, period: Period) -> None:
    """Raise :class:`NotFiled`, naming the set, its version and why, unless the set is filed
    and its filing covers the whole period."""
    why = production_problem(loaded, period)
    if why is not None:
        raise NotFiled(f"{explain(loaded, why, None, period)}: {PRODUCTION_NEEDS}")


def inapplicable(
    loaded: LoadedParameterSet, region: str | None, period: Period, production: bool
) -> str | None:
    """Why a set of the right scenario does not apply to the unit (a :data:`DROP_REASONS`
    code), or None. Without production an unfiled or pending set applies."""
    p = loaded.params
    if p.scope is not None and region not in p.scope.regions:
        return "outside_scope_region"
    if p.filing is not None and p.filing.regions and region not in p.filing.regions:
        return "outside_standard_region"
    found = validity_problem(p.filing, period)
    if found is None and production and status_of(loaded) != "filed":
        return status_of(loaded)
    return found


def rank_key(loaded: LoadedParameterSet) -> tuple[Any, ...]:
    """Smaller is preferred: filed first, then tier, latest ``valid_from``, highest version,
    then id and sha256 (so that any two distinct sets are ordered)."""
    f = loaded.params.filing
    since = -f.valid_from.toordinal() if f is not None and f.valid_from is not None else 0
    version = tuple(-int(x) for x in loaded.version.split("."))
    return (
        STATUS_ORDER.index(status_of(loaded)),
        TIER_ORDER.index(tier_of(loaded)),
        since,
        version,
        loaded.id,
        loaded.sha256,
    )


def _decided_by(chosen: LoadedParameterSet, other: LoadedParameterSet) -> str:
    a, b = rank_key(chosen), rank_key(other)
    return next(k for k, x, y in zip(RANK_KEYS, a, b, strict=True) if x != y)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One set the rule considered and what became of it: ``chosen``, ``outranked_<key>`` (the
    first :data:`RANK_KEYS` entry on which the chosen set beat it) or a drop reason."""

    set: LoadedParameterSet
    reason: str

    def to_json(self) -> dict[str, str]:
        s = self.set
        return {
            "id": s.id,
            "version": s.version,
            "sha256": s.sha256,
            "tier": tier_of(s),
            "status": status_of(s),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """The set the precedence rule picked for a unit, why (``reason``: ``only_applicable`` or
    the :data:`RANK_KEYS` entry that separated it from the runner-up), and every candidate of
    the scenario: ranked applicable sets first, then dropped ones by id, version and sha256."""

    chosen: LoadedParameterSet
    reason: str
    scenario: str
    region: str | None
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, Any]:
        """The statement's ``methodology.selection``."""
        c = self.chosen
        return {
            "rule": RULE,
            "reason": self.reason,
            "scenario": self.scenario,
            "region": self.region,
            "chosen": {"id": c.id, "version": c.version, "sha256": c.sha256},
            "candidates": [x.to_json() for x in self.candidates],
        }


def unit_region(regions: Iterable[str | None]) -> str | None:
    """The one region (lower case, as scopes spell it) the meters of a unit or subject are
    enrolled in, or None when none names one; meters in several regions are an error (the
    rule picks per region: one statement per region)."""
    found = {r.lower() for r in regions if r}
    if len(found) > 1:
        raise FilingError(f"meters are enrolled in several regions {sorted(found)}: select per region")
    return found.pop() if found else None


def select_for_unit(
    sets: Iterable[LoadedParameterSet],
    scenario: str,
    region: str | None,
    period: Period,
    production: bool = False,
) -> Selection:
    """Pick the parameter set for a unit of ``scenario`` enrolled in ``region`` for ``period``
    (the rule :data:`RULE`). The result does not depend on the order of ``sets``. Raises
    :class:`NoApplicableSet` naming every set of the scenario and why it does not apply."""
    region = region.lower() if region else None
    pool = {(s.id, s.version, s.sha256): s for s in sets if s.params.method.scenario == scenario}
    if not pool:
        raise NoApplicableSet(f"no parameter set for scenario {scenario!r}")
    verdicts = {k: inapplicable(pool[k], region, period, production) for k in sorted(pool)}
    dropped = [(pool[k], why) for k, why in verdicts.items() if why is not None]
    ok = sorted((pool[k] for k, why in verdicts.items() if why is None), key=rank_key)
    if not ok:
        why = "; ".join(explain(s, w, region, period) for s, w in dropped)
        mode = f" ({PRODUCTION_NEEDS})" if production else ""
        raise NoApplicableSet(
            f"no {scenario} parameter set applies to region {region!r} for {_span(period)}{mode}: {why}"
        )
    chosen, rest = ok[0], ok[1:]
    return Selection(
        chosen,
        _decided_by(chosen, rest[0]) if rest else "only_applicable",
        scenario,
        region,
        (
            Candidate(chosen, "chosen"),
            *(Candidate(s, f"outranked_{_decided_by(chosen, s)}") for s in rest),
            *(Candidate(s, why) for s, why in dropped),
        ),
    )


def explain(loaded: LoadedParameterSet, why: str, region: str | None, period: Period) -> str:
    """A reason code in words, naming the set and version."""
    f = loaded.params.filing
    name = f"{loaded.id} {loaded.version}"
    filing = f"filing {f.number} ({f.authority})" if f is not None and f.number else "its filing"
    where = f"region {region!r}" if region else "a unit whose enrolment names no region"
    if why == "outside_scope_region":
        scope = loaded.params.scope
        return f"{name}: {where} is outside the programme's scope {sorted(scope.regions) if scope else []}"
    if f is not None and why == "outside_standard_region":
        return f"{name}: {where} is not where {f.standard} applies ({', '.join(f.regions)})"
    if f is not None and why == "withdrawn":
        return f"{name}: {filing} is withdrawn"
    if f is not None and why == "not_yet_valid":
        return (
            f"{name}: {filing} is valid from {f.valid_from} (China time), "
            f"the period starts {_at(period.start)}"
        )
    if f is not None and why == "expired":
        return (
            f"{name}: {filing} is valid through {f.valid_to} (China time), the period ends {_at(period.end)}"
        )
    if f is not None and why == "pending":
        return f"{name}: its filing with {f.authority} is pending (no 备案号 yet)"
    return f"{name}: not filed (no filing section, or filing.status 'unfiled')"


def _at(t: int) -> str:
    return dt.datetime.fromtimestamp(t, CHINA_TZ).isoformat(timespec="minutes")


def _span(period: Period) -> str:
    return f"{_at(period.start)} .. {_at(period.end)}"
