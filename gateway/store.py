"""The gateway's durable evidence state: a record log of segment files and one SQLite
database in WAL mode (schema 2).

::

    records/NNNNNNNN.log  each submit's records (numbered 1, 2, ...) and builder snapshot,
                          compressed, appended once (gateway.record_log)
    evidence.sqlite:
    meta           key -> value                 schema version, gateway id
    chain          one row                      last seq + last header hash (the sealer state),
                                                records sealed through (pending: the records
                                                after it), last ack, totals of acks and drops
    batches        seq, header_sha256, kind,    sealed batches not yet acknowledged, immutable:
                   created_ms, size, records,   a data batch as its header and signature lines
                   data, first_record           + the numbers of its records in the log; a drop
                                                or key rotation batch as its exact bytes
                                                (first_record NULL)
    delivery       seq, attempts, last_sent_ms, the mutable send state of each batch in
                   rejects, last_reject(_ms)    ``batches`` (kept apart: SQLite rewrites a
                                                whole row on any UPDATE)

A batch is rebuilt for sending from those parts, checked against its size and signed Merkle
root (:class:`EvidenceStoreError` if they differ); a record is written once instead of into a
table, a batch blob and checkpoints (issue 22). A log segment is retired once none of its
records is pending or in a batch waiting for an ack. Schema 1 (``pending`` and
``builder_state`` tables, whole batch bytes) is migrated at open (:meth:`_migrate_v1`).

**Crash consistency.** Every operation is atomic: ``add_pending`` is one log frame (records
+ the builder snapshot that no longer holds them) synced before it returns; a seal is one
transaction (insert the batch, referring to records already synced in the log, and its
delivery row, mark its records sealed, advance ``chain``; under the outbox cap also delete
the dropped batches and insert the signed drop batch); an ack is one transaction (delete the
batch, record the ack; the log segments it frees are deleted after the commit). A batch is
published only after its seal committed, so after kill -9 at any moment either the seal
happened (and the batch is resent until acked) or it did not (and the same records are
sealed again under the same, never-published, sequence number): a sequence number is never
used for two different contents, nothing closed is lost and nothing is sealed twice. The
log's own guarantees (a torn last write is passed over, anything else invalid refuses to
open) are in :mod:`gateway.record_log`; at open the database must refer only to records
the log holds, or the store refuses to open.

**Durability.** Log frames are ``fdatasync``'d, and SQLite commits with ``synchronous=FULL``
(the WAL is fsync'd at every commit), so a power cut, not only a process crash, keeps what
was committed; that matters because a committed seal may already be at the aggregator (a
lost seal would be resealed with other content under the same seq: a fork) and a committed
``add_pending`` is what lets the builder forget those intervals. Only the advisory "sent"
bookkeeping commits with ``synchronous=NORMAL``: losing it costs a resend, and the next FULL
commit syncs it along. Many records go into one frame or transaction (one sync per submit or
seal, not per record) to spare SD cards.

The database is opened with ``locking_mode=EXCLUSIVE``: a second gateway process on the
same state directory would fork the chain, so it is refused (:class:`EvidenceStoreError`).
The record log is opened only under that lock.

**Storage failures.** SQLite says "disk I/O error" or "database or disk is full" whatever
the cause; :func:`storage_problem` looks at the error code and at the file system to say
what is wrong (no space left, read-only file system, permission denied, another process)
with the path. A write that fails is rolled back as a whole and raised as
:class:`EvidenceStoreError` saying so and what the store still holds.
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
from itertools import groupby
from pathlib import Path
from typing import Any

from evidence.batch import GENESIS_PREV, SealedBatch, parse_batch, signature_line
from evidence.errors import EvidenceError
from evidence.merkle import leaf_hash, merkle_root
from gateway.errors import EvidenceStoreError
from gateway.record_log import RecordLog

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DB_NAME = "evidence.sqlite"
LOG_DIR = "records"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL, last_header_sha256 TEXT NOT NULL,
    last_ack_seq INTEGER, last_ack_ms INTEGER, acked INTEGER NOT NULL DEFAULT 0,
    dropped_batches INTEGER NOT NULL DEFAULT 0, dropped_intervals INTEGER NOT NULL DEFAULT 0,
    sealed_through INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, header_sha256 TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('data', 'drop')), created_ms INTEGER NOT NULL,
    size INTEGER NOT NULL, records INTEGER NOT NULL, data BLOB NOT NULL, first_record INTEGER);
CREATE TABLE IF NOT EXISTS delivery (
    seq INTEGER PRIMARY KEY, attempts INTEGER NOT NULL DEFAULT 0, last_sent_ms INTEGER,
    rejects INTEGER NOT NULL DEFAULT 0, last_reject TEXT, last_reject_ms INTEGER);
"""
# Schema 1 -> 2, in one transaction once the log holds what ``pending`` and ``builder_state`` held.
_MIGRATE_V1 = (
    "ALTER TABLE chain ADD COLUMN sealed_through INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE batches ADD COLUMN first_record INTEGER",
    "DROP TABLE pending",
    "DROP TABLE builder_state",
    "UPDATE meta SET value = '2' WHERE key = 'schema'",
)
_BATCH_COLUMNS = "seq, header_sha256, data, first_record, records, size"


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
    """The state of one gateway. Not thread-safe: one owner (the event loop)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._log: RecordLog | None = None
        self._collect_due = False

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, gateway_id: str) -> EvidenceStore:
        """Open (or create) ``state_dir/evidence.sqlite`` and ``state_dir/records/`` for ``gateway_id``."""
        directory = Path(state_dir)
        path = directory / DB_NAME
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
        except (OSError, sqlite3.Error) as exc:
            raise EvidenceStoreError(f"{path}: cannot open: {storage_problem(exc, path)}") from exc
        store = cls(conn, path)
        try:
            store._open(gateway_id)
        except sqlite3.DatabaseError as exc:
            store.close()
            if not _is_storage_error(exc):
                raise
            raise EvidenceStoreError(f"{path}: cannot open: {storage_problem(exc, path)}") from exc
        except OSError as exc:
            store.close()
            where = Path(exc.filename) if exc.filename else directory / LOG_DIR
            raise EvidenceStoreError(f"{where}: cannot open: {storage_problem(exc, where)}") from exc
        except BaseException:
            store.close()
            raise
        return store

    @property
    def log_dir(self) -> Path:
        return self.path.parent / LOG_DIR

    def _open(self, gateway_id: str) -> None:
        fresh, schema = self._setup(gateway_id)
        if schema == "1":
            self._migrate_v1()
        if fresh and RecordLog.segment_files(self.log_dir):
            raise EvidenceStoreError(
                f"{self.path}: a new database next to an existing record log {self.log_dir}; "
                "move one of them away (each belongs to the other)"
            )
        self._log = RecordLog.open(self.log_dir, repair=True)
        self._check_log()
        self._collect()

    def _setup(self, gateway_id: str) -> tuple[bool, str]:
        c = self._conn
        # Seals and acks change a few small rows: 1 KiB pages write a quarter of 4 KiB ones to
        # the WAL. Takes effect on a new database only (an existing one keeps its page size).
        c.execute("PRAGMA page_size=1024")
        c.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise EvidenceStoreError(f"{self.path}: cannot use WAL mode (got {mode!r})")
        c.execute("PRAGMA synchronous=FULL")
        # A checkpoint every 100 KiB of WAL: the WAL is reused from its start sooner, and a
        # commit into a WAL that does not grow moves no file-system metadata.
        c.execute("PRAGMA wal_autocheckpoint=100")
        c.executescript(_SCHEMA)  # idempotent; executescript runs outside our transactions
        with self.transaction():
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                c.executemany("INSERT INTO meta VALUES (?, ?)",
                              [("schema", str(SCHEMA_VERSION)), ("gateway", gateway_id)])  # fmt: skip
                c.execute("INSERT INTO chain (id, last_seq, last_header_sha256) VALUES (1, 0, ?)",
                          (GENESIS_PREV,))  # fmt: skip
                return True, str(SCHEMA_VERSION)
            if meta.get("gateway") != gateway_id:
                raise EvidenceStoreError(
                    f"{self.path}: state of gateway {meta.get('gateway')!r}, not {gateway_id!r}; "
                    "each gateway needs its own state directory"
                )
            if meta.get("schema") not in ("1", str(SCHEMA_VERSION)):
                raise EvidenceStoreError(
                    f"{self.path}: schema {meta.get('schema')}, expected {SCHEMA_VERSION} (or 1, migrated)"
                )
            return False, str(meta["schema"])

    def _migrate_v1(self) -> None:
        """Schema 1 -> 2: the pending records and the builder snapshot go into the log (one
        frame per submit they came from), then one transaction drops their tables and adds
        the record references. Sealed batches keep their exact bytes (``first_record`` NULL).
        Until that transaction commits the log is not authoritative: an interrupted migration
        is redone from the start."""
        c = self._conn
        rows = c.execute("SELECT record, added_ms FROM pending ORDER BY id").fetchall()
        state = c.execute("SELECT state FROM builder_state WHERE id = 1").fetchone()
        RecordLog.remove_all(self.log_dir)
        groups = [(ms, [bytes(r) for r, _ in g]) for ms, g in groupby(rows, key=lambda row: int(row[1]))]
        if state is not None and not groups:
            groups = [(0, [])]
        rlog = RecordLog.open(self.log_dir, repair=True)
        try:
            for i, (ms, records) in enumerate(groups):
                last = i == len(groups) - 1
                rlog.append(records, str(state[0]).encode() if last and state is not None else None, ms)
        finally:
            rlog.close()
        with self.transaction():
            for statement in _MIGRATE_V1:
                c.execute(statement)
        log.warning("%s: migrated to schema 2: %d pending record(s) and the builder state moved to %s",
                    self.path, len(rows), self.log_dir)  # fmt: skip

    def _check_log(self) -> None:
        """The database refers only to records the log holds."""
        rlog = self._rlog()
        sealed = self._sealed_through()
        lowest = self._conn.execute("SELECT min(first_record) FROM batches").fetchone()[0]
        problem = None
        if sealed >= rlog.stop:
            problem = f"records are sealed through {sealed}, the log ends at {rlog.stop - 1}"
        elif lowest is not None and lowest < rlog.start:
            problem = f"a batch waiting for an ack holds record {lowest}, the log starts at {rlog.start}"
        elif sealed + 1 < rlog.start:
            problem = f"records after {sealed} are pending, the log starts at {rlog.start}"
        if problem is not None:
            raise EvidenceStoreError(f"{self.path}: does not match the record log {self.log_dir}: {problem}")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self._conn.close()

    def _rlog(self) -> RecordLog:
        if self._log is None:
            raise EvidenceStoreError(f"{self.path}: the store is closed")
        return self._log

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
                    self._collect_due = False
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
        if self._collect_due:
            self._collect()

    def _kept(self) -> str:
        """What the store still holds, for an error message."""
        try:
            pending, (batches, size) = self.pending_count(), self.usage()
        except (sqlite3.Error, EvidenceStoreError):
            return "everything committed before it is kept"
        return (
            f"everything committed before it is kept ({pending} closed interval(s) waiting to be sealed, "
            f"{batches} sealed batch(es) of {size} bytes waiting for an ack)"
        )

    # -- builder snapshot and pending records -----------------------------------------

    def builder_state(self) -> dict[str, Any] | None:
        state = self._rlog().snapshot()
        if state is None:
            return None
        loaded: dict[str, Any] = json.loads(state)
        return loaded

    def add_pending(self, records: Sequence[bytes], snapshot: Mapping[str, Any] | None, now_ms: int) -> None:
        """Records and the builder snapshot taken after emitting them, in one synced log frame
        (``snapshot`` None: the last one stays)."""
        state = None if snapshot is None else json.dumps(snapshot, allow_nan=False, separators=(",", ":"))
        if any(b"\n" in r for r in records):
            raise ValueError("a record holds a newline: it could never be a batch line")
        rlog = self._rlog()
        try:
            rlog.append(records, None if state is None else state.encode(), now_ms)
        except OSError as exc:
            path = rlog.tail_path
            outcome = (
                f"the record log takes no more writes ({rlog.broken}); restart the gateway"
                if rlog.broken
                else f"the write was rolled back, {self._kept()}"
            )
            problem = storage_problem(exc, path)
            raise EvidenceStoreError(f"{path}: cannot write: {problem}; {outcome}") from exc

    def _sealed_through(self) -> int:
        return int(self._conn.execute("SELECT sealed_through FROM chain").fetchone()[0])

    def pending_count(self) -> int:
        return self._rlog().stop - 1 - self._sealed_through()

    def oldest_pending_ms(self) -> int | None:
        sealed = self._sealed_through()
        if self._rlog().stop - 1 <= sealed:
            return None
        return self._rlog().added_ms(sealed + 1)

    def pending(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` pending records as (record number, bytes), in the order added."""
        first = self._sealed_through() + 1
        records = self._rlog().records(first, min(limit, self.pending_count()))
        return [(first + i, r) for i, r in enumerate(records)]

    def mark_sealed_through(self, last: int) -> None:
        """Records up to number ``last`` are sealed (inside the seal's transaction)."""
        self._conn.execute("UPDATE chain SET sealed_through = ?", (last,))
        self._collect_due = True

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

    def insert_batch(
        self, batch: SealedBatch, data: bytes, kind: str, *, first_record: int | None = None
    ) -> None:
        """Store a sealed batch (``data``: its exact bytes). ``first_record``: its records are
        the log's records from that number on, and only its header and signature lines are
        stored; None: the whole ``data`` is (records that are not in the log)."""
        h = batch.header
        stored = data if first_record is None else _head(batch)
        self._conn.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (h.seq, batch.header_sha256, kind, h.created_ms, len(data), h.count, stored, first_record),
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
        """The exact bytes of batch ``seq`` as sealed (KeyError: not in the outbox)."""
        row = self._conn.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise KeyError(seq)
        return self._rebuild(*row)

    def _rebuild(self, seq: int, digest: str, data: bytes, first: int | None, count: int, size: int) -> bytes:
        """A batch's bytes from its stored lines and its records in the log, checked against
        its size and the Merkle root its signed header names."""
        if first is None:
            return bytes(data)
        records = self._rlog().records(first, count)
        out = bytes(data) + b"".join(r + b"\n" for r in records)
        problem = _mismatch(out, records, size)
        if problem:
            raise EvidenceStoreError(
                f"{self.path}: batch seq {seq} ({digest[:16]}…) rebuilt from records "
                f"{first}..{first + count - 1} of {self.log_dir} is not the batch sealed: {problem}"
            )
        return out

    def delete_batches(self, seqs: Sequence[int]) -> None:
        self._conn.executemany("DELETE FROM batches WHERE seq = ?", [(s,) for s in seqs])
        self._conn.executemany("DELETE FROM delivery WHERE seq = ?", [(s,) for s in seqs])
        self._collect_due = True

    def next_to_send(self, exclude: Sequence[int], limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` batches not in ``exclude``, oldest first: (seq, header_sha256, data)."""
        marks = ",".join("?" * len(exclude))
        rows = self._conn.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE seq NOT IN ({marks}) ORDER BY seq LIMIT ?",
            (*exclude, limit),
        ).fetchall()
        return [(int(row[0]), str(row[1]), self._rebuild(*row)) for row in rows]

    def _collect(self) -> None:
        """Delete the log segments no pending record and no batch waiting for an ack needs."""
        self._collect_due = False
        lowest = self._conn.execute("SELECT min(first_record) FROM batches").fetchone()[0]
        keep_from = self._sealed_through() + 1
        self._rlog().collect(keep_from if lowest is None else min(keep_from, int(lowest)))

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
            self._collect_due = True
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


def _mismatch(data: bytes, records: Sequence[bytes], size: int) -> str:
    """Why rebuilt batch bytes are not those sealed ("" if they are): size, framing, root."""
    if len(data) != size:
        return f"{len(data)} bytes, sealed {size}"
    try:
        header = parse_batch(data).header
    except EvidenceError as exc:
        return str(exc)
    if merkle_root([leaf_hash(r) for r in records]).hex() != header.root:
        return "its records do not hash to its signed Merkle root"
    return ""


def _head(batch: SealedBatch) -> bytes:
    """A batch's header and signature lines, each with its newline: its bytes before the records."""
    return batch.header_bytes + b"\n" + signature_line(batch.signature) + b"\n"


def read_builder_state(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The persisted builder snapshot, without opening the store for writing (None if absent)."""
    directory = Path(state_dir)
    path = directory / DB_NAME
    if not path.exists():
        return None
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:
        schema = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        row = None
        if schema is not None and schema[0] == "1":
            row = conn.execute("SELECT state FROM builder_state WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        raise EvidenceStoreError(f"{path}: cannot read the builder state: {exc}") from exc
    finally:
        conn.close()
    if schema is not None and schema[0] == "1":
        state = None if row is None else str(row[0]).encode()
    else:
        rlog = RecordLog.open(directory / LOG_DIR, repair=False)
        try:
            state = rlog.snapshot()
        finally:
            rlog.close()
    if state is None:
        return None
    loaded: dict[str, Any] = json.loads(state)
    return loaded
