"""The programme's units and their beneficiaries, kept in the aggregator's database.

A *unit* is what earns as one (a household's heat pump with its heat and electricity meters,
a rooftop array's grid meter, a charger): a gateway, its meters, a scenario and the day it
joined the programme. Its *beneficiary* is the platform's account reference for whoever the
reductions go to: pseudonymous by rule (never a name, phone number, ID number or address:
:func:`check_beneficiary` refuses what looks like one), set when the unit is enrolled and
changeable from a date on. Statements are per unit and beneficiary: a change within a
reporting period splits it (:meth:`UnitRegistry.segments`).

Tables (prefixed ``programme_``, in the same SQLite file as the evidence and statements, or
with a PostgreSQL evidence store in its database: :mod:`aggregator.store.sqldb`):

- ``programme_units``: one row per unit;
- ``programme_beneficiaries``: (unit, from_ms) -> beneficiary; the history is kept, never
  rewritten, so a statement's beneficiary can always be traced to the entry that named it
  (triggers refuse an UPDATE, a DELETE, or an entry not after the unit's last one).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from aggregator.programme.errors import ProgrammeError
from aggregator.store.sqldb import Db, as_db

SCENARIOS = ("pv", "ev_charging", "clean_heating")
UNIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
BENEFICIARY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{3,63}$")
_PHONE = re.compile(r"(?:\+?86[-. ]?)?1[3-9]\d{9}")  # a mainland mobile number, anywhere in the text
_ID_CARD = re.compile(r"\d{17}[\dXx]")  # a resident identity card number

_SCHEMA = """
CREATE TABLE IF NOT EXISTS programme_units (
    unit TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    meters TEXT NOT NULL,
    scenario TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS programme_beneficiaries (
    unit TEXT NOT NULL REFERENCES programme_units(unit),
    from_ms INTEGER NOT NULL,
    beneficiary TEXT NOT NULL,
    set_ms INTEGER NOT NULL,
    PRIMARY KEY (unit, from_ms)
);
CREATE INDEX IF NOT EXISTS programme_beneficiaries_ref ON programme_beneficiaries(beneficiary);
CREATE TRIGGER IF NOT EXISTS programme_beneficiaries_no_update BEFORE UPDATE ON programme_beneficiaries
BEGIN SELECT RAISE(ABORT, 'programme_beneficiaries is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS programme_beneficiaries_no_delete BEFORE DELETE ON programme_beneficiaries
BEGIN SELECT RAISE(ABORT, 'programme_beneficiaries is append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS programme_beneficiaries_in_order BEFORE INSERT ON programme_beneficiaries
WHEN EXISTS (SELECT 1 FROM programme_beneficiaries WHERE unit = NEW.unit AND from_ms >= NEW.from_ms)
BEGIN SELECT RAISE(ABORT, 'a beneficiary entry must start after the last one'); END;
"""


def check_beneficiary(ref: str) -> str:
    """``ref`` if it is a pseudonymous account reference; else :class:`ProgrammeError` saying why."""
    if _PHONE.fullmatch(ref.replace(" ", "")) or _PHONE.search(ref):
        raise ProgrammeError(f"beneficiary {ref!r} looks like a phone number: give the platform's account id")
    if _ID_CARD.search(ref):
        raise ProgrammeError(
            f"beneficiary {ref!r} looks like an ID card number: give the platform's account id"
        )
    if not BENEFICIARY.fullmatch(ref):
        raise ProgrammeError(
            f"beneficiary {ref!r} is not an account reference: 4 to 64 ASCII letters, digits and . _ : - "
            "(the platform's pseudonymous account id; never a name, phone number or address)"
        )
    return ref


@dataclass(frozen=True, slots=True)
class UnitEntry:
    unit: str
    gateway: str
    meters: tuple[str, ...]
    scenario: str
    start_ms: int  # credited from here on
    end_ms: int | None  # withdrawn from here on (None: active)
    created_ms: int


@dataclass(frozen=True, slots=True)
class BeneficiaryEntry:
    unit: str
    from_ms: int
    beneficiary: str
    set_ms: int


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of a reporting period with one beneficiary (``[start, end)``, seconds)."""

    start: int
    end: int
    beneficiary: str


class UnitRegistry:
    """Units and beneficiary history (SQLite, WAL, at ``path``; or a given
    :class:`aggregator.store.sqldb.Db`, not closed here). Thread-safe behind one lock."""

    def __init__(self, path: str | Path | Db) -> None:
        self._db, self._owns = as_db(path)
        self.path = Path(self._db.where)
        self._lock = threading.RLock()
        try:
            self._db.ensure(_SCHEMA)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _locked(self) -> Iterator[Db]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        if self._owns:
            with self._lock:
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- changes ------------------------------------------------------------------------

    def add(
        self,
        unit: str,
        *,
        gateway: str,
        meters: Sequence[str],
        scenario: str,
        beneficiary: str,
        start_ms: int,
        now_ms: int,
    ) -> UnitEntry:
        """Enrol a unit with its first beneficiary. A unit id is never reused."""
        if not UNIT_ID.fullmatch(unit):
            raise ProgrammeError(f"unit id {unit!r}: 1 to 64 ASCII letters, digits and . _ : -")
        if scenario not in SCENARIOS:
            raise ProgrammeError(f"unit {unit}: scenario {scenario!r} is not one of {', '.join(SCENARIOS)}")
        if not meters or len(set(meters)) != len(meters):
            raise ProgrammeError(f"unit {unit}: give its meters, each once (got {list(meters)})")
        check_beneficiary(beneficiary)
        with self._lock, self._db.transaction() as db:
            db.lock("programme_units")  # the checks below and the insert, one writer at a time
            if db.execute("SELECT 1 FROM programme_units WHERE unit = ?", (unit,)).fetchone():
                raise ProgrammeError(f"unit {unit} is already enrolled (a unit id is never reused)")
            taken = self._meters_taken(db, gateway, meters)
            if taken:
                raise ProgrammeError(f"unit {unit}: {taken} already belong to another unit")
            db.execute(
                "INSERT INTO programme_units (unit, gateway, meters, scenario, start_ms, end_ms, created_ms) "
                "VALUES (?,?,?,?,?,?,?)",
                (unit, gateway, json.dumps(list(meters)), scenario, start_ms, None, now_ms),
            )
            db.execute(
                "INSERT INTO programme_beneficiaries (unit, from_ms, beneficiary, set_ms) VALUES (?,?,?,?)",
                (unit, start_ms, beneficiary, now_ms),
            )
        entry = self.get(unit)
        assert entry is not None
        return entry

    @staticmethod
    def _meters_taken(db: Db, gateway: str, meters: Sequence[str]) -> str:
        rows = db.execute(
            "SELECT unit, meters FROM programme_units WHERE gateway = ? AND end_ms IS NULL", (gateway,)
        ).fetchall()
        clash = [f"{gateway}/{m} (unit {u})" for u, ms in rows for m in json.loads(ms) if m in meters]
        return ", ".join(clash)

    def set_beneficiary(self, unit: str, beneficiary: str, *, from_ms: int, now_ms: int) -> BeneficiaryEntry:
        """The unit's reductions go to ``beneficiary`` from ``from_ms`` on. The history is kept:
        an entry can be added after the last one only (what was stated stays as stated)."""
        check_beneficiary(beneficiary)
        entry = self.get(unit)
        if entry is None:
            raise ProgrammeError(f"no unit {unit!r} (`puhui aggregator units list` lists them)")
        with self._lock, self._db.transaction() as db:
            db.lock(f"programme_beneficiaries:{unit}")  # the last entry read is still the last at insert
            row = db.execute(
                "SELECT MAX(from_ms) FROM programme_beneficiaries WHERE unit = ?", (unit,)
            ).fetchone()
            last = row[0] if row is not None else None
            if last is not None and from_ms <= last:
                raise ProgrammeError(
                    f"unit {unit}: a beneficiary change must start after the last one ({last} ms); "
                    "earlier periods keep the beneficiary they were stated for"
                )
            db.execute(
                "INSERT INTO programme_beneficiaries (unit, from_ms, beneficiary, set_ms) VALUES (?,?,?,?)",
                (unit, from_ms, beneficiary, now_ms),
            )
        return BeneficiaryEntry(unit, from_ms, beneficiary, now_ms)

    def withdraw(self, unit: str, *, from_ms: int) -> None:
        """The unit earns nothing from ``from_ms`` on (its meters may join another unit)."""
        with self._locked() as db:
            n = db.execute(
                "UPDATE programme_units SET end_ms = ? WHERE unit = ? AND end_ms IS NULL", (from_ms, unit)
            ).rowcount
        if n != 1:
            raise ProgrammeError(f"no active unit {unit!r}")

    # -- reading ------------------------------------------------------------------------

    def get(self, unit: str) -> UnitEntry | None:
        with self._locked() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM programme_units WHERE unit = ?", (unit,)).fetchone()
        return None if row is None else _entry(row)

    def units(self, *, gateway: str | None = None, beneficiary: str | None = None) -> list[UnitEntry]:
        sql, args = f"SELECT {_COLUMNS} FROM programme_units", []
        where = []
        if gateway is not None:
            where.append("gateway = ?")
            args.append(gateway)
        if beneficiary is not None:
            where.append("unit IN (SELECT unit FROM programme_beneficiaries WHERE beneficiary = ?)")
            args.append(beneficiary)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._locked() as db:
            rows = db.execute(sql + " ORDER BY unit", args).fetchall()
        return [_entry(r) for r in rows]

    def beneficiaries(self, unit: str) -> list[BeneficiaryEntry]:
        with self._locked() as db:
            rows = db.execute(
                "SELECT unit, from_ms, beneficiary, set_ms FROM programme_beneficiaries WHERE unit = ? "
                "ORDER BY from_ms",
                (unit,),
            ).fetchall()
        return [BeneficiaryEntry(*r) for r in rows]

    def segments(self, unit: UnitEntry, start: int, end: int) -> list[Segment]:
        """``[start, end)`` clipped to the unit's membership and split where its beneficiary
        changes (seconds; a change is effective from its whole second)."""
        lo = max(start, -(-unit.start_ms // 1000))
        hi = end if unit.end_ms is None else min(end, unit.end_ms // 1000)
        if lo >= hi:
            return []
        history = self.beneficiaries(unit.unit)
        out: list[Segment] = []
        for i, b in enumerate(history):
            s = max(lo, -(-b.from_ms // 1000))
            e = hi if i + 1 == len(history) else min(hi, -(-history[i + 1].from_ms // 1000))
            if s < e:
                out.append(Segment(s, e, b.beneficiary))
        return out


_COLUMNS = "unit, gateway, meters, scenario, start_ms, end_ms, created_ms"


def _entry(row: tuple[object, ...]) -> UnitEntry:
    unit, gateway, meters, scenario, start_ms, end_ms, created_ms = row
    return UnitEntry(
        str(unit), str(gateway), tuple(json.loads(str(meters))), str(scenario), int(str(start_ms)),
        None if end_ms is None else int(str(end_ms)), int(str(created_ms)),
    )  # fmt: skip
