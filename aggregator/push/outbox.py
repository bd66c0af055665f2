"""The push outbox: what each push target has taken, refused, or is still owed.

The statements table (``reduction_statements``) is the outbox's content. A statement is owed
to a target until ``push_deliveries`` holds a final row for the pair, so a statement saved by
any process (``reductions compute``, a scheduler) is owed without being enqueued: no crash
between saving and enqueuing can lose one. A row is written only once a statement has been
tried:

- ``pending``: tried, not taken yet (attempts, the last error, when the next try is due);
- ``delivered``: the receiver answered 2xx; written after the answer, so a crash in between
  sends the statement again under the same ``Idempotency-Key``;
- ``refused``: the receiver refused it for good (a 4xx about the request): not retried;
- ``held``: never sent, because the stored document does not verify or its package
  cannot be built.

The table is in the statements' database: the SQLite file, or with a PostgreSQL evidence
store its database (:mod:`aggregator.store.sqldb`), where every aggregator's pusher shares
one row per (target, statement).

A delivered row is never overwritten. :meth:`PushOutbox.requeue` makes refused and held
statements owed again (``puhui aggregator push retry``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from aggregator.errors import StoreError
from aggregator.methodology.store import StatementStore
from aggregator.store.sqldb import Db, as_db

STATES = ("pending", "delivered", "refused", "held")
FINAL = ("delivered", "refused", "held")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS push_deliveries (
    target TEXT NOT NULL,
    statement TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'refused', 'held')),
    attempts INTEGER NOT NULL,
    last_attempt_ms INTEGER,
    next_attempt_ms INTEGER,
    delivered_ms INTEGER,
    http_status INTEGER,
    last_error TEXT,
    PRIMARY KEY (target, statement)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS push_deliveries_state ON push_deliveries(target, state, last_attempt_ms);
"""
# Statements a target is owed, oldest first (created_ms, then id: one order in every process).
_OWED = """
SELECT s.id FROM reduction_statements AS s
LEFT JOIN push_deliveries AS d ON d.target = ? AND d.statement = s.id
WHERE d.state IS NULL OR d.state = 'pending'
ORDER BY s.created_ms, s.id LIMIT ?
"""
# One attempt's outcome; a delivered row stays delivered (another pusher may have got there first).
_RECORD = """
INSERT INTO push_deliveries (target, statement, state, attempts, last_attempt_ms, next_attempt_ms,
    delivered_ms, http_status, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (target, statement) DO UPDATE SET
    state = excluded.state, attempts = push_deliveries.attempts + excluded.attempts,
    last_attempt_ms = excluded.last_attempt_ms, next_attempt_ms = excluded.next_attempt_ms,
    delivered_ms = excluded.delivered_ms, http_status = excluded.http_status,
    last_error = excluded.last_error
WHERE push_deliveries.state != 'delivered'
"""
_COLUMNS = (
    "target, statement, state, attempts, last_attempt_ms, next_attempt_ms, delivered_ms, http_status, "
    "last_error"
)
ERROR_CHARS = 500  # of a receiver's answer or an exception, kept with the row


@dataclass(frozen=True, slots=True)
class Delivery:
    """One statement's row for one target."""

    target: str
    statement: str
    state: str
    attempts: int
    last_attempt_ms: int | None
    next_attempt_ms: int | None
    delivered_ms: int | None
    http_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """Where a target stands: ``owed`` counts statements not yet delivered, refused or held
    (``retrying`` of them have failed at least once; ``last`` is the latest such failure)."""

    target: str
    delivered: int
    owed: int
    retrying: int
    refused: int
    held: int
    last_delivered_ms: int | None
    last: Delivery | None


class PushOutbox:
    """The delivery table beside the statements, in the aggregator's SQLite file (WAL,
    synchronous=FULL: a recorded outcome survives a power cut), or in a given
    :class:`aggregator.store.sqldb.Db` (not closed here). Thread-safe (one lock)."""

    def __init__(self, path: str | Path | Db) -> None:
        self._lock = threading.Lock()
        try:
            self._db, self._owns = as_db(path)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the push outbox: {exc}") from exc
        self.path = Path(self._db.where)  # the SQLite file (messages name ``_db.where``)
        try:
            self._statements = StatementStore(self._db)  # its schema: the statements table exists
        except sqlite3.Error as exc:
            self._close_db()
            raise StoreError(f"{self._db.where}: cannot open the statement store: {exc}") from exc
        try:
            self._db.ensure(_SCHEMA)
        except sqlite3.Error as exc:
            self._close_db()
            raise StoreError(f"{self._db.where}: cannot open the push outbox: {exc}") from exc

    def _close_db(self) -> None:
        if self._owns:
            self._db.close()

    @property
    def statements(self) -> StatementStore:
        """The statement store the outbox reads (packages are built from it)."""
        return self._statements

    def close(self) -> None:
        with self._lock:
            self._statements.close()
            self._close_db()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _sql(self, what: str) -> Iterator[Db]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"{self._db.where}: push outbox: {what}: {exc}") from exc
            except StoreError as exc:  # PostgreSQL's (they name the database)
                raise StoreError(f"push outbox: {what}: {exc}") from exc

    def owed(self, target: str, limit: int) -> list[str]:
        """Up to ``limit`` ids of statements ``target`` is owed, oldest first."""
        with self._sql("reading owed statements") as db:
            return [str(r[0]) for r in db.execute(_OWED, (target, limit))]

    def document(self, statement: str) -> bytes | None:
        """The statement's stored bytes, exactly as kept."""
        try:
            return self._statements.document(statement)
        except sqlite3.Error as exc:  # PostgreSQL's are StoreError already
            raise StoreError(f"{self._db.where}: reading statement {statement}: {exc}") from exc

    def failed(
        self, target: str, statement: str, *, at_ms: int, next_ms: int, error: str, http_status: int | None
    ) -> None:
        """A try that will be repeated (5xx, timeout, connection refused, ...)."""
        self._record(target, statement, "pending", 1, at_ms, next_ms, None, http_status, error)

    def delivered(self, target: str, statement: str, *, at_ms: int, http_status: int) -> None:
        """The receiver took it (2xx). Durable when this returns."""
        self._record(target, statement, "delivered", 1, at_ms, None, at_ms, http_status, None)

    def refused(self, target: str, statement: str, *, at_ms: int, http_status: int, error: str) -> None:
        """The receiver refused it for good: not tried again until requeued."""
        self._record(target, statement, "refused", 1, at_ms, None, None, http_status, error)

    def held(self, target: str, statement: str, *, at_ms: int, error: str) -> None:
        """Not sent at all (the reason in ``error``): not tried again until requeued."""
        self._record(target, statement, "held", 0, at_ms, None, None, None, error)

    def _record(
        self, target: str, statement: str, state: str, attempts: int, at_ms: int, next_ms: int | None,
        delivered_ms: int | None, http_status: int | None, error: str | None,
    ) -> None:  # fmt: skip
        row = (target, statement, state, attempts, at_ms, next_ms, delivered_ms, http_status,
               None if error is None else error[:ERROR_CHARS])  # fmt: skip
        with self._sql(f"recording {state} for {target}/{statement}") as db:
            db.execute(_RECORD, row)

    def requeue(self, target: str, statements: Sequence[str] = ()) -> int:
        """Make ``target``'s refused and held statements (all, or those named) owed again."""
        sql = "DELETE FROM push_deliveries WHERE target = ? AND state IN ('refused', 'held')"
        with self._sql(f"requeueing for {target}") as db:
            if not statements:
                return db.execute(sql, (target,)).rowcount
            return sum(db.execute(sql + " AND statement = ?", (target, s)).rowcount for s in statements)

    def deliveries(self, target: str, state: str, limit: int = 100) -> list[Delivery]:
        """``target``'s rows in ``state``, the latest attempt first."""
        with self._sql(f"listing {state} deliveries of {target}") as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM push_deliveries WHERE target = ? AND state = ? "
                "ORDER BY last_attempt_ms DESC, statement LIMIT ?",
                (target, state, limit),
            ).fetchall()
        return [Delivery(*row) for row in rows]

    def status(self, target: str) -> TargetStatus:
        with self._sql(f"reading the status of {target}") as db:
            [(total,)] = db.execute("SELECT count(*) FROM reduction_statements").fetchall()
            counts = dict.fromkeys(STATES, 0)
            counts.update(
                db.execute(
                    "SELECT state, count(*) FROM push_deliveries WHERE target = ? GROUP BY state", (target,)
                ).fetchall()
            )
            [(last_ms,)] = db.execute(
                "SELECT max(delivered_ms) FROM push_deliveries WHERE target = ? AND state = 'delivered'",
                (target,),
            ).fetchall()
            last = db.execute(
                f"SELECT {_COLUMNS} FROM push_deliveries WHERE target = ? AND state = 'pending' "
                "ORDER BY last_attempt_ms DESC LIMIT 1",
                (target,),
            ).fetchone()
        final = sum(counts[s] for s in FINAL)
        return TargetStatus(
            target, counts["delivered"], int(total) - final, counts["pending"], counts["refused"],
            counts["held"], last_ms, None if last is None else Delivery(*last),
        )  # fmt: skip
