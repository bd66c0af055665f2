"""Durable statements and the credited-interval ledger (SQLite, WAL; or the evidence's
PostgreSQL, :mod:`aggregator.store.sqldb`).

Tables (prefixed ``reduction_``, so they can share the aggregator's database file):

- ``reduction_statements``: one row per statement: id (SHA-256 of the body), the document's
  exact bytes, and columns to list by gateway, scenario and period.
- ``reduction_statement_units``: which units each statement covers (to list by unit).
- ``reduction_receipts``: the platforms' signed receipts (issuance, transfer, retirement)
  per statement; a statement's status is its latest receipt's kind.
- ``reduction_ledger``: one row per credited run ``[start, end)`` of a series (gateway,
  meter, quantity), naming the statement. A statement is stored only if none of its runs
  overlaps a stored run of the same series: checked and inserted in one ``BEGIN IMMEDIATE``
  transaction (PostgreSQL: under the ``reduction_ledger`` advisory lock), so two writers,
  on one host or several, cannot both credit an interval.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from aggregator.methodology.errors import DoubleClaim, ReceiptRefused
from aggregator.methodology.statements import Statement, parse_statement
from aggregator.store.sqldb import Db, as_db
from evidence.receipt import Receipt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reduction_statements (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    scenario TEXT NOT NULL,
    parameter_set TEXT NOT NULL,
    parameter_version TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    er_tco2e REAL NOT NULL,
    document BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS reduction_ledger (
    gateway TEXT NOT NULL,
    meter TEXT NOT NULL,
    quantity TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    statement TEXT NOT NULL REFERENCES reduction_statements(id),
    PRIMARY KEY (gateway, meter, quantity, start)
);
CREATE INDEX IF NOT EXISTS reduction_ledger_statement ON reduction_ledger(statement);
CREATE TABLE IF NOT EXISTS reduction_statement_units (
    statement TEXT NOT NULL REFERENCES reduction_statements(id),
    unit TEXT NOT NULL,
    PRIMARY KEY (unit, statement)
);
CREATE TABLE IF NOT EXISTS reduction_receipts (
    platform TEXT NOT NULL,
    receipt_id TEXT NOT NULL,
    statement TEXT NOT NULL REFERENCES reduction_statements(id),
    kind TEXT NOT NULL,
    tco2e REAL NOT NULL,
    created_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    document BLOB NOT NULL,
    PRIMARY KEY (platform, receipt_id)
);
CREATE INDEX IF NOT EXISTS reduction_receipts_statement ON reduction_receipts(statement, received_ms);
CREATE TABLE IF NOT EXISTS reduction_statement_beneficiaries (
    statement TEXT PRIMARY KEY REFERENCES reduction_statements(id),
    beneficiary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reduction_statement_beneficiaries_ref
    ON reduction_statement_beneficiaries(beneficiary);
CREATE INDEX IF NOT EXISTS reduction_statements_order ON reduction_statements(period_start, gateway, id);
"""
_UNIT_INSERT = "INSERT INTO reduction_statement_units (statement, unit) VALUES (?, ?) ON CONFLICT DO NOTHING"
_OVERLAP = (
    'SELECT statement, start, "end" FROM reduction_ledger WHERE gateway = ? AND meter = ? '
    'AND quantity = ? AND start < ? AND "end" > ? ORDER BY start'
)


@dataclass(frozen=True, slots=True)
class StoredStatement:
    id: str
    gateway: str
    scenario: str
    parameter_set: str
    parameter_version: str
    period_start: int
    period_end: int
    created_ms: int
    er_tco2e: float


@dataclass(frozen=True, slots=True)
class StatementFilter:
    """What a statement list asks for (every field optional; all given must hold)."""

    gateway: str | None = None
    scenario: str | None = None
    unit: str | None = None
    period_from: int | None = None  # period_start >= this
    period_to: int | None = None  # period_end <= this
    status: str | None = None  # signed, issued, transferred, retired (the latest receipt)
    beneficiary: str | None = None  # the platform account the statement's subject names


StatementKey = tuple[int, str, str]
"""A statement's place in the list order: (period_start, gateway, id)."""


class StatementStore:
    """Statements and the ledger in a SQLite database file (WAL, synchronous=FULL), or in a
    :class:`aggregator.store.sqldb.Db` given instead of a path (then not closed here).

    Thread-safe: one connection behind a lock (the API reads from a thread pool)."""

    def __init__(self, path: str | Path | Db) -> None:
        self.db, self._owns = as_db(path)
        self.path = Path(self.db.where)
        self._lock = threading.RLock()
        self._order = "rowid" if self.db.dialect == "sqlite" else "seq"  # receipts taken in one ms
        try:
            self.db.ensure(_SCHEMA)
            self._index_units()
        except BaseException:
            self.close()
            raise

    def _index_units(self) -> None:
        """Fill the unit index for statements stored before it existed."""
        rows = self._db.execute(
            "SELECT id, document FROM reduction_statements WHERE id NOT IN "
            "(SELECT statement FROM reduction_statement_units)"
        ).fetchall()
        for sid, document in rows:
            units = {u["id"] for u in parse_statement(bytes(document)).body["subject"]["units"]}
            self._db.executemany(
                _UNIT_INSERT,
                [(sid, u) for u in units],
            )

    @property
    def _db(self) -> Db:
        return self.db

    @contextmanager
    def _locked(self) -> Iterator[Db]:
        with self._lock:
            yield self.db

    def close(self) -> None:
        if self._owns:
            with self._lock:
                self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def save(self, statement: Statement) -> None:
        """Store a statement and its ledger runs; raise :class:`DoubleClaim` if any interval
        it credits is already credited (or the statement is already stored). Inside
        :meth:`transaction`, part of that transaction."""
        with self.transaction() as db:
            db.lock("reduction_ledger")  # PostgreSQL: one ledger check at a time, every host
            self._save(statement)

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        """One transaction on the store's database (exclusive: SQLite's ``BEGIN IMMEDIATE``;
        in PostgreSQL take :meth:`Db.lock` on what is checked). The schedule saves a statement
        and its own row in one."""
        with self._lock, self.db.transaction() as db:
            yield db

    def _save(self, statement: Statement) -> None:
        b, sid = statement.body, statement.id  # the id hashes the body: compute it once
        db = self._db
        self._check_claims(statement, sid)
        db.execute(
            "INSERT INTO reduction_statements (id, gateway, scenario, parameter_set, parameter_version, "
            "period_start, period_end, created_ms, er_tco2e, document) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                sid,
                statement.gateway,
                b["methodology"]["scenario"],
                b["methodology"]["parameter_set"]["id"],
                b["methodology"]["parameter_set"]["version"],
                b["period"]["start"],
                b["period"]["end"],
                b["created_ms"],
                statement.er_tco2e,
                statement.to_bytes(),
            ),
        )
        db.executemany(
            'INSERT INTO reduction_ledger (gateway, meter, quantity, start, "end", statement) '
            "VALUES (?,?,?,?,?,?)",
            [(statement.gateway, m, q, s, e, sid) for m, q, s, e in statement.credited_runs()],
        )
        db.executemany(
            _UNIT_INSERT,
            [(sid, u["id"]) for u in b["subject"]["units"]],
        )
        if "beneficiary" in b["subject"]:
            db.execute(
                "INSERT INTO reduction_statement_beneficiaries (statement, beneficiary) VALUES (?, ?)",
                (sid, b["subject"]["beneficiary"]),
            )

    def _check_claims(self, statement: Statement, sid: str) -> None:
        gw = statement.gateway
        if self._db.execute("SELECT 1 FROM reduction_statements WHERE id = ?", (sid,)).fetchone():
            raise DoubleClaim(f"statement {sid} is already stored")
        by_series: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for meter, quantity, start, end in statement.credited_runs():
            by_series.setdefault((meter, quantity), []).append((start, end))
        clashes: list[str] = []
        for (meter, quantity), runs in by_series.items():
            lo, hi = min(s for s, _ in runs), max(e for _, e in runs)
            stored = self._db.execute(_OVERLAP, (gw, meter, quantity, hi, lo)).fetchall()
            clashes += [
                f"{gw}/{meter}/{quantity} [{max(s, a)}, {min(e, b)}) already credited by statement {other}"
                for other, s, e in stored
                for a, b in runs
                if s < b and e > a
            ]
        if clashes:
            others = sorted({c.rsplit("statement ", 1)[1] for c in clashes})
            held = [f"{o[:16]}… is {self._status(o)}" + self._receipt_note(o) for o in others]
            clashes = [*clashes[:5], *(f"statement {h}" for h in held)]
            more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 + len(held) else ""
            raise DoubleClaim(
                f"statement {sid} would credit intervals twice: " + "; ".join(clashes[:5]) + more
            )

    def get(self, statement_id: str) -> Statement | None:
        """A stored statement by id (a unique prefix of at least 8 hex digits also works)."""
        if not 8 <= len(statement_id) <= 64 or statement_id.lower().strip("0123456789abcdef"):
            return None  # not an id: and no LIKE wildcards reach the query
        with self._locked() as db:
            rows = db.execute(
                "SELECT document FROM reduction_statements WHERE id LIKE ? LIMIT 2",
                (statement_id.lower() + "%" if len(statement_id) >= 8 else statement_id,),
            ).fetchall()
        return parse_statement(bytes(rows[0][0])) if len(rows) == 1 else None

    def of_unit(self, unit: str, start: int, end: int) -> builtins.list[Statement]:
        """The stored statements of ``unit`` for exactly the period ``[start, end)``, oldest first."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT s.document FROM reduction_statements s JOIN reduction_statement_units u "
                "ON u.statement = s.id WHERE u.unit = ? AND s.period_start = ? AND s.period_end = ? "
                "ORDER BY s.created_ms, s.id",
                (unit, start, end),
            ).fetchall()
        return [parse_statement(bytes(r[0])) for r in rows]

    def document(self, statement_id: str) -> bytes | None:
        """The stored bytes exactly as kept (the verifier reads these)."""
        with self._locked() as db:
            row = db.execute(
                "SELECT document FROM reduction_statements WHERE id = ?", (statement_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def list(self, *, gateway: str | None = None) -> list[StoredStatement]:
        """Stored statements, oldest period first."""
        sql = "SELECT id, gateway, scenario, parameter_set, parameter_version, period_start, period_end, "
        sql += "created_ms, er_tco2e FROM reduction_statements"
        args: tuple[str, ...] = ()
        if gateway is not None:
            sql, args = sql + " WHERE gateway = ?", (gateway,)
        with self._locked() as db:
            rows = db.execute(sql + " ORDER BY period_start, gateway, id", args).fetchall()
        return [StoredStatement(*row) for row in rows]

    def page(
        self, where: StatementFilter, *, after: StatementKey | None = None, limit: int = 100
    ) -> builtins.list[StoredStatement]:
        """Up to ``limit`` statements matching ``where`` after ``after``, in list order
        (period start, gateway, id): a cursor that stays valid while statements are added."""
        sql = "SELECT id, gateway, scenario, parameter_set, parameter_version, period_start, period_end, "
        sql += "created_ms, er_tco2e FROM reduction_statements"
        conds: list[str] = []
        args: list[object] = []
        for column, value in (("gateway", where.gateway), ("scenario", where.scenario)):
            if value is not None:
                conds.append(f"{column} = ?")
                args.append(value)
        if where.unit is not None:
            conds.append("id IN (SELECT statement FROM reduction_statement_units WHERE unit = ?)")
            args.append(where.unit)
        if where.beneficiary is not None:
            conds.append(
                "id IN (SELECT statement FROM reduction_statement_beneficiaries WHERE beneficiary = ?)"
            )
            args.append(where.beneficiary)
        if where.period_from is not None:
            conds.append("period_start >= ?")
            args.append(where.period_from)
        if where.period_to is not None:
            conds.append("period_end <= ?")
            args.append(where.period_to)
        if where.status == "signed":
            conds.append("id NOT IN (SELECT statement FROM reduction_receipts)")
        elif where.status is not None:
            kind = {"issued": "issuance", "transferred": "transfer", "retired": "retirement"}[where.status]
            conds.append(
                "(SELECT r.kind FROM reduction_receipts r WHERE r.statement = reduction_statements.id "
                f"ORDER BY r.received_ms DESC, r.{self._order} DESC LIMIT 1) = ?"
            )
            args.append(kind)
        if after is not None:
            conds.append("(period_start, gateway, id) > (?, ?, ?)")
            args.extend(after)
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        with self._locked() as db:
            rows = db.execute(sql + " ORDER BY period_start, gateway, id LIMIT ?", (*args, limit)).fetchall()
        return [StoredStatement(*row) for row in rows]

    # -- platform receipts ------------------------------------------------------------

    def add_receipt(self, receipt: Receipt, *, received_ms: int) -> bool:
        """Keep a verified receipt; False when the same document was taken already. Raises
        :class:`ReceiptRefused` naming the receipt when it cannot apply."""
        with self._lock, self.db.transaction() as db:
            db.lock(f"reduction_receipts:{receipt.statement}")
            new = self._check_receipt(receipt)
            if new:
                db.execute(
                    "INSERT INTO reduction_receipts (platform, receipt_id, statement, kind, tco2e, "
                    "created_ms, received_ms, document) VALUES (?,?,?,?,?,?,?,?)",
                    (receipt.platform, receipt.receipt_id, receipt.statement, receipt.kind, receipt.tco2e,
                     receipt.created_ms, received_ms, receipt.to_bytes()),
                )  # fmt: skip
            return new

    def _check_receipt(self, r: Receipt) -> bool:
        db = self._db
        same = db.execute(
            "SELECT document FROM reduction_receipts WHERE platform = ? AND receipt_id = ?",
            (r.platform, r.receipt_id),
        ).fetchone()
        if same is not None:
            if bytes(same[0]) == r.to_bytes():
                return False
            raise ReceiptRefused(
                f"{r.label}: {r.platform} already gave another document under this receipt id"
            )
        row = db.execute("SELECT er_tco2e FROM reduction_statements WHERE id = ?", (r.statement,)).fetchone()
        if row is None:
            raise ReceiptRefused(f"{r.label}: no such statement here")
        taken = db.execute("SELECT kind FROM reduction_receipts WHERE statement = ?", (r.statement,))
        kinds = [str(k) for (k,) in taken]
        if "retirement" in kinds:
            raise ReceiptRefused(f"{r.label}: the statement is retired already; nothing follows a retirement")
        if r.kind == "issuance" and "issuance" in kinds:
            raise ReceiptRefused(f"{r.label}: the statement is issued already (one issuance per statement)")
        if r.kind != "issuance" and "issuance" not in kinds:
            raise ReceiptRefused(f"{r.label}: a {r.kind} needs the statement's issuance first")
        if r.tco2e > float(row[0]) * (1 + 1e-9) + 1e-12:
            raise ReceiptRefused(f"{r.label}: {r.tco2e} tCO2e is more than the statement's ER {row[0]}")
        return True

    def receipts(self, statement_id: str) -> builtins.list[tuple[str, str, str, float, int]]:
        """(platform, receipt_id, kind, tco2e, created_ms) of a statement's receipts, in order taken."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT platform, receipt_id, kind, tco2e, created_ms FROM reduction_receipts "
                f"WHERE statement = ? ORDER BY received_ms, {self._order}",
                (statement_id,),
            ).fetchall()
        return [(str(p), str(i), str(k), float(t), int(c)) for p, i, k, t, c in rows]

    def status(self, statement_id: str) -> str:
        """signed, issued, transferred or retired: what the latest receipt says."""
        with self._locked():
            return self._status(statement_id)

    def _status(self, statement_id: str) -> str:
        row = self._db.execute(
            "SELECT kind FROM reduction_receipts WHERE statement = ? "
            f"ORDER BY received_ms DESC, {self._order} DESC LIMIT 1",
            (statement_id,),
        ).fetchone()
        return (
            "signed"
            if row is None
            else {"issuance": "issued", "transfer": "transferred"}.get(str(row[0]), "retired")
        )

    def _receipt_note(self, statement_id: str) -> str:
        rows = self._db.execute(
            "SELECT platform, receipt_id, kind FROM reduction_receipts WHERE statement = ? "
            f"ORDER BY received_ms, {self._order}",
            (statement_id,),
        ).fetchall()
        return "" if not rows else " (" + ", ".join(f"{k} receipt {p}/{i}" for p, i, k in rows) + ")"

    def credited_by(self, gateway: str, meter: str, quantity: str, start: int) -> str | None:
        """The statement that credited the interval starting at ``start``, if any."""
        with self._locked() as db:
            row = db.execute(
                "SELECT statement FROM reduction_ledger WHERE gateway = ? AND meter = ? AND quantity = ? "
                'AND start <= ? AND "end" > ?',
                (gateway, meter, quantity, start, start),
            ).fetchone()
        return None if row is None else str(row[0])
