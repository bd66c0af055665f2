"""Statements signed on a calendar, and supplementary statements for late evidence.

For every unit in the registry and every calendar period (month by default, China time)
that ended more than ``settle_hours`` ago, the scheduler signs one statement per stretch of
the period with one beneficiary, once the unit has evidence there and its gateway is done
with the stretch: its intervals reach past the stretch's end, or it has sent nothing for
``settle_hours`` (a gateway uploading a backlog is not stated half-way). When a batch with
intervals of a stated period arrives later (a gateway that was offline uploads its
backlog), it signs a *supplementary* statement that names the earlier ones and credits only
what they did not (:mod:`aggregator.methodology.engine`, ``earlier``): a signed statement is
never changed, and nothing is credited twice.

What it did is kept in two tables of the aggregator's database:

- ``programme_statements``: the statements it signed, per unit and stretch, with the
  evidence mark (latest batch row id with an interval there) each was computed on;
- ``programme_checks``: per unit and stretch, the last look: the gateway's latest batch row
  id then (nothing new from the gateway: nothing to do), the evidence mark, and the problem
  that kept it from signing (logged once, shown by ``puhui aggregator units status``).

Restart-safe: a statement is saved (with its ledger entries) in the same transaction as its
row here, and the ledger refuses a second statement for intervals already credited. A
statement stored otherwise (by hand, or before this was one transaction) is found by its
subject and period on the next look, and counts.

Several aggregators, several hosts: with a PostgreSQL evidence store these tables, the units
and the statements are in its database (:mod:`aggregator.store.sqldb`), so a new leader
carries on from what the old one signed. Signing is a claim: in the transaction that saves
the statement, under an advisory lock on the unit and stretch, the statements stored for
them are read again; if another aggregator signed meanwhile (leadership moved under a look
already under way), nothing is saved and the next look starts from what it signed. The
database keeps one *scheduled* statement per unit and stretch (a unique index) besides.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from aggregator.config import ProgrammeSettings
from aggregator.errors import StoreError
from aggregator.methodology.baseline import HistoricalUse, load_baselines
from aggregator.methodology.engine import compute
from aggregator.methodology.errors import MethodologyError
from aggregator.methodology.filing import require_filed, select_for_unit, unit_region
from aggregator.methodology.params import (
    PARAMS_DIR,
    LoadedParameterSet,
    list_parameter_sets,
    load_parameter_set,
)
from aggregator.methodology.statements import Statement, earlier_claims, issue_statement
from aggregator.methodology.store import StatementStore
from aggregator.methodology.subject import CHINA_TZ, Period, Subject, Unit
from aggregator.programme.errors import ProgrammeError
from aggregator.programme.units import Segment, UnitEntry, UnitRegistry
from aggregator.store.protocols import ScheduleEvidence
from aggregator.store.sqldb import Db, as_db
from common.clock import Clock
from evidence.keys import GatewayKey

log = logging.getLogger(__name__)

PeriodKind = Literal["month", "week", "day"]

_CHECK_UPSERT = (
    "INSERT INTO programme_checks (unit, period_start, period_end, gateway_mark, evidence_mark, checked_ms, "
    "problem) VALUES (?,?,?,?,?,?,?) ON CONFLICT (unit, period_start, period_end) DO UPDATE SET "
    "gateway_mark = excluded.gateway_mark, evidence_mark = excluded.evidence_mark, "
    "checked_ms = excluded.checked_ms, problem = excluded.problem"
)
_ROW_INSERT = (
    "INSERT INTO programme_statements (statement, unit, period_start, period_end, beneficiary, kind, "
    "evidence_mark, created_ms) VALUES (?,?,?,?,?,?,?,?)"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS programme_statements (
    statement TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL,
    beneficiary TEXT NOT NULL,
    kind TEXT NOT NULL,
    evidence_mark INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS programme_statements_unit ON programme_statements(unit, period_start, period_end);
-- files from before the unique index below: of two statements found for one stretch (signed
-- by hand), the later counts as a supplement (as _stated now records them)
UPDATE programme_statements SET kind = 'supplementary' WHERE kind = 'scheduled' AND EXISTS (
    SELECT 1 FROM programme_statements e WHERE e.kind = 'scheduled' AND e.unit = programme_statements.unit
    AND e.period_start = programme_statements.period_start AND e.period_end = programme_statements.period_end
    AND (e.created_ms, e.statement) < (programme_statements.created_ms, programme_statements.statement));
CREATE UNIQUE INDEX IF NOT EXISTS programme_statements_scheduled
    ON programme_statements(unit, period_start, period_end) WHERE kind = 'scheduled';
CREATE TABLE IF NOT EXISTS programme_checks (
    unit TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL,
    gateway_mark INTEGER NOT NULL,
    evidence_mark INTEGER NOT NULL,
    checked_ms INTEGER NOT NULL,
    problem TEXT,
    PRIMARY KEY (unit, period_start, period_end)
);
"""


def calendar_periods(kind: PeriodKind, start: int, until: int) -> Iterator[tuple[int, int]]:
    """The calendar periods (China time) that overlap ``[start, ...)`` and end at or before
    ``until`` (POSIX seconds), in order."""
    t = datetime.fromtimestamp(start, CHINA_TZ)
    if kind == "month":
        p = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elif kind == "week":  # ISO weeks: Monday 00:00
        p = (t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        p = t.replace(hour=0, minute=0, second=0, microsecond=0)
    while True:
        if kind == "month":
            q = p.replace(year=p.year + p.month // 12, month=p.month % 12 + 1)
        else:
            q = p + timedelta(days=7 if kind == "week" else 1)
        if int(q.timestamp()) > until:
            return
        yield int(p.timestamp()), int(q.timestamp())
        p = q


@dataclass(frozen=True, slots=True)
class Signed:
    statement: str
    unit: str
    period_start: int
    period_end: int
    beneficiary: str
    kind: str  # scheduled | supplementary
    er_tco2e: float


class _Raced(Exception):
    """Another aggregator signed this unit's stretch while this one computed (nothing saved)."""


@dataclass(slots=True)
class TickReport:
    signed: list[Signed] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # new problems (logged once each)


class StatementScheduler:
    """Signs due statements for every unit; :meth:`tick` is one look, :meth:`run` repeats it."""

    def __init__(
        self,
        *,
        db: str | Path | Db | None = None,
        units: UnitRegistry,
        statements: StatementStore,
        evidence: ScheduleEvidence,
        key: GatewayKey,
        clock: Clock,
        parameter_sets: Mapping[str, LoadedParameterSet],
        period: PeriodKind = "month",
        settle_s: float = 48 * 3600.0,
        baselines: Mapping[str, HistoricalUse] | None = None,
        candidates: Sequence[LoadedParameterSet] = (),
        production: bool = False,
        owns: tuple[UnitRegistry | StatementStore, ...] = (),
    ) -> None:
        """``parameter_sets``: the set per scenario; a scenario without one takes the set the
        precedence rule picks among ``candidates`` for the unit's region and the period.
        ``production``: sign only with a set filed and valid for the period.

        The schedule's tables are kept beside the statements (``statements.db``: claiming a
        stretch and saving its statement is one transaction); ``db``, if given, must be
        that database."""
        self.units, self.statements, self.evidence = units, statements, evidence
        self.key, self.clock = key, clock
        self.parameter_sets = dict(parameter_sets)
        self.period, self.settle_s = period, settle_s
        self.baselines = dict(baselines or {})
        self.on_signed: Callable[[], None] = _nothing  # told after every statement signed (the pusher)
        self.candidates = tuple(candidates)
        self.production = production
        self._owns = owns  # closed with the scheduler
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # held by a look: close() waits for it
        self._db = statements.db
        if isinstance(db, str | Path) and Path(db).resolve() != statements.path.resolve():
            raise ProgrammeError(f"the schedule's database {db} is not the statements' {statements.path}")
        if db is not None and not isinstance(db, str | Path) and db is not statements.db:
            raise ProgrammeError(f"the schedule's database {db.where} is not the statements' database")
        self.db = statements.path
        self._db.ensure(_SCHEMA)

    def close(self) -> None:
        with self._busy, self._lock:
            pass
        for part in self._owns:
            part.close()

    @contextmanager
    def _locked(self) -> Iterator[Db]:
        with self._lock:
            yield self._db

    # -- the loop -----------------------------------------------------------------------

    async def run(self, every_s: float, *, run_db: Callable[..., object] | None = None) -> None:
        """Look every ``every_s`` seconds (clock time) until cancelled; a look runs in a thread
        (``run_db``, the aggregator's store thread) so ingest keeps going."""
        while True:
            try:
                if run_db is None:
                    await asyncio.to_thread(self.tick)
                else:
                    await run_db(self.tick)  # type: ignore[misc]
            except (sqlite3.Error, OSError, StoreError) as exc:  # the next look tries again
                log.error("statement schedule: this look failed, the next in %.0f s: %s", every_s, exc)
            await self.clock.sleep(every_s)

    def tick(self) -> TickReport:
        """One look at every unit: sign what is due, supplement what got late evidence."""
        with self._busy:
            return self._tick()

    def _tick(self) -> TickReport:
        report = TickReport()
        now = self.clock.now()
        until = int(now - self.settle_s)
        for unit in self.units.units():
            gw_mark = self.evidence.latest_batch_id(unit.gateway)
            start = -(-unit.start_ms // 1000)
            for ps, pe in calendar_periods(self.period, start, until):
                for seg in self.units.segments(unit, ps, pe):
                    self._look(unit, seg, gw_mark, now, report)
        return report

    def _look(self, unit: UnitEntry, seg: Segment, gw_mark: int, now: float, report: TickReport) -> None:
        key = (unit.unit, seg.start, seg.end)
        with self._locked() as db:
            check = db.execute(
                "SELECT gateway_mark, evidence_mark, problem FROM programme_checks "
                "WHERE unit = ? AND period_start = ? AND period_end = ?",
                key,
            ).fetchone()
        if check is not None and check[0] == gw_mark:
            return  # nothing new from the gateway since the last look
        reach, received_ms = self.evidence.evidence_reach(unit.gateway, unit.meters)
        if reach < seg.end and received_ms / 1000 + self.settle_s > now:
            return  # the gateway is still delivering this stretch (a backlog): wait until it is past or quiet
        mark = self.evidence.evidence_mark(unit.gateway, unit.meters, seg.start, seg.end)
        problem: str | None = None
        if check is None or check[2] is not None or mark != check[1]:
            try:
                stated = self._stated(unit, seg)
                signed = self._sign(unit, seg, mark, stated, now)
            except _Raced as exc:
                log.warning("unit %s %s: %s; the next look starts from it", unit.unit, _span(seg), exc)
                return  # no check recorded: the next look reads what the other signed
            except (MethodologyError, ProgrammeError) as exc:
                problem = f"unit {unit.unit} {_span(seg)}: {exc}"
            else:
                if signed is not None:
                    report.signed.append(signed)
                    log.info(
                        "unit %s %s: signed %s statement %s… for %s, ER %.6g tCO2e",
                        unit.unit, _span(seg), signed.kind, signed.statement[:16], seg.beneficiary,
                        signed.er_tco2e,
                    )  # fmt: skip
        if problem is not None and (check is None or check[2] != problem):
            report.problems.append(problem)
            log.warning("%s", problem)
        with self._locked() as db:
            db.execute(_CHECK_UPSERT, (*key, gw_mark, mark, round(now * 1000), problem))

    def _stated(self, unit: UnitEntry, seg: Segment) -> list[str]:
        """The statements of this unit and stretch: the ones signed here, or else any stored
        for exactly this unit and period (signed by hand, or saved just before a crash)."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT statement FROM programme_statements WHERE unit = ? AND period_start = ? "
                "AND period_end = ? ORDER BY created_ms, statement",
                (unit.unit, seg.start, seg.end),
            ).fetchall()
        if rows:
            return [str(r[0]) for r in rows]
        found = self.statements.of_unit(unit.unit, seg.start, seg.end)
        for i, st in enumerate(found):  # the first one stored is the stretch's scheduled statement
            kind = "supplementary" if i or "supplements" in st.body else "scheduled"
            with self._locked() as db:
                db.execute(
                    _ROW_INSERT + " ON CONFLICT DO NOTHING",
                    (st.id, unit.unit, seg.start, seg.end, st.body["subject"].get("beneficiary", ""), kind, 0,
                     st.body["created_ms"]),
                )  # fmt: skip
            log.info(
                "unit %s %s: found statement %s… stored before; it counts", unit.unit, _span(seg), st.id[:16]
            )
        return [st.id for st in found]

    def _sign(self, unit: UnitEntry, seg: Segment, mark: int, stated: list[str], now: float) -> Signed | None:
        if mark == 0:
            return None  # no evidence yet: nothing to state (the look is recorded)
        period = Period(seg.start, seg.end)
        params = self.parameter_sets.get(unit.scenario)
        selection = None
        if params is None and self.candidates:
            region = unit_region(m.region for m in self.evidence.meters() if m.gateway == unit.gateway
                                 and m.meter in unit.meters)  # fmt: skip
            chosen = select_for_unit(self.candidates, unit.scenario, region, period, self.production)
            params, selection = chosen.chosen, chosen.to_json()
        if params is None:
            raise ProgrammeError(
                f"no parameter set for scenario {unit.scenario} (programme.parameter_sets in the config)"
            )
        if self.production:
            require_filed(params, period)
        earlier: list[Statement] = []
        for sid in stated:
            st = self.statements.get(sid)
            if st is None:
                raise ProgrammeError(f"statement {sid} is listed for the unit but not stored")
            earlier.append(st)
        subject = Subject(unit.gateway, (Unit(unit.unit, unit.meters),))
        baselines = {unit.unit: self.baselines[unit.unit]} if unit.unit in self.baselines else None
        comp = compute(
            self.evidence, params, subject, period, baselines=baselines,
            earlier=[earlier_claims(s) for s in earlier], beneficiary=seg.beneficiary,
        )  # fmt: skip
        if earlier and not comp.result.used:
            return None  # the late batches brought nothing creditable: no supplement
        if not earlier and not comp.result.used and not any(comp.result.excluded.values()):
            return None
        statement = issue_statement(
            comp, self.key, created_ms=round(now * 1000), selection=selection, production=self.production
        )
        kind = "supplementary" if earlier else "scheduled"
        with self.statements.transaction() as db:  # the claim: one signer per unit and stretch
            db.lock(f"programme_statements:{unit.unit}:{seg.start}:{seg.end}")
            now_stated = {st.id for st in self.statements.of_unit(unit.unit, seg.start, seg.end)}
            if now_stated != set(stated):
                raise _Raced(f"{len(now_stated - set(stated))} statement(s) signed meanwhile elsewhere")
            self.statements.save(statement)
            db.execute(
                _ROW_INSERT,
                (statement.id, unit.unit, seg.start, seg.end, seg.beneficiary, kind, mark, round(now * 1000)),
            )
        self.on_signed()
        return Signed(statement.id, unit.unit, seg.start, seg.end, seg.beneficiary, kind, statement.er_tco2e)

    # -- reading ------------------------------------------------------------------------

    def signed(self) -> list[Signed]:
        return signed_statements(self._db)

    def problems(self) -> list[tuple[str, int, int, str]]:
        """(unit, start, end, problem) of every stretch whose last look could not sign."""
        return schedule_problems(self._db)


def _nothing() -> None:
    pass


def _span(seg: Segment) -> str:
    a = datetime.fromtimestamp(seg.start, CHINA_TZ).isoformat(timespec="minutes")
    b = datetime.fromtimestamp(seg.end, CHINA_TZ).isoformat(timespec="minutes")
    return f"{a} .. {b}"


def open_scheduler(
    settings: ProgrammeSettings, *, db: Path | Db, evidence: ScheduleEvidence, key: GatewayKey, clock: Clock
) -> StatementScheduler:
    """A scheduler as the aggregator config's ``programme`` section says; a parameter set or
    baseline file that cannot be read is a :class:`ProgrammeError` naming it. ``db``: the
    SQLite file, or a :class:`aggregator.store.sqldb.Db` (:func:`~aggregator.store.sqldb.open_programme_db`;
    the caller closes it after the scheduler)."""
    sets: dict[str, LoadedParameterSet] = {}
    try:
        for scenario, path in settings.parameter_sets.items():
            loaded = load_parameter_set(path)
            if loaded.params.method.scenario != scenario:
                raise ProgrammeError(
                    f"programme.parameter_sets.{scenario}: {path} is a set for "
                    f"{loaded.params.method.scenario}"
                )
            sets[scenario] = loaded
        baselines = load_baselines(settings.baselines_file) if settings.baselines_file is not None else {}
        candidates = list_parameter_sets(settings.params_dir or PARAMS_DIR)
    except MethodologyError as exc:
        raise ProgrammeError(f"programme: {exc}") from exc
    units, statements = UnitRegistry(db), StatementStore(db)
    return StatementScheduler(
        db=db, units=units, statements=statements, evidence=evidence, key=key, clock=clock,
        parameter_sets=sets, period=settings.period, settle_s=settings.settle_hours * 3600,
        baselines=baselines, candidates=candidates, production=settings.production, owns=(units, statements),
    )  # fmt: skip


def signed_statements(db: str | Path | Db) -> list[Signed]:
    """What the schedule signed, from the database alone (``units status``)."""
    rows = _read(
        db,
        "SELECT p.statement, p.unit, p.period_start, p.period_end, p.beneficiary, p.kind, s.er_tco2e "
        "FROM programme_statements p JOIN reduction_statements s ON s.id = p.statement "
        "ORDER BY p.unit, p.period_start, p.created_ms",
    )
    return [Signed(str(a), str(b), int(c), int(d), str(e), str(f), float(g)) for a, b, c, d, e, f, g in rows]


def schedule_problems(db: str | Path | Db) -> list[tuple[str, int, int, str]]:
    """(unit, start, end, problem) of every stretch whose last look could not sign."""
    rows = _read(
        db,
        "SELECT unit, period_start, period_end, problem FROM programme_checks "
        "WHERE problem IS NOT NULL ORDER BY unit, period_start",
    )
    return [(str(u), int(s), int(e), str(p)) for u, s, e, p in rows]


def _read(db: str | Path | Db, sql: str) -> list[tuple[Any, ...]]:
    conn, owned = as_db(db)
    try:
        StatementStore(conn).close()  # its tables, should nothing have been stated yet
        conn.ensure(_SCHEMA)
        return conn.execute(sql).fetchall()
    finally:
        if owned:
            conn.close()
