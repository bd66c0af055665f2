"""The gateway's durable evidence state: one SQLite database in WAL mode.

::

    meta           key -> value                 schema version, gateway id
    builder_state  one row: JSON snapshot       IntervalBuilder.snapshot() at the last submit
    pending        id, record bytes, added_ms   closed intervals, encoded once, not sealed yet
    chain          one row                      last seq + last header hash (the sealer state),
                                                last ack, totals of acks and drops
    batches        seq, header_sha256, kind,    sealed batches not yet acknowledged: the exact
                   created_ms, size, records,   bytes that travel (kind 'data' or 'drop');
                   data                         immutable once written
    delivery       seq, attempts, last_sent_ms, the mutable send state of each batch in
                   rejects, last_reject(_ms)    ``batches`` (kept apart: SQLite rewrites a
                                                whole row, blob included, on any UPDATE)

**Crash consistency.** Every operation is one transaction: ``add_pending`` (records + the
builder snapshot that no longer holds them), a seal (insert the batch and its delivery
row, delete the pending records it holds, advance ``chain``; under the outbox cap also
delete the dropped batches and insert the signed drop batch), an ack (delete the batch,
record the ack). A batch is published only after its seal committed, so after kill -9 at
any moment either the seal happened (and the batch is resent until acked) or it did not
(and the same records are sealed again under the same, never-published, sequence number):
a sequence number is never used for two different contents, nothing closed is lost and
nothing is sealed twice.

**Durability.** ``synchronous=FULL``: every commit fsyncs the WAL before it returns, so
a power cut, not only a process crash, keeps what was committed; that matters because a
committed seal may already be at the aggregator (a lost seal would be resealed with other
content under the same seq: a fork) and a committed ``add_pending`` is what lets the
builder forget those intervals. (``NORMAL`` would survive kill -9 but not power loss.) Only
the advisory "sent" bookkeeping commits with ``synchronous=NORMAL``: losing it costs a
resend, and the next FULL commit syncs it along. Many records go into one transaction
(one fsync per submit or seal, not per record) to spare SD cards.

The database is opened with ``locking_mode=EXCLUSIVE``: a second gateway process on the
same state directory would fork the chain, so it is refused (:class:`EvidenceStoreError`).

**Storage failures.** SQLite says "disk I/O error" or "database or disk is full" whatever
the cause; :func:`storage_problem` looks at the error code and at the file system to say
what is wrong (no space left, read-only file system, permission denied, another process)
with the path. A write that fails is rolled back as a whole and raised as
:class:`EvidenceStoreError` saying so and what the database still holds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evidence.batch import GENESIS_PREV, SealedBatch
from gateway.errors import EvidenceStoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "evidence.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS builder_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL, saved_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY, record BLOB NOT NULL, added_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL, last_header_sha256 TEXT NOT NULL,
    last_ack_seq INTEGER, last_ack_ms INTEGER, acked INTEGER NOT NULL DEFAULT 0,
    dropped_batches INTEGER NOT NULL DEFAULT 0, dropped_intervals INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, header_sha256 TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('data', 'drop')), created_ms INTEGER NOT NULL,
    size INTEGER NOT NULL, records INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS delivery (
    seq INTEGER PRIMARY KEY, attempts INTEGER NOT NULL DEFAULT 0, last_sent_ms INTEGER,
    rejects INTEGER NOT NULL DEFAULT 0, last_reject TEXT, last_reject_ms INTEGER);
"""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A sealed batch in the outbox, without its bytes."""

    seq: int
    header_sha256: str
    kind: str  # "data" | "drop"
    created_ms: int
    size: int
    records: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    pending: int
    oldest_created_ms: int | None
    last_seq: int
    last_ack_seq: int | None
    last_ack_ms: int | None
    acked: int
    dropped_batches: int
    dropped_intervals: int


class EvidenceStore:
    """The SQLite state of one gateway. Not thread-safe: one owner (the event loop)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, gateway_id: str) -> EvidenceStore:
        """Open (or create) ``state_dir/evidence.sqlite`` for ``gateway_id``."""
        directory = Path(state_dir)
        path = directory / DB_NAME
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
        except (OSError, sqlite3.Error) as exc:
            raise EvidenceStoreError(f"{path}: cannot open: {storage_problem(exc, path)}") from exc
        store = cls(conn, path)
        try:
            store._setup(gateway_id)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if not _is_storage_error(exc):
                raise
            raise EvidenceStoreError(f"{path}: cannot open: {storage_problem(exc, path)}") from exc
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self, gateway_id: str) -> None:
        c = self._conn
        c.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise EvidenceStoreError(f"{self.path}: cannot use WAL mode (got {mode!r})")
        c.execute("PRAGMA synchronous=FULL")
        c.executescript(_SCHEMA)  # idempotent; executescript runs outside our transactions
        with self.transaction():
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                c.executemany("INSERT INTO meta VALUES (?, ?)",
                              [("schema", str(SCHEMA_VERSION)), ("gateway", gateway_id)])  # fmt: skip
                c.execute("INSERT INTO chain (id, last_seq, last_header_sha256) VALUES (1, 0, ?)",
                          (GENESIS_PREV,))  # fmt: skip
            elif meta.get("gateway") != gateway_id:
                raise EvidenceStoreError(
                    f"{self.path}: state of gateway {meta.get('gateway')!r}, not {gateway_id!r}; "
                    "each gateway needs its own state directory"
                )
            elif meta.get("schema") != str(SCHEMA_VERSION):
                raise EvidenceStoreError(
                    f"{self.path}: schema {meta.get('schema')}, expected {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        self._conn.close()

    # -- transactions ----------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        """One write transaction; ``durable=False`` commits without fsync (advisory data)."""
        c = self._conn
        try:
            if not durable:
                c.execute("PRAGMA synchronous=NORMAL")
            try:
                c.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    c.execute("COMMIT")
                except BaseException:
                    if c.in_transaction:  # a failed COMMIT (disk full) may leave it open
                        c.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    c.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            if not _is_storage_error(exc):
                raise
            raise EvidenceStoreError(
                f"{self.path}: cannot write: {storage_problem(exc, self.path)}; the write was rolled "
                f"back, {self._kept()}"
            ) from exc

    def _kept(self) -> str:
        """What the database still holds, for an error message."""
        try:
            pending, (batches, size) = self.pending_count(), self.usage()
        except sqlite3.Error:
            return "everything committed before it is kept"
        return (
            f"everything committed before it is kept ({pending} closed interval(s) waiting to be sealed, "
            f"{batches} sealed batch(es) of {size} bytes waiting for an ack)"
        )

    # -- builder snapshot and pending records -----------------------------------------

    def builder_state(self) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT state FROM builder_state WHERE id = 1").fetchone()
        if row is None:
            return None
        state: dict[str, Any] = json.loads(row[0])
        return state

    def add_pending(self, records: Sequence[bytes], snapshot: Mapping[str, Any] | None, now_ms: int) -> None:
        """Records and the builder snapshot taken after emitting them, in one transaction."""
        state = None if snapshot is None else json.dumps(snapshot, allow_nan=False, separators=(",", ":"))
        with self.transaction():
            self._conn.executemany("INSERT INTO pending (record, added_ms) VALUES (?, ?)",
                                   [(r, now_ms) for r in records])  # fmt: skip
            if state is not None:
                self._conn.execute("INSERT OR REPLACE INTO builder_state VALUES (1, ?, ?)", (state, now_ms))

    def pending_count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM pending").fetchone()[0])

    def oldest_pending_ms(self) -> int | None:
        row = self._conn.execute("SELECT added_ms FROM pending ORDER BY id LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def pending(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` pending records as (id, bytes), in the order they were added."""
        rows = self._conn.execute("SELECT id, record FROM pending ORDER BY id LIMIT ?", (limit,))
        return [(int(i), bytes(r)) for i, r in rows]

    def delete_pending_through(self, last_id: int) -> None:
        self._conn.execute("DELETE FROM pending WHERE id <= ?", (last_id,))

    # -- the chain head (sealer state) -------------------------------------------------

    def chain_head(self) -> tuple[int, str]:
        seq, digest = self._conn.execute("SELECT last_seq, last_header_sha256 FROM chain").fetchone()
        return int(seq), str(digest)

    def set_chain_head(self, seq: int, header_sha256: str) -> None:
        self._conn.execute("UPDATE chain SET last_seq = ?, last_header_sha256 = ?", (seq, header_sha256))

    def count_drop(self, batches: int, intervals: int) -> None:
        self._conn.execute(
            "UPDATE chain SET dropped_batches = dropped_batches + ?,"
            " dropped_intervals = dropped_intervals + ?",
            (batches, intervals),
        )

    # -- sealed batches ----------------------------------------------------------------

    def insert_batch(self, batch: SealedBatch, data: bytes, kind: str) -> None:
        h = batch.header
        self._conn.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)",
            (h.seq, batch.header_sha256, kind, h.created_ms, len(data), h.count, data),
        )
        self._conn.execute("INSERT INTO delivery (seq) VALUES (?)", (h.seq,))

    def outbox(self, kind: str | None = None) -> list[StoredBatch]:
        """Batches waiting for an ack, oldest first."""
        sql = "SELECT seq, header_sha256, kind, created_ms, size, records FROM batches"
        rows = self._conn.execute(sql + (" WHERE kind = ?" if kind else "") + " ORDER BY seq",
                                  (kind,) if kind else ())  # fmt: skip
        return [StoredBatch(int(s), str(d), str(k), int(c), int(z), int(n)) for s, d, k, c, z, n in rows]

    def usage(self) -> tuple[int, int]:
        """(batches, bytes) in the outbox."""
        n, size = self._conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM batches").fetchone()
        return int(n), int(size)

    def batch_data(self, seq: int) -> bytes:
        row = self._conn.execute("SELECT data FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise KeyError(seq)
        return bytes(row[0])

    def delete_batches(self, seqs: Sequence[int]) -> None:
        self._conn.executemany("DELETE FROM batches WHERE seq = ?", [(s,) for s in seqs])
        self._conn.executemany("DELETE FROM delivery WHERE seq = ?", [(s,) for s in seqs])

    def next_to_send(self, exclude: Sequence[int], limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` batches not in ``exclude``, oldest first: (seq, header_sha256, data)."""
        marks = ",".join("?" * len(exclude))
        rows = self._conn.execute(
            f"SELECT seq, header_sha256, data FROM batches WHERE seq NOT IN ({marks}) ORDER BY seq LIMIT ?",
            (*exclude, limit),
        )
        return [(int(s), str(d), bytes(b)) for s, d, b in rows]

    def mark_sent(self, seq: int, now_ms: int) -> None:
        """Advisory: counted and timed for status; a loss of it only costs a resend."""
        with self.transaction(durable=False):
            self._conn.execute(
                "UPDATE delivery SET attempts = attempts + 1, last_sent_ms = ? WHERE seq = ?", (now_ms, seq)
            )

    def ack(self, seq: int, header_sha256: str, now_ms: int) -> bool:
        """Remove the batch if ``(seq, header_sha256)`` names it; False if nothing matched."""
        with self.transaction():
            cur = self._conn.execute("DELETE FROM batches WHERE seq = ? AND header_sha256 = ?",
                                     (seq, header_sha256))  # fmt: skip
            if cur.rowcount != 1:
                return False
            self._conn.execute("DELETE FROM delivery WHERE seq = ?", (seq,))
            self._conn.execute("UPDATE chain SET last_ack_seq = ?, last_ack_ms = ?, acked = acked + 1",
                               (seq, now_ms))  # fmt: skip
        return True

    def record_reject(self, seq: int, reason: str, now_ms: int) -> int | None:
        """Count a rejection of ``seq``; returns its number of rejections (None: not here)."""
        with self.transaction():
            self._conn.execute(
                "UPDATE delivery SET rejects = rejects + 1, last_reject = ?, last_reject_ms = ?"
                " WHERE seq = ?",
                (reason, now_ms, seq),
            )
            row = self._conn.execute("SELECT rejects FROM delivery WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else int(row[0])

    def delivery(self, seq: int) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT attempts, last_sent_ms, rejects, last_reject, last_reject_ms FROM delivery WHERE seq = ?",
            (seq,),
        ).fetchone()
        keys = ("attempts", "last_sent_ms", "rejects", "last_reject", "last_reject_ms")
        return None if row is None else dict(zip(keys, row, strict=True))

    # -- status --------------------------------------------------------------------------

    def stats(self) -> OutboxStats:
        depth, size = self.usage()
        oldest = self._conn.execute("SELECT min(created_ms) FROM batches").fetchone()[0]
        last_seq, ack_seq, ack_ms, acked, dropped_b, dropped_i = self._conn.execute(
            "SELECT last_seq, last_ack_seq, last_ack_ms, acked, dropped_batches, dropped_intervals FROM chain"
        ).fetchone()
        return OutboxStats(depth, size, self.pending_count(), oldest, last_seq, ack_seq, ack_ms, acked,
                           dropped_b, dropped_i)  # fmt: skip


# -- storage failures, in words ------------------------------------------------------------

_LOW_SPACE = 256 * 1024  # below this, an I/O error is taken as the disk being full


def _is_storage_error(exc: sqlite3.DatabaseError) -> bool:
    """An error of the storage (I/O, space, locks, permissions, a damaged file), not of our SQL."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def storage_problem(exc: sqlite3.Error | OSError, path: Path) -> str:
    """What keeps ``path`` (the database file) from being opened or written, in an installer's
    words: no space, a read-only file system, permission denied, another process, or else
    SQLite's own message. Looks at the file system of its directory (statvfs, access)."""
    directory = path.parent if path.parent.exists() else _existing_parent(path)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    err = exc.errno if isinstance(exc, OSError) else None
    read_only, free = _filesystem(directory)
    no_space = f"no space left on the device holding {directory} ({_size(free)} free)"
    if err == errno.ENOSPC or primary == sqlite3.SQLITE_FULL:
        return no_space
    if err == errno.EROFS or read_only:
        return f"{directory} is on a read-only file system"
    if primary == sqlite3.SQLITE_IOERR and free < _LOW_SPACE:
        return no_space
    if err in (errno.EACCES, errno.EPERM) or (
        primary in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)
        and not os.access(directory, os.W_OK | os.X_OK)
    ):
        return f"permission denied: this user (uid {os.geteuid()}) cannot write in {directory}"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return f"{exc} (is another gateway process using this state directory?)"
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return f"{exc} (the file is damaged or not a gateway state database)"
    return str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)


def _existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")


def _filesystem(directory: Path) -> tuple[bool, int]:
    """(read-only, bytes free for this user) of the file system holding ``directory``."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False, _LOW_SPACE  # unknown: claim neither
    return bool(st.f_flag & os.ST_RDONLY), st.f_bavail * st.f_frsize


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def read_builder_state(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The persisted builder snapshot, without opening the store for writing (None if absent)."""
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return None
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:
        row = conn.execute("SELECT state FROM builder_state WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        raise EvidenceStoreError(f"{path}: cannot read the builder state: {exc}") from exc
    finally:
        conn.close()
    if row is None:
        return None
    state: dict[str, Any] = json.loads(row[0])
    return state
