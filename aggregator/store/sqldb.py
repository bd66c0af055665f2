"""One small connection adapter for the programme's own tables (units and beneficiaries, the
statement schedule, the statements and their ledger, the push outbox): the stores write their
SQL once, with ``?`` placeholders, and run it on either

- :class:`SQLiteDb`: the SQLite file at ``store.path`` (WAL, ``synchronous=FULL``), the
  default for a single host; or
- :class:`PostgresDb`: the PostgreSQL database of the evidence (``store.postgres``), so that
  every aggregator over it sees the same units, statements and deliveries and a successor on
  another host carries on where the old leader stopped (docs/scale.md). Its schema is
  :mod:`aggregator.store.postgres_programme` (numbered migrations of their own).

The SQL the stores use is what both databases accept: ``INSERT ... ON CONFLICT``, quoted
``"end"``, row-value comparisons. Where they differ the store asks :attr:`Db.dialect`.

:meth:`Db.transaction` is exclusive where it matters: SQLite's ``BEGIN IMMEDIATE`` takes the
file's write lock; in PostgreSQL :meth:`Db.lock` takes a transaction advisory lock on a name,
so two aggregators checking then writing the same thing (a unit's statement, the ledger) take
turns. Thread-safe: one connection behind a lock; a transaction holds it to its end.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aggregator.config import StoreSettings
from aggregator.errors import StoreConflict, StoreError

if TYPE_CHECKING:
    import psycopg

Dialect = Literal["sqlite", "postgres"]


@dataclass(frozen=True, slots=True)
class Result:
    """A statement's rows (all fetched) and how many rows it changed."""

    rows: list[tuple[Any, ...]]
    rowcount: int

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)


class Db(Protocol):
    """What the programme's stores need of a database."""

    dialect: Dialect
    where: str  # for messages: the file, or postgresql://user@host:port/db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def transaction(self) -> Any: ...  # a context manager: one transaction (nested: the outer one)
    def lock(self, name: str) -> None: ...  # inside a transaction: until it ends
    def ensure(self, sqlite_schema: str) -> None: ...  # SQLite: the tables; PostgreSQL: migrated
    def close(self) -> None: ...


class SQLiteDb:
    """The SQLite file (WAL, synchronous=FULL: a committed row survives a power cut)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    def ensure(self, sqlite_schema: str) -> None:
        with self._lock:
            self._db.executescript(sqlite_schema)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result:
        with self._lock:
            cur = self._db.execute(sql, args)
            return Result(cur.fetchall(), cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[SQLiteDb]:
        with self._lock:
            if self._depth:
                yield self
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            self._db.execute("COMMIT")

    def lock(self, name: str) -> None:
        """Nothing to take: ``BEGIN IMMEDIATE`` holds the whole file's write lock."""

    def close(self) -> None:
        with self._lock:
            self._db.close()


_SQL_CACHE: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    out = _SQL_CACHE.get(sql)
    if out is None:
        out = _SQL_CACHE[sql] = sql.replace("%", "%%").replace("?", "%s")
    return out


class PostgresDb:
    """The evidence store's PostgreSQL database, for the programme's tables. One connection
    (autocommit outside :meth:`transaction`); a connection the server dropped is replaced on
    the next call: a single statement is tried once more on the new one, and a transaction
    checks its connection before it begins. One that breaks inside a transaction is a
    :class:`StoreError` (nothing of it was committed, unless the commit's answer was lost)."""

    dialect: Dialect = "postgres"

    def __init__(self, conninfo: Mapping[str, Any]) -> None:
        from aggregator.store.postgres_programme import migrate

        self._conninfo = {"application_name": "puhui-aggregator", **conninfo}
        self.where = (
            f"postgresql://{conninfo.get('user', '')}@{conninfo.get('host', '')}:{conninfo.get('port', 5432)}"
            f"/{conninfo.get('dbname', '')}"
        )
        self._lock = threading.RLock()
        self._depth = 0
        self._conn: psycopg.Connection[Any] | None = None
        with self.transaction():
            migrate(self._live(), self.where)

    def _live(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(**self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                raise StoreError(f"{self.where}: cannot connect: {exc}") from exc
        return self._conn

    def ensure(self, sqlite_schema: str) -> None:
        """Nothing: the migrations ran at open."""

    def _run(self, sql: str, run: Any) -> Any:
        import psycopg

        with self._lock:
            for attempt in range(2):
                conn = self._live()
                try:
                    return run(conn, _pg_sql(sql))
                except psycopg.IntegrityError as exc:
                    raise StoreConflict(f"{self.where}: {exc}") from exc
                except psycopg.OperationalError as exc:
                    if conn.closed and not self._depth and attempt == 0:
                        continue  # the server dropped the connection (a restart): once more
                    raise StoreError(f"{self.where}: {exc}") from exc
                except psycopg.Error as exc:
                    raise StoreError(f"{self.where}: {exc}") from exc
        raise AssertionError("unreachable")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result:
        def run(conn: psycopg.Connection[Any], q: str) -> Result:
            cur = conn.execute(q.encode(), args)
            return Result(cur.fetchall() if cur.description else [], cur.rowcount)

        result: Result = self._run(sql, run)
        return result

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        def run(conn: psycopg.Connection[Any], q: str) -> None:
            with conn.cursor() as cur:
                cur.executemany(q.encode(), rows)

        if rows:
            self._run(sql, run)

    @contextmanager
    def transaction(self) -> Iterator[PostgresDb]:
        import psycopg

        with self._lock:
            if self._depth:
                yield self
                return
            self.execute("SELECT 1")  # a connection the server dropped is replaced first (rare: cheap)
            conn = self._live()
            self._depth += 1
            try:
                with conn.transaction():
                    yield self
            except psycopg.IntegrityError as exc:
                raise StoreConflict(f"{self.where}: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"{self.where}: {exc}") from exc
            finally:
                self._depth -= 1

    def lock(self, name: str) -> None:
        """A transaction advisory lock on ``name`` (released at commit or rollback)."""
        from aggregator.store.postgres_programme import LOCK_CLASS

        self.execute("SELECT pg_advisory_xact_lock(?::int4, hashtext(?))", (LOCK_CLASS, name))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def open_programme_db(settings: StoreSettings) -> SQLiteDb | PostgresDb:
    """Where a config's programme state lives: the PostgreSQL of ``store.postgres`` when there
    is one (shared by every aggregator over it), else the SQLite file at ``store.path``."""
    if settings.postgres is None:
        return SQLiteDb(settings.path)
    from aggregator.store.postgres import connection_info

    return PostgresDb(connection_info(settings.postgres))


def as_db(db: str | Path | Db) -> tuple[Db, bool]:
    """``db`` as a :class:`Db`, and whether the caller opened it (then it closes it): a path
    is a SQLite file."""
    if isinstance(db, str | Path):
        return SQLiteDb(db), True
    return db, False
