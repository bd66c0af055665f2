"""The embedded evidence store (SQLite): exact signed batches, verdicts, gaps, rejections and
the InfluxDB outbox.

The store is the aggregator's source of truth. A batch is acknowledged only after
:meth:`SQLiteEvidenceStore.store_group` returned, i.e. after its transaction is durable
(SQLite WAL, ``synchronous=FULL``: the WAL is fsynced at every commit). InfluxDB is fed from
the store through an outbox (``batches.influx_state``), so the time series can always be
rebuilt from the evidence.

:class:`EvidenceStore` is the Protocol the rest of the aggregator uses; SQLite is the
embedded default. A server database can replace it when several aggregators share the
load: the unique key ``(gateway, seq)`` is what makes two aggregators agree (the loser
gets :class:`StoreConflict` and re-reads the chain), and the outbox is per row, not a
watermark, so commits in any order are written to InfluxDB exactly once.

Schema (see docs/aggregator.md): ``meta``, ``gateways``, ``gateway_keys``, ``meters``,
``batches`` (the exact signed bytes, stored zlib-compressed: ``data_codec``), ``intervals``
(one row per interval record: where it is in its batch and its plausibility issues),
``batch_series`` (which batches hold which meter quantity, over which span), ``gaps``,
``rejections``, ``counter_state``, ``ocpp_chain_sessions`` (one row per OCPP ``session``
record: where it is in its batch, looked up by charger and transaction id).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import zlib
from collections.abc import Collection, Container, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from aggregator.errors import StoreConflict, StoreError
from aggregator.sessions.checks import Span
from aggregator.sessions.errors import NetworkConflict
from aggregator.sessions.records import ImportReport, NetworkEntry, Refusal, SessionRecord, StoredSession
from aggregator.store.protocols import Fit
from aggregator.store.rows import (
    INFLUX_FAILED,
    INFLUX_WRITTEN,
    AcceptedBatch,
    Gap,
    GatewayEntry,
    Held,
    IntervalKey,
    KeyEntry,
    PendingBatch,
    Rejection,
)
from aggregator.store.schema import SCHEMA, SCHEMA_VERSION
from aggregator.store.stored import batch_data as _data
from aggregator.store.stored import chain_session_leaves, chain_sessions_query
from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from evidence.keylist import AggregatorKey
from evidence.keys import PublicKey, load_public_key
from evidence.records import IntervalRecord, decode_record

log = logging.getLogger(__name__)

# zlib level of stored batches: the demo's are 5.7x smaller at 0.5 ms per 1,000 records (6: 6.6x, 2.6x CPU)
_DATA_LEVEL = 1
_BATCH_PAGE = 256  # candidate batches fetched per query while iterating


_MAX_PARAMETERS = 32_000  # per statement; SQLite's limit is 32,766 (SQLITE_MAX_VARIABLE_NUMBER)


def _insert_rows(w: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> None:
    """``INSERT ... VALUES (..),(..),...`` for many rows, a few statements in all.

    Not ``executemany``: that takes the GIL back for every row, and while the event loop
    is busy verifying (it holds the GIL) each takes up to a switch interval (5 ms) to get
    it: 1,000 rows took seconds. One statement for many rows binds them in one go and runs
    SQLite's insert loop without the GIL (a batch's 1,000 intervals: one statement).
    """
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ",".join("?" * width) + ")"
    per_statement = _MAX_PARAMETERS // width
    for i in range(0, len(rows), per_statement):
        chunk = rows[i : i + per_statement]
        w.execute(head + ",".join([one] * len(chunk)) + tail, [v for row in chunk for v in row])


def _series_rows(batch_id: int, b: AcceptedBatch) -> list[tuple[str, str, str, int, int, int]]:
    """One ``batch_series`` row per meter quantity in the batch: first start, last end."""
    spans: dict[tuple[str, str], list[int]] = {}
    for r in b.intervals:
        span = spans.get((r.meter, r.quantity))
        if span is None:
            spans[(r.meter, r.quantity)] = [r.start, r.end]
        else:
            if r.start < span[0]:
                span[0] = r.start
            if r.end > span[1]:
                span[1] = r.end
    return [(b.gateway, m, q, batch_id, lo, hi) for (m, q), (lo, hi) in spans.items()]


def _private(path: Path) -> None:
    """Create the database file readable by its owner only (households' consumption is
    personal data); SQLite gives its -wal and -shm files the same mode. An existing file
    readable by others is tightened, and said so.

    An existing file is never opened here: closing any descriptor of a file drops every
    POSIX lock the process holds on it, so an open-and-close beside the process's SQLite
    connections (the statement store, the unit registry, the push outbox share this file)
    would let another process take the WAL for unused and delete it under them."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)  # new: nobody has it open yet
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s: mode %o let others read the evidence; now 0600", path, mode)


def _issues(text: str | None) -> tuple[str, ...]:
    return tuple(text.split(",")) if text else ()


class SQLiteEvidenceStore:
    """The embedded evidence store: one SQLite file in WAL mode.

    Thread-safe: one connection for writes and one for reads, each behind its own lock, so
    readers (methodologies, the InfluxDB writer, ``gateways list``) never wait for a commit.
    Open one per process; several processes may open the same file (SQLite locking).
    """

    def __init__(self, path: str | Path, *, rejection_rows_per_source: int = 1000) -> None:
        self.path = Path(path)
        self.rejection_rows_per_source = rejection_rows_per_source  # then only counted
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _private(self.path)
            self._w = self._connect()
            self._w.executescript(SCHEMA)
            self._migrate()
            self._r = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the evidence store: {exc}") from exc

    def _migrate(self) -> None:
        """Bring a store written by an older puhui to :data:`SCHEMA_VERSION` (in place)."""
        columns = {row[1] for row in self._w.execute("PRAGMA table_info(batches)")}
        if "data_codec" not in columns:  # version 1: data was always the raw bytes (codec NULL)
            self._w.execute("ALTER TABLE batches ADD COLUMN data_codec TEXT")
        columns = {row[1] for row in self._w.execute("PRAGMA table_info(rejections)")}
        if "data_sha256" not in columns:  # before version 4 every rejection was its own row
            self._w.execute("ALTER TABLE rejections ADD COLUMN data_sha256 TEXT")
            self._w.execute("ALTER TABLE rejections ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1")
            self._w.execute("ALTER TABLE rejections ADD COLUMN last_ms INTEGER")
        self._w.execute("CREATE INDEX IF NOT EXISTS rejections_by_data ON rejections (data_sha256)")
        columns = {row[1] for row in self._w.execute("PRAGMA table_info(meters)")}
        if "calibrated_until" not in columns:  # before version 5: no meter had a calibration date
            self._w.execute("ALTER TABLE meters ADD COLUMN calibrated_until TEXT")
        columns = {row[1] for row in self._w.execute("PRAGMA table_info(rejections)")}
        if "size" not in columns:  # before version 6: the whole payload was kept
            self._w.execute("ALTER TABLE rejections ADD COLUMN size INTEGER")
        self._w.execute("CREATE INDEX IF NOT EXISTS rejections_by_source ON rejections (gateway)")
        [(version,)] = self._w.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        if version < 3:  # the per-interval meter index becomes one row per batch and series
            with self._transaction("migrating to schema version 3"):
                self._w.execute(
                    "INSERT OR IGNORE INTO batch_series SELECT gateway, meter, quantity, batch_id,"
                    ' min(start), max("end") FROM intervals GROUP BY gateway, meter, quantity, batch_id'
                )
                self._w.execute("DROP INDEX IF EXISTS intervals_by_meter")
        self._w.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' AND value < ?",
                        (SCHEMA_VERSION, SCHEMA_VERSION))  # fmt: skip

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at commit: an ack means durable
        return conn

    def close(self) -> None:
        with self._wlock, self._rlock:
            self._r.close()
            self._w.close()

    # -- writes ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction on the writer connection; errors name ``what``."""
        with self._wlock:
            try:
                self._w.execute("BEGIN IMMEDIATE")
                try:
                    yield self._w
                    self._w.execute("COMMIT")
                except BaseException:
                    self._w.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as exc:
                raise StoreConflict(f"{self.path}: {what}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {what}: {exc}") from exc

    def _write(
        self, what: str, statements: list[tuple[str, Sequence[object] | list[Sequence[object]]]]
    ) -> None:
        """Run statements in one IMMEDIATE transaction; executemany when given a list."""
        with self._transaction(what) as w:
            for sql, params in statements:
                if isinstance(params, list):
                    w.executemany(sql, params)
                else:
                    w.execute(sql, params)

    def store_batch(self, batch: AcceptedBatch) -> int:
        """Store a verified batch with its intervals, gaps and chain effects; durable on return.

        Raises :class:`StoreConflict` if ``(gateway, seq)`` is already stored.
        """
        [result] = self.store_group([batch])
        if isinstance(result, StoreConflict):
            raise result
        assert isinstance(result, int)
        return result

    def store_group(
        self, batches: Sequence[AcceptedBatch], rejections: Sequence[Rejection] = (), *,
        hold: Collection[int] = (),
    ) -> list[int | StoreConflict | Held | None]:  # fmt: skip
        """Store several batches and rejections in one transaction: one fsync for all (group commit).
        ``hold`` is for several aggregators (see the PostgreSQL store); one writer (this store)
        sees each gateway's batches in the order sent, so it stores them all.

        A batch whose ``(gateway, seq)`` is already stored (another aggregator was faster) is
        answered with a :class:`StoreConflict` and the others are stored. Once a gateway's batch
        conflicts, that gateway's later batches in the group are not stored either (``None``):
        they were checked against a chain that has just been shown wrong. Any other error
        undoes the whole group and raises :class:`StoreError`. Durable on return.

        Set-based: a handful of statements for the whole group, each inserting many rows. The
        store's thread takes the GIL back after every statement, and while the event loop is
        busy verifying that takes up to a switch interval each (5 ms): statement count, not
        row count, is what this thread waits for.
        """
        what = f"{len(batches)} batches" + (f" ({batches[0].gateway}#{batches[0].seq}...)" if batches else "")
        with self._transaction(what) as w:
            taken = self._stored_already(batches)
            results: list[int | StoreConflict | None] = []
            conflicted: set[str] = set()
            todo: list[AcceptedBatch] = []
            [(last_id,)] = w.execute(  # ids as AUTOINCREMENT would give them: never reused
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'batches'), 0),"
                " coalesce((SELECT max(id) FROM batches), 0))"
            ).fetchall()
            for b in batches:
                if b.gateway in conflicted:
                    results.append(None)
                elif (b.gateway, b.seq) in taken:
                    conflicted.add(b.gateway)
                    results.append(StoreConflict(f"{self.path}: batch {b.gateway}#{b.seq} is already stored"))
                else:
                    taken.add((b.gateway, b.seq))  # the same seq twice in one group: the second conflicts
                    last_id += 1
                    results.append(last_id)
                    todo.append(b)
            ids = [r for r in results if isinstance(r, int)]
            self._insert_batches(todo, ids)
            for r in rejections:
                self._insert_rejection(r)
        return list(results)

    def _stored_already(self, batches: Sequence[AcceptedBatch]) -> set[tuple[str, int]]:
        pairs = {(b.gateway, b.seq) for b in batches}
        found: set[tuple[str, int]] = set()
        items = sorted(pairs)
        for i in range(0, len(items), _MAX_PARAMETERS // 2):
            chunk = items[i : i + _MAX_PARAMETERS // 2]
            values = ",".join(["(?,?)"] * len(chunk))
            rows = self._w.execute(
                f"SELECT gateway, seq FROM batches WHERE (gateway, seq) IN (VALUES {values})",
                [v for pair in chunk for v in pair],
            ).fetchall()
            found.update((str(g), int(q)) for g, q in rows)
        return found

    def _insert_batches(self, todo: Sequence[AcceptedBatch], ids: Sequence[int]) -> None:
        if not todo:
            return
        w = self._w
        _insert_rows(
            w,
            "INSERT INTO batches (id, gateway, seq, header_sha256, prev, key_id, root, created_ms,"
            " received_ms, count, verdict, data, data_codec) VALUES ",
            [(i, b.gateway, b.seq, b.header_sha256, b.prev, b.key_id, b.root, b.created_ms, b.received_ms,
              b.count, b.verdict, zlib.compress(b.data, _DATA_LEVEL), "zlib")
             for i, b in zip(ids, todo, strict=True)],
        )  # fmt: skip
        _insert_rows(
            w,
            'INSERT INTO intervals (batch_id, idx, gateway, meter, quantity, start, "end", issues) VALUES ',
            [(i, r.index, b.gateway, r.meter, r.quantity, r.start, r.end, ",".join(r.issues) or None)
             for i, b in zip(ids, todo, strict=True) for r in b.intervals],
        )  # fmt: skip
        _insert_rows(
            w,
            "INSERT INTO ocpp_chain_sessions (batch_id, idx, gateway, charger, connector, meter,"
            " transaction_id, start_time_ms, stop_time_ms, energy_wh, assurance, flags) VALUES ",
            [(i, r.index, b.gateway, r.charger, r.connector, r.meter, r.transaction_id, r.start_time_ms,
              r.stop_time_ms, r.energy_wh, r.assurance, ",".join(r.flags) or None)
             for i, b in zip(ids, todo, strict=True) for r in b.chain_sessions],
        )  # fmt: skip
        _insert_rows(
            w,
            "INSERT INTO batch_series (gateway, meter, quantity, batch_id, first_start, last_end) VALUES ",
            [row for i, b in zip(ids, todo, strict=True) for row in _series_rows(i, b)],
        )
        # Gaps: not for a seq stored (now or before: another aggregator, an earlier group).
        _insert_rows(
            w,
            "INSERT OR IGNORE INTO gaps (gateway, seq, detected_ms) SELECT column1, column2, column3 FROM"
            " (VALUES ",
            [(b.gateway, s, b.received_ms) for b in todo for s in b.missing],
            ") v WHERE NOT EXISTS (SELECT 1 FROM batches WHERE gateway = v.column1 AND seq = v.column2)",
        )
        filled = [(b.gateway, b.seq, b.received_ms) for b in todo]
        values = ",".join(["(?,?,?)"] * len(filled))
        w.execute(
            f"WITH v(gateway, seq, at) AS (VALUES {values}) UPDATE gaps SET filled_ms ="
            " (SELECT at FROM v WHERE v.gateway = gaps.gateway AND v.seq = gaps.seq)"
            " WHERE filled_ms IS NULL AND (gateway, seq) IN (SELECT gateway, seq FROM v)",
            [x for row in filled for x in row],
        )
        _insert_rows(
            w,
            "INSERT INTO gaps (gateway, seq, detected_ms, explained_by_seq) VALUES ",
            [(b.gateway, s, b.received_ms, b.seq) for b in todo for s in b.dropped_seqs],
            " ON CONFLICT (gateway, seq) DO UPDATE SET explained_by_seq = excluded.explained_by_seq",
        )
        _insert_rows(
            w,
            'INSERT INTO counter_state (gateway, meter, quantity, "end", counter_end) VALUES ',
            [(b.gateway, m, q, end, value) for b in todo for (m, q), (end, value) in b.counters.items()],
            ' ON CONFLICT DO UPDATE SET "end" = excluded."end", counter_end = excluded.counter_end'
            ' WHERE excluded."end" > counter_state."end"',
        )
        for b in todo:
            if b.new_key is not None:
                self._insert_key(b.new_key)

    def _insert_key(self, k: KeyEntry) -> None:
        self._w.execute(
            "INSERT INTO gateway_keys (gateway, key_id, public_key, valid_from_seq, revoked_from_ms,"
            " source, added_ms) VALUES (?,?,?,?,?,?,?)",
            (
                k.gateway,
                k.key_id,
                k.public_key_der,
                k.valid_from_seq,
                k.revoked_from_ms,
                k.source,
                k.added_ms,
            ),
        )
        self._w.execute("UPDATE meta SET value = value + 1 WHERE key = 'registry_version'")

    def record_rejection(self, rejection: Rejection) -> None:
        with self._transaction("recording a rejection"):
            self._insert_rejection(rejection)

    def _insert_rejection(self, r: Rejection) -> None:
        """A new rejection, or one more repeat of the same bytes refused for the same reason:
        a gateway resending a refused batch (it keeps it and retries) adds no bytes. Past
        ``rejection_rows_per_source`` rows for one source (gateway, or none), a rejection is
        only counted, per reason, in ``rejection_overflow``: a flood cannot fill the disk."""
        digest = r.data_sha256 or hashlib.sha256(r.data).hexdigest()
        size = len(r.data) if r.size is None else r.size
        repeated = self._w.execute(
            "UPDATE rejections SET repeats = repeats + 1, last_ms = ?"
            " WHERE data_sha256 = ? AND reason = ? AND gateway IS ? AND detail = ?",
            (r.received_ms, digest, r.reason, r.gateway, r.detail),
        )
        if repeated.rowcount:
            return
        [(rows,)] = self._w.execute(
            "SELECT count(*) FROM rejections WHERE gateway IS ?", (r.gateway,)
        ).fetchall()
        if rows >= self.rejection_rows_per_source:
            self._w.execute(
                "INSERT INTO rejection_overflow VALUES (?,?,1,?,?,?) ON CONFLICT (source, reason) DO UPDATE"
                " SET count = count + 1, bytes = bytes + excluded.bytes, last_ms = excluded.last_ms",
                (r.gateway or "", r.reason, size, r.received_ms, r.received_ms),
            )
            return
        self._w.execute(
            "INSERT INTO rejections (gateway, seq, header_sha256, reason, detail, received_ms, data,"
            " data_sha256, size) VALUES (?,?,?,?,?,?,?,?,?)",
            (r.gateway, r.seq, r.header_sha256, r.reason, r.detail, r.received_ms, r.data, digest, size),
        )

    # -- the aggregator's own keys (aggregator.keys) ------------------------------------

    def aggregator_keys(self) -> list[AggregatorKey]:
        """Every aggregator key, oldest first."""
        rows = self._read(
            "SELECT key_id, public_key, valid_from_ms, retired_ms, revoked_from_ms, endorsement"
            " FROM aggregator_keys ORDER BY seq"
        )
        return [AggregatorKey(*row) for row in rows]

    def add_aggregator_key(self, key: AggregatorKey, *, retire: str | None = None) -> None:
        """Append ``key``; ``retire`` (its predecessor) stops signing when it starts."""
        with self._transaction("adding an aggregator key"):
            if retire is not None:
                self._w.execute(
                    "UPDATE aggregator_keys SET retired_ms = ? WHERE key_id = ?", (key.valid_from_ms, retire)
                )
            self._w.execute(
                "INSERT INTO aggregator_keys VALUES (?,?,?,?,?,?,"
                " (SELECT coalesce(max(seq), 0) + 1 FROM aggregator_keys))",
                (key.key_id, key.public_key, key.valid_from_ms, key.retired_ms, key.revoked_from_ms,
                 key.endorsement),
            )  # fmt: skip

    def revoke_aggregator_key(self, key_id: str, from_ms: int) -> bool:
        with self._transaction("revoking an aggregator key"):
            done = self._w.execute(
                "UPDATE aggregator_keys SET revoked_from_ms = ? WHERE key_id = ?", (from_ms, key_id)
            )
        return done.rowcount == 1

    def rejection_overflow(self) -> dict[tuple[str, str], int]:
        """Rejections only counted, by (source, reason); source "" is no gateway."""
        rows = self._read("SELECT source, reason, count FROM rejection_overflow ORDER BY source, reason")
        return {(str(s), str(r)): int(n) for s, r, n in rows}

    def save_enrolment(self, entry: GatewayEntry, at_ms: int) -> None:
        """Insert or update the gateway and its meters, and add its (new) keys."""
        e = entry
        statements: list[tuple[str, Sequence[object] | list[Sequence[object]]]] = [
            (
                "INSERT INTO gateways VALUES (?,?,?,?,?) ON CONFLICT (gateway) DO UPDATE SET"
                " site = excluded.site, region = excluded.region, document = excluded.document",
                (e.gateway, e.site, e.region, at_ms, e.document),
            ),
            ("DELETE FROM meters WHERE gateway = ?", (e.gateway,)),
            (
                "INSERT INTO meters (gateway, meter, scenario, rated_power_kw, meter_class, calibrated_until)"
                " VALUES (?,?,?,?,?,?)",
                [_meter_row(m) for m in e.meters],
            ),
            (
                "INSERT OR IGNORE INTO gateway_keys (gateway, key_id, public_key, valid_from_seq,"
                " revoked_from_ms, source, added_ms) VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        k.gateway,
                        k.key_id,
                        k.public_key_der,
                        k.valid_from_seq,
                        k.revoked_from_ms,
                        k.source,
                        k.added_ms,
                    )
                    for k in e.keys
                ],
            ),
            ("UPDATE meta SET value = value + 1 WHERE key = 'registry_version'", ()),
        ]
        self._write(f"enrolling {e.gateway}", statements)

    def add_key(self, entry: KeyEntry) -> None:
        with self._wlock:
            try:
                self._w.execute("BEGIN IMMEDIATE")
                try:
                    self._insert_key(entry)
                    self._w.execute("COMMIT")
                except BaseException:
                    self._w.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: adding key {entry.key_id}: {exc}") from exc

    def revoke_key(self, gateway: str, key_id: str, from_ms: int) -> None:
        """Revoke from ``from_ms`` on (an earlier revocation time is kept)."""
        self._write(
            f"revoking {gateway} key {key_id}",
            [
                (
                    "UPDATE gateway_keys SET revoked_from_ms = min(coalesce(revoked_from_ms, ?), ?)"
                    " WHERE gateway = ? AND key_id = ?",
                    (from_ms, from_ms, gateway, key_id),
                ),
                ("UPDATE meta SET value = value + 1 WHERE key = 'registry_version'", ()),
            ],
        )

    def mark_influx(self, ids: Collection[int], *, error: str | None = None) -> None:
        """Mark batches written to InfluxDB, or parked as failed with ``error``."""
        state = INFLUX_WRITTEN if error is None else INFLUX_FAILED
        marks = ",".join("?" * len(ids))  # one statement: see _insert_rows on executemany
        self._write(
            "updating the InfluxDB outbox",
            [(f"UPDATE batches SET influx_state = ?, influx_error = ? WHERE id IN ({marks})",
              (state, error, *ids))],
        )  # fmt: skip

    # -- reads -------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._rlock:
            try:
                return self._r.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: reading: {exc}") from exc

    def chain_sessions_overlapping(
        self, gateway: str, start_ms: int, end_ms: int
    ) -> list[tuple[BatchRef, int, bytes]]:
        """The chain sessions of ``gateway`` overlapping ``[start_ms, end_ms)`` (the methodology's
        lookup: :class:`aggregator.methodology.meter_signed.ChainSessionsOverlapping`)."""
        return self.chain_sessions(gateway=gateway, start_ms=start_ms, end_ms=end_ms)

    def chain_sessions(
        self,
        *,
        gateway: str | None = None,
        charger: str | None = None,
        transaction_id: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[tuple[BatchRef, int, bytes]]:
        """``(batch, leaf index, the record's exact bytes)`` of the matching OCPP chain
        sessions, in arrival order (:class:`aggregator.store.protocols.ChainSessionStore`);
        ``start_ms``/``end_ms``: only those that overlap ``[start_ms, end_ms)``."""
        sql, params = chain_sessions_query(
            "?",
            gateway=gateway,
            charger=charger,
            transaction_id=transaction_id,
            start_ms=start_ms,
            end_ms=end_ms,
        )
        return chain_session_leaves(self._read(sql, params))

    def chain_links(self, gateway: str) -> list[tuple[int, str, str]]:
        """``(seq, header_sha256, prev)`` of every stored batch of ``gateway``, by seq."""
        rows = self._read(
            "SELECT seq, header_sha256, prev FROM batches WHERE gateway = ? ORDER BY seq", (gateway,)
        )
        return [(int(s), str(h), str(p)) for s, h, p in rows]

    def batch_log(self) -> list[tuple[str, int, str]]:
        """``(gateway, seq, header_sha256)`` of every stored batch, in the order stored: the
        leaves of the checkpoint log (:mod:`aggregator.checkpoints`)."""
        rows = self._read("SELECT gateway, seq, header_sha256 FROM batches ORDER BY id")
        return [(str(g), int(s), str(h)) for g, s, h in rows]

    def batch_created_ms(self, gateway: str, seq: int) -> int | None:
        """The creation time (gateway clock) of a stored batch, or None."""
        rows = self._read("SELECT created_ms FROM batches WHERE gateway = ? AND seq = ?", (gateway, seq))
        return int(rows[0][0]) if rows else None

    def highest_seq(self, gateway: str) -> int:
        [(top,)] = self._read("SELECT coalesce(max(seq), 0) FROM batches WHERE gateway = ?", (gateway,))
        return int(top)

    def counter_state(self, gateway: str) -> dict[tuple[str, str], tuple[int, float]]:
        rows = self._read(
            'SELECT meter, quantity, "end", counter_end FROM counter_state WHERE gateway = ?', (gateway,)
        )
        return {(str(m), str(q)): (int(e), float(v)) for m, q, e, v in rows}

    def registry_version(self) -> int:
        [(version,)] = self._read("SELECT value FROM meta WHERE key = 'registry_version'")
        return int(version)

    def gateways(self) -> list[GatewayEntry]:
        keys: dict[str, list[KeyEntry]] = {}
        for row in self._read(
            "SELECT gateway, key_id, public_key, valid_from_seq, source, added_ms, revoked_from_ms"
            " FROM gateway_keys ORDER BY gateway, valid_from_seq, added_ms"
        ):
            entry = KeyEntry(*row)
            keys.setdefault(entry.gateway, []).append(entry)
        meters: dict[str, list[MeterInfo]] = {}
        for info in self.meters():
            meters.setdefault(info.gateway, []).append(info)
        rows = self._read(
            "SELECT gateway, site, region, enrolled_ms, document FROM gateways ORDER BY gateway"
        )
        return [
            GatewayEntry(str(g), str(s), r, int(t), tuple(meters.get(str(g), ())),
                         tuple(keys.get(str(g), ())), bytes(d))
            for g, s, r, t, d in rows
        ]  # fmt: skip

    def gaps(self, gateway: str | None = None) -> list[Gap]:
        sql = "SELECT gateway, seq, detected_ms, filled_ms, explained_by_seq FROM gaps"
        rows = self._read(sql + (" WHERE gateway = ?" if gateway else "") + " ORDER BY gateway, seq",
                          (gateway,) if gateway else ())  # fmt: skip
        return [Gap(*row) for row in rows]

    def rejections(self, gateway: str | None = None) -> list[Rejection]:
        sql = (
            "SELECT gateway, seq, header_sha256, reason, detail, received_ms, data, repeats,"
            " coalesce(last_ms, received_ms), coalesce(size, length(data)), data_sha256 FROM rejections"
        )
        rows = self._read(sql + (" WHERE gateway = ?" if gateway else "") + " ORDER BY id",
                          (gateway,) if gateway else ())  # fmt: skip
        return [Rejection(*row) for row in rows]

    def batch_count(self, gateway: str | None = None) -> int:
        where, params = (" WHERE gateway = ?", (gateway,)) if gateway else ("", ())
        [(n,)] = self._read("SELECT count(*) FROM batches" + where, params)
        return int(n)

    def influx_backlog(self) -> tuple[int, int]:
        """(batches pending, batches parked as failed) in the InfluxDB outbox."""
        [(pending, failed)] = self._read(
            "SELECT coalesce(sum(influx_state = 0), 0), coalesce(sum(influx_state = 2), 0) FROM batches"
        )
        return int(pending), int(failed)

    def pending_influx(
        self, limit: int, known: Container[int] = (), exclude: Collection[int] = ()
    ) -> list[PendingBatch]:
        """The oldest ``limit`` batches not yet written to InfluxDB, except ids in ``exclude``.

        Batches whose ids are in ``known`` (the writer has their lines already) come without
        their bytes and issues (``data=b""``, ``issues={}``): reading them would be wasted.
        """
        skip = list(exclude)
        rows = self._read(
            "SELECT id, gateway, seq, verdict FROM batches WHERE influx_state = 0"
            f"{' AND id NOT IN (' + ','.join('?' * len(skip)) + ')' if skip else ''} ORDER BY id LIMIT ?",
            (*skip, limit),
        )
        if not rows:
            return []
        wanted = [int(r[0]) for r in rows if int(r[0]) not in known]
        data: dict[int, bytes] = {}
        issues: dict[int, dict[int, tuple[str, ...]]] = {i: {} for i in wanted}
        if wanted:
            marks = ",".join("?" * len(wanted))
            for batch_id, blob, codec in self._read(
                f"SELECT id, data, data_codec FROM batches WHERE id IN ({marks})", wanted
            ):
                data[int(batch_id)] = _data(blob, codec)
            for batch_id, idx, text in self._read(
                f"SELECT batch_id, idx, issues FROM intervals WHERE batch_id IN ({marks})"
                " AND issues IS NOT NULL",
                wanted,
            ):
                issues[int(batch_id)][int(idx)] = _issues(str(text))
        return [
            PendingBatch(int(i), str(g), int(s), str(v), data.get(int(i), b""), issues.get(int(i), {}))
            for i, g, s, v in rows
        ]

    # -- the view for methodologies (aggregator.view) ------------------------------------

    def meters(self) -> list[MeterInfo]:
        """Every enrolled meter, with its gateway's grid region."""
        rows = self._read(
            "SELECT m.gateway, m.meter, m.scenario, m.rated_power_kw, m.meter_class, g.region,"
            " m.calibrated_until FROM meters m JOIN gateways g USING (gateway) ORDER BY m.gateway, m.meter"
        )
        return [MeterInfo(g, m, s, kw, c, region, _day(day)) for g, m, s, kw, c, region, day in rows]

    def batch_bytes(self, gateway: str, seq: int) -> bytes | None:
        """The exact signed bytes of a stored batch, or None."""
        rows = self._read(
            "SELECT data, data_codec FROM batches WHERE gateway = ? AND seq = ?", (gateway, seq)
        )
        return _data(*rows[0]) if rows else None

    def gateway_public_key(self, gateway: str, key_id: str) -> PublicKey | None:
        """The enrolled key ``key_id`` of ``gateway``, revoked or not (batches signed before a
        revocation stay verifiable), or None."""
        rows = self._read(
            "SELECT public_key FROM gateway_keys WHERE gateway = ? AND key_id = ?", (gateway, key_id)
        )
        return load_public_key(bytes(rows[0][0])) if rows else None

    def attested_intervals(
        self,
        *,
        gateway: str | None = None,
        meters: Collection[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[AttestedInterval]:
        """Stored interval records, in arrival order (batch, then leaf index).

        Filters: ``gateway``; ``meters`` (meter ids); ``start``/``end`` (POSIX seconds) keep
        intervals lying within ``[start, end)``: ``interval.start >= start`` and
        ``interval.end <= end``. Each record is decoded from the stored batch bytes.
        """
        for _, ai in self.attested_after(gateway=gateway, meters=meters, start=start, end=end):
            yield ai

    def attested_after(
        self,
        *,
        gateway: str | None = None,
        meters: Collection[str] | None = None,
        start: int | None = None,
        end: int | None = None,
        after: IntervalKey = (-1, -1),
    ) -> Iterator[tuple[IntervalKey, AttestedInterval]]:
        """As :meth:`attested_intervals`, each with its place ``(batch row id, leaf index)``,
        starting after ``after``: a cursor that stays valid while batches arrive (new batches
        get higher row ids)."""
        wanted = None if meters is None else list(meters)
        if wanted is not None and not wanted:
            return
        # Candidate batches (arrival order) from the per-batch series index, then their rows.
        where: list[str] = ["b.id > ?"]
        params: list[object] = []
        if gateway is not None:
            where.append("b.gateway = ?")
            params.append(gateway)
        series: list[str] = []
        series_params: list[object] = []
        if gateway is not None:
            series.append("s.gateway = ?")
            series_params.append(gateway)
        if wanted is not None:
            series.append(f"s.meter IN ({','.join('?' * len(wanted))})")
            series_params.extend(wanted)
        if start is not None:  # some interval starts at or after `start`: it ends after it
            series.append("s.last_end > ?")
            series_params.append(start)
        if end is not None:  # some interval ends by `end`: it starts before it
            series.append("s.first_start < ?")
            series_params.append(end)
        if wanted is not None or start is not None or end is not None:
            where.append(f"b.id IN (SELECT s.batch_id FROM batch_series s WHERE {' AND '.join(series)})")
            params.extend(series_params)
        batch_sql = (
            "SELECT b.id, b.gateway, b.seq, b.header_sha256, b.root, b.key_id FROM batches b"
            f" WHERE {' AND '.join(where)} ORDER BY b.id LIMIT {_BATCH_PAGE}"
        )
        rows_where: list[str] = ["batch_id = ?", "idx > ?"]
        rows_params: list[object] = []
        if wanted is not None:
            rows_where.append(f"meter IN ({','.join('?' * len(wanted))})")
            rows_params.extend(wanted)
        if start is not None:
            rows_where.append("start >= ?")
            rows_params.append(start)
        if end is not None:
            rows_where.append('"end" <= ?')
            rows_params.append(end)
        rows_sql = f"SELECT idx, issues FROM intervals WHERE {' AND '.join(rows_where)} ORDER BY idx"
        first_batch, first_idx = after
        cursor = first_batch - 1 if first_idx >= 0 else first_batch  # re-read the cursor's batch
        while True:
            batches = self._read(batch_sql, [cursor, *params])
            for batch_id, gw, seq, digest, root, kid in batches:
                skip = first_idx if batch_id == first_batch else -1
                rows = self._read(rows_sql, [batch_id, skip, *rows_params])
                if not rows:
                    continue
                [(data, codec)] = self._read("SELECT data, data_codec FROM batches WHERE id = ?", (batch_id,))
                lines = _data(data, codec).split(b"\n")[2:-1]
                ref = BatchRef(str(gw), int(seq), str(digest), str(root), str(kid))
                for idx, issues in rows:
                    record = decode_record(lines[int(idx)])
                    if isinstance(record, IntervalRecord):
                        place = (int(batch_id), int(idx))
                        yield place, AttestedInterval(ref, int(idx), record, _issues(issues))
            if len(batches) < _BATCH_PAGE:
                return
            cursor = int(batches[-1][0])

    # -- for the statement schedule: has evidence arrived since? ---------------------------

    def latest_batch_id(self, gateway: str) -> int:
        """The row id of the gateway's latest stored batch (0: none): grows with every batch."""
        [(top,)] = self._read("SELECT coalesce(max(id), 0) FROM batches WHERE gateway = ?", (gateway,))
        return int(top)

    def evidence_mark(self, gateway: str, meters: Collection[str], start: int, end: int) -> int:
        """The row id of the latest stored batch with an interval of ``meters`` in
        ``[start, end)`` (0: none): it grows when late evidence for the period arrives."""
        marks = ",".join("?" * len(meters))
        [(top,)] = self._read(
            f"SELECT coalesce(max(batch_id), 0) FROM batch_series WHERE gateway = ? AND meter IN ({marks}) "
            "AND first_start < ? AND last_end > ?",
            (gateway, *meters, end, start),
        )
        return int(top)

    def evidence_reach(self, gateway: str, meters: Collection[str]) -> tuple[int, int]:
        """How far the gateway's evidence for ``meters`` has come: the latest interval end
        (seconds, 0: none) and when its latest batch arrived (ms, 0: none)."""
        marks = ",".join("?" * len(meters))
        [(end,)] = self._read(
            f"SELECT coalesce(max(last_end), 0) FROM batch_series WHERE gateway = ? AND meter IN ({marks})",
            (gateway, *meters),
        )
        [(received,)] = self._read(
            "SELECT coalesce(max(received_ms), 0) FROM batches WHERE gateway = ?", (gateway,)
        )
        return int(end), int(received)

    # -- for the platform API's metrics ------------------------------------------------

    def verdict_counts(self) -> dict[str, int]:
        """Stored batches by verdict."""
        rows = self._read("SELECT verdict, count(*) FROM batches GROUP BY verdict")
        return {str(v): int(n) for v, n in rows}

    def rejection_counts(self) -> dict[str, int]:
        """Refused payloads by reason, repeats and the uncapped overflow counts included."""
        out: dict[str, int] = {}
        for reason, n in self._read("SELECT reason, sum(repeats) FROM rejections GROUP BY reason"):
            out[str(reason)] = out.get(str(reason), 0) + int(n)
        for reason, n in self._read("SELECT reason, sum(count) FROM rejection_overflow GROUP BY reason"):
            out[str(reason)] = out.get(str(reason), 0) + int(n)
        return out

    # -- signed checkpoints (kept as signed by ``puhui aggregator checkpoint sign``) -----

    def save_checkpoint(self, size: int, created_ms: int, document: bytes) -> None:
        self._write(
            "keeping a checkpoint",
            [("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (size, created_ms, document))],
        )

    def checkpoints(self, *, after_size: int = -1, limit: int = 100) -> list[tuple[int, int, bytes]]:
        """``(size, created_ms, document)`` of kept checkpoints, smallest log first."""
        rows = self._read(
            "SELECT size, created_ms, document FROM checkpoints WHERE size > ? ORDER BY size LIMIT ?",
            (after_size, limit),
        )
        return [(int(n), int(t), bytes(d)) for n, t, d in rows]

    # -- imported charging sessions (aggregator.sessions, schema 8) -----------------------

    def add_network(self, entry: NetworkEntry) -> NetworkEntry:
        """Enrol a network with its manifest key; the same key again is a no-op, another key
        is :class:`NetworkConflict` (a key change is a new enrolment decision, not an update)."""
        with self._transaction(f"enrolling network {entry.network}") as w:
            row = w.execute("SELECT key_id FROM ev_networks WHERE network = ?", (entry.network,)).fetchone()
            if row is None:
                w.execute(
                    "INSERT INTO ev_networks VALUES (?, ?, ?, ?, ?)",
                    (entry.network, entry.public_key_pem, entry.key_id, entry.region, entry.added_ms),
                )
            elif row[0] != entry.key_id:
                raise NetworkConflict(
                    f"network {entry.network} is enrolled with key {row[0]}, not {entry.key_id}"
                )
        return next(n for n in self.networks() if n.network == entry.network)

    def networks(self) -> list[NetworkEntry]:
        rows = self._read(
            "SELECT network, public_key, key_id, region, added_ms FROM ev_networks ORDER BY network"
        )
        return [NetworkEntry(str(n), str(p), str(k), r, int(t)) for n, p, k, r, t in rows]

    def import_sessions(
        self,
        report: ImportReport,
        data: bytes,
        manifest: bytes,
        candidates: Sequence[SessionRecord],
        fit: Fit,
        *,
        received_ms: int,
        via: str,
    ) -> ImportReport:
        """Keep the file's bytes and take the new records that fit, in one transaction."""
        net = report.network
        with self._transaction(f"importing sessions of network {net}") as w:
            w.execute("INSERT OR IGNORE INTO ev_session_sources VALUES (?, ?, ?, ?, ?)",
                      (report.source_sha256, net, data, manifest, received_ms))  # fmt: skip
            new = self._not_yet_held(w, net, candidates, report)
            taken, refused = fit(new, self._spans(w, net, {r.connector_key for r in new}))
            report.accepted += [r.session_id for r in taken]
            report.refused += refused
            cur = w.execute(
                "INSERT INTO ev_session_imports (network, source_sha256, received_ms, via, report) "
                "VALUES (?, ?, ?, ?, '')",
                (net, report.source_sha256, received_ms, via),
            )
            report.import_id = int(cur.lastrowid or 0)
            w.executemany(
                "INSERT INTO ev_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(net, r.session_id, r.charger, r.connector, r.start_ms, r.stop_ms,
                  r.content().decode("ascii"), r.sha256, report.source_sha256, report.import_id)
                 for r in taken],
            )  # fmt: skip
            w.execute("UPDATE ev_session_imports SET report = ? WHERE id = ?",
                      (json.dumps(report.to_json(), sort_keys=True), report.import_id))  # fmt: skip
        return report

    @staticmethod
    def _not_yet_held(
        w: sqlite3.Connection, net: str, candidates: Sequence[SessionRecord], report: ImportReport
    ) -> list[SessionRecord]:
        held: dict[str, str] = {}
        ids = [r.session_id for r in candidates]
        for i in range(0, len(ids), _MAX_PARAMETERS):
            part = ids[i : i + _MAX_PARAMETERS]
            marks = ",".join("?" * len(part))
            sql = f"SELECT session_id, sha256 FROM ev_sessions WHERE network = ? AND session_id IN ({marks})"
            held.update((str(a), str(b)) for a, b in w.execute(sql, (net, *part)))
        new = []
        for r in candidates:
            if r.session_id not in held:
                new.append(r)
            elif held[r.session_id] == r.sha256:
                report.duplicate.append(r.session_id)
            else:
                report.refused.append(
                    Refusal(r.session_id, "session_id", "already imported with other content (immutable)")
                )
        return new

    @staticmethod
    def _spans(
        w: sqlite3.Connection, net: str, connectors: set[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], list[Span]]:
        out: dict[tuple[str, str, str], list[Span]] = {}
        for key in connectors:
            rows = w.execute(
                "SELECT record FROM ev_sessions WHERE network = ? AND charger = ? AND connector = ?", key
            ).fetchall()
            out[key] = [Span.of(SessionRecord.from_json(json.loads(r[0]))) for r in rows]
        return out

    def imported_sessions(
        self, network: str, *, chargers: Collection[str] | None = None, start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[StoredSession]:  # fmt: skip
        """Sessions of ``network`` that lie within ``[start_ms, end_ms]``, by charger and start."""
        sql = "SELECT record, sha256, source_sha256, import_id FROM ev_sessions WHERE network = ?"
        params: list[object] = [network]
        if start_ms is not None:
            sql, params = sql + " AND start_ms >= ?", [*params, start_ms]
        if end_ms is not None:
            sql, params = sql + " AND stop_ms <= ?", [*params, end_ms]
        rows = self._read(sql + " ORDER BY charger, connector, start_ms", params)
        out = [
            StoredSession(SessionRecord.from_json(json.loads(r)), str(h), str(s), int(i))
            for r, h, s, i in rows
        ]
        return [s for s in out if chargers is None or s.record.charger in chargers]

    def session_source(self, sha256: str) -> tuple[bytes, bytes] | None:
        """The exact bytes of an imported file and its manifest, or None."""
        rows = self._read("SELECT data, manifest FROM ev_session_sources WHERE sha256 = ?", (sha256,))
        return (bytes(rows[0][0]), bytes(rows[0][1])) if rows else None

    def session_imports(self, network: str | None = None) -> list[dict[str, Any]]:
        """Every import's report, oldest first."""
        rows = self._read(
            "SELECT report, received_ms, via FROM ev_session_imports"
            " WHERE ? IS NULL OR network = ? ORDER BY id",
            (network, network),
        )
        return [{**json.loads(r), "received_ms": int(t), "via": str(v)} for r, t, v in rows]


def _meter_row(m: MeterInfo) -> tuple[object, ...]:
    day = None if m.calibrated_until is None else m.calibrated_until.isoformat()
    return (m.gateway, m.meter, m.scenario, m.rated_power_kw, m.meter_class, day)


def _day(text: str | None) -> date | None:
    """A stored calibration date (ISO text, as the enrolment wrote it), or None."""
    return None if text is None else date.fromisoformat(text)
