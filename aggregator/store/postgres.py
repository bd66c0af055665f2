"""The evidence store in PostgreSQL: what several aggregators share, replicated and backed up
by the database (docs/scale.md). The same rows and answers as the SQLite store
(:class:`aggregator.store.sqlite.SQLiteEvidenceStore`, the reference); what differs is how the
database enforces them while several processes write at once:

- ``(gateway, seq)`` is unique in the table; before inserting, :meth:`store_group` locks the
  gateways' chain heads (``gateway_heads`` rows, ``FOR UPDATE``, in gateway order so two
  groups cannot deadlock), so two aggregators never check one gateway's chain at once: the
  slower finds the seq stored and gets :class:`StoreConflict`, as with SQLite;
- batch row ids are drawn under a store-wide transaction lock held to the commit, so ids
  become visible in the order they were drawn. Readers depend on that: the API's interval
  cursor and the schedule's evidence marks move past the highest id they saw, and the
  checkpoint log (batches by id) only ever grows at its end. Verification, the expensive
  part, runs in parallel in the aggregators; their commits are serialised;
- a group is one transaction (one WAL flush: ``synchronous_commit`` must not be off, checked
  at open); batches, intervals and series go in by binary ``COPY``, the statements that
  answer nothing (gaps, heads, counters) in one pipelined round trip.

Thread-safe: each call borrows a connection of its own from a small pool (the aggregator
calls the store from its event loop and worker threads). A connection the server dropped
(a restart) is replaced; a read, or a write that failed before its commit was sent, is
tried once more on a new connection. A commit whose answer was lost is an error
(:class:`StoreError`): the batch may be stored, and the gateway's resend is then a duplicate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import socket
import threading
import zlib
from collections.abc import Callable, Collection, Container, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import pq

from aggregator.config import PostgresSettings
from aggregator.errors import StoreConflict, StoreError
from aggregator.store.postgres_schema import MIGRATIONS, apply_migrations
from aggregator.store.rows import (
    HELD,
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
from aggregator.store.stored import batch_data as _data
from aggregator.store.stored import chain_session_leaves, chain_sessions_query
from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from common.tls import SecretError, read_secret
from evidence.keylist import AggregatorKey
from evidence.keys import PublicKey, load_public_key
from evidence.records import IntervalRecord, decode_record

log = logging.getLogger(__name__)

_DATA_LEVEL = 1  # zlib level of stored batches, as SQLite's (see aggregator.store.sqlite)
_BATCH_PAGE = 256  # candidate batches fetched per query while iterating
_KEEP_IDLE = 4  # idle connections kept for the next call
# Advisory lock keys: (puhui's class, what). The class keeps them apart from other users' locks.
_LOCKS = 0x70756875  # "puhu"
_MIGRATION_LOCK, _BATCH_ID_LOCK, _REJECTION_LOCK, _AGGREGATOR_KEY_LOCK, _LEADER_LOCK = 1, 2, 3, 4, 5

_DB_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"  # one clock for every host
_INFLUX_LEASE_S = 30.0  # an InfluxDB outbox claim lapses after this (see pending_influx)
_HELD_KEPT = 10_000  # compressed held batches kept for their next try (then compressed again)

_T = TypeVar("_T")
_BATCH_COLUMNS = ("id", "gateway", "seq", "header_sha256", "prev", "key_id", "root", "created_ms",
                  "received_ms", "count", "verdict", "data", "data_codec")  # fmt: skip
_BATCH_TYPES = ["int8", "text", "int8", "text", "text", "text", "text", "int8", "int8", "int4", "text",
                "bytea", "text"]  # fmt: skip
_INTERVAL_TYPES = ["int8", "int4", "text", "text", "text", "int8", "int8", "text"]
_SERIES_TYPES = ["text", "text", "text", "int8", "int8", "int8"]


class _Pool:
    """Connections, each used by one thread at a time; a few idle ones kept for reuse."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._open: set[psycopg.Connection[Any]] = set()
        self._closed = False

    @contextlib.contextmanager
    def borrow(self) -> Iterator[tuple[psycopg.Connection[Any], bool]]:
        """A connection, and whether it was used before (then the server may have dropped it)."""
        with self._lock:
            if self._closed:
                raise StoreError("the evidence store is closed")
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        if conn is None:
            conn = self._connect()
            with self._lock:
                self._open.add(conn)
        try:
            yield conn, reused
        finally:
            self._give_back(conn)

    def drop_idle(self) -> None:
        """Close the idle connections: one was found dropped by the server (a restart ended
        them all), so the retry gets a new one."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._open.difference_update(idle)
        for conn in idle:
            conn.close()

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        usable = not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE
        with self._lock:
            if usable and not self._closed and len(self._idle) < _KEEP_IDLE:
                self._idle.append(conn)
                return
            self._open.discard(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            every, self._open, self._idle = list(self._open), set(), []
        for conn in every:
            conn.close()


def _issues(text: str | None) -> tuple[str, ...]:
    return tuple(text.split(",")) if text else ()


def _series_rows(batch_id: int, b: AcceptedBatch) -> list[tuple[str, str, str, int, int, int]]:
    """One ``batch_series`` row per meter quantity in the batch: first start, last end."""
    spans: dict[tuple[str, str], list[int]] = {}
    for r in b.intervals:
        span = spans.get((r.meter, r.quantity))
        if span is None:
            spans[(r.meter, r.quantity)] = [r.start, r.end]
        else:
            span[0], span[1] = min(span[0], r.start), max(span[1], r.end)
    return [(b.gateway, m, q, batch_id, lo, hi) for (m, q), (lo, hi) in spans.items()]


def _counter_rows(todo: Sequence[AcceptedBatch]) -> list[tuple[str, str, str, int, float]]:
    """The counter rows of a group, one per series: the latest end wins (the first of equals),
    as SQLite's row-by-row upsert decides (PostgreSQL's cannot touch a row twice in one statement)."""
    best: dict[tuple[str, str, str], tuple[int, float]] = {}
    for b in todo:
        for (m, q), (end, value) in b.counters.items():
            seen = best.get((b.gateway, m, q))
            if seen is None or end > seen[0]:
                best[(b.gateway, m, q)] = (end, value)
    return [(g, m, q, end, float(value)) for (g, m, q), (end, value) in best.items()]


class PostgresEvidenceStore:
    """The evidence store in one PostgreSQL database, shared by several aggregators.

    ``conninfo``: keyword arguments of :func:`psycopg.connect` (host, port, dbname, user,
    password, sslmode, sslrootcert, ...). The schema is created or brought up to date at open.
    """

    def __init__(self, conninfo: Mapping[str, Any], *, rejection_rows_per_source: int = 1000) -> None:
        self.where = (
            f"postgresql://{conninfo.get('user', '')}@{conninfo.get('host', '')}:{conninfo.get('port', 5432)}"
            f"/{conninfo.get('dbname', '')}"
        )
        self.rejection_rows_per_source = rejection_rows_per_source  # then only counted
        self._conninfo = {"application_name": "puhui-aggregator", **conninfo}
        # Whose InfluxDB outbox claims are this object's: the aggregator sets its MQTT client id,
        # so a restarted aggregator takes its own claims back at once (others wait for the lease).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.influx_lease_ms = round(_INFLUX_LEASE_S * 1000)
        self._held_lock = threading.Lock()
        self._held_packed: dict[tuple[str, int, str], bytes] = {}  # compressed bytes of held batches
        self._pool = _Pool(self._connect)
        try:
            self._check_durable()
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    @classmethod
    def from_settings(
        cls, settings: PostgresSettings, *, rejection_rows_per_source: int = 1000
    ) -> PostgresEvidenceStore:
        """The store a config's ``store.postgres`` names (the password read from its file or
        variable now)."""
        info = connection_info(settings)
        return cls(info, rejection_rows_per_source=rejection_rows_per_source)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(**self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot connect to the evidence store: {exc}") from exc

    def _check_durable(self) -> None:
        """An acknowledgement means the batch is on disk: refuse a server that would not flush."""
        [(fsync, commit)] = self._read(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
        )
        if fsync != "on" or commit == "off":
            raise StoreError(
                f"{self.where}: fsync is {fsync} and synchronous_commit is {commit}: an acknowledged "
                "batch could be lost in a crash; the evidence store needs fsync = on and "
                "synchronous_commit not off"
            )

    def _migrate(self) -> None:
        """Create the schema or apply the migrations it lacks, once, whoever opens it first."""

        def body(conn: psycopg.Connection[Any]) -> None:
            apply_migrations(
                conn,
                table="schema_version",
                migrations=MIGRATIONS,
                lock=(_LOCKS, _MIGRATION_LOCK),
                what="the evidence store is",
                where=self.where,
            )

        self._transaction("creating or migrating the schema", body)

    def close(self) -> None:
        self._pool.close()

    # -- the two ways in: a read, a transaction ------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            with self._pool.borrow() as (conn, reused):
                try:
                    return conn.execute(sql, params).fetchall()
                except psycopg.OperationalError as exc:
                    if reused and conn.closed and attempt == 0:
                        self._pool.drop_idle()
                        continue  # the server dropped an idle connection (a restart): once more
                    raise StoreError(f"{self.where}: reading: {exc}") from exc
                except psycopg.Error as exc:
                    raise StoreError(f"{self.where}: reading: {exc}") from exc
        raise AssertionError("unreachable")

    def _transaction(self, what: str, body: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """``body`` in one transaction; errors name ``what``. A unique key violated is
        :class:`StoreConflict`. ``body`` may run twice (see the module's docstring)."""
        for attempt in range(2):
            with self._pool.borrow() as (conn, reused):
                committing = False
                try:
                    with conn.transaction():
                        result = body(conn)
                        committing = True
                    return result
                except psycopg.IntegrityError as exc:
                    raise StoreConflict(f"{self.where}: {what}: {exc}") from exc
                except psycopg.OperationalError as exc:
                    if reused and conn.closed and not committing and attempt == 0:
                        self._pool.drop_idle()
                        continue  # dropped before the commit was sent: nothing was stored
                    outcome = " (the commit's outcome is unknown)" if committing else ""
                    raise StoreError(f"{self.where}: {what}{outcome}: {exc}") from exc
                except psycopg.Error as exc:
                    raise StoreError(f"{self.where}: {what}: {exc}") from exc
        raise AssertionError("unreachable")

    # -- batches -----------------------------------------------------------------------

    def store_batch(self, batch: AcceptedBatch) -> int:
        """Store a verified batch; durable on return. :class:`StoreConflict` if ``(gateway, seq)``
        is stored already."""
        [result] = self.store_group([batch])
        if isinstance(result, StoreConflict):
            raise result
        assert isinstance(result, int)
        return result

    def store_group(
        self, batches: Sequence[AcceptedBatch], rejections: Sequence[Rejection] = (), *,
        hold: Collection[int] = (),
    ) -> list[int | StoreConflict | Held | None]:  # fmt: skip
        """Store several batches and rejections in one transaction (group commit), with the
        SQLite store's answers: a batch whose ``(gateway, seq)`` is stored already gets a
        :class:`StoreConflict`, its gateway's later batches in the group ``None``, the others
        their row ids. Any other error undoes the group (:class:`StoreError`). Durable on return.

        ``hold``: positions in ``batches`` stored only in chain order: such a batch whose
        predecessor (seq - 1) is neither stored nor earlier in the group is not stored and gets
        :data:`HELD` (several aggregators share a gateway's batches: its predecessor may be
        committing elsewhere). Checked under the gateway's chain-head lock, so a successor is
        never stored ahead of a predecessor that is being stored. A held-back ``gap`` batch
        whose missing seqs were stored meanwhile is stored as ``append`` (no gap recorded)."""
        what = f"{len(batches)} batches" + (f" ({batches[0].gateway}#{batches[0].seq}...)" if batches else "")
        with self._held_lock:  # a batch held back last time was compressed then
            kept = [self._held_packed.pop((b.gateway, b.seq, b.header_sha256), None) for b in batches]
        packed = [p or zlib.compress(b.data, _DATA_LEVEL) for p, b in zip(kept, batches, strict=True)]
        results = self._transaction(
            what, lambda conn: self._store_group(conn, batches, packed, rejections, frozenset(hold))
        )
        with self._held_lock:
            if len(self._held_packed) > _HELD_KEPT:
                self._held_packed.clear()
            for b, p, r in zip(batches, packed, results, strict=True):
                if r is HELD:
                    self._held_packed[(b.gateway, b.seq, b.header_sha256)] = p
        return results

    def _store_group(
        self,
        conn: psycopg.Connection[Any],
        batches: Sequence[AcceptedBatch],
        packed: Sequence[bytes],
        rejections: Sequence[Rejection],
        hold: frozenset[int] = frozenset(),
    ) -> list[int | StoreConflict | Held | None]:
        gateways = sorted({b.gateway for b in batches})
        taken: set[tuple[str, int]] = set()
        present: set[tuple[str, int]] = set()  # predecessors and missing seqs of held batches, stored
        if gateways:
            self._lock_heads(conn, gateways)
            probe = [(b.gateway, b.seq) for b in batches] + [
                (b.gateway, s) for i, b in enumerate(batches) if i in hold for s in (b.seq - 1, *b.missing)
            ]
            rows = conn.execute(
                "SELECT b.gateway, b.seq FROM batches b JOIN unnest(%s::text[], %s::int8[]) AS u(g, s)"
                " ON b.gateway = u.g AND b.seq = u.s",
                _columns(probe, 2),
            ).fetchall()
            present = {(str(g), int(s)) for g, s in rows}
            taken = {(b.gateway, b.seq) for b in batches} & present
        results: list[int | StoreConflict | Held | None] = []
        conflicted: set[str] = set()
        todo: list[tuple[AcceptedBatch, bytes]] = []
        for pos, (b, data) in enumerate(zip(batches, packed, strict=True)):
            if b.gateway in conflicted:
                results.append(None)
            elif (b.gateway, b.seq) in taken:
                conflicted.add(b.gateway)
                results.append(StoreConflict(f"{self.where}: batch {b.gateway}#{b.seq} is already stored"))
            elif pos in hold and b.seq > 1 and (b.gateway, b.seq - 1) not in present | taken:
                results.append(HELD)
            else:
                if pos in hold and b.verdict == "gap":
                    missing = [s for s in b.missing if (b.gateway, s) not in present | taken]
                    b = dataclasses.replace(b, missing=missing, verdict="gap" if missing else "append")
                taken.add((b.gateway, b.seq))  # the same seq twice in one group: the second conflicts
                results.append(-1)
                todo.append((b, data))
        if todo:
            ids = self._draw_ids(conn, len(todo))
            self._insert_batches(conn, todo, ids)
            it = iter(ids)
            results = [next(it) if r == -1 else r for r in results]
        if rejections:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCKS, _REJECTION_LOCK))
            for r in rejections:
                self._insert_rejection(conn, r)
        return results

    def _lock_heads(self, conn: psycopg.Connection[Any], gateways: list[str]) -> None:
        """Lock the gateways' chain heads, in gateway order (every writer takes them so: no
        deadlock); a gateway's first batch creates its head row first."""
        lock = "SELECT gateway FROM gateway_heads WHERE gateway = ANY(%s) ORDER BY gateway FOR UPDATE"
        if len(conn.execute(lock, (gateways,)).fetchall()) == len(gateways):
            return
        conn.execute(
            "INSERT INTO gateway_heads (gateway) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
            (gateways,),
        )
        conn.execute(lock, (gateways,))

    def _draw_ids(self, conn: psycopg.Connection[Any], n: int) -> list[int]:
        """``n`` new batch ids, under the lock that makes ids visible in the order drawn (taken
        in the FROM clause: before the ids are drawn)."""
        [(last,)] = conn.execute(
            "SELECT setval('batch_ids', nextval('batch_ids') + %s - 1) FROM pg_advisory_xact_lock(%s, %s)",
            (n, _LOCKS, _BATCH_ID_LOCK),
        ).fetchall()
        return list(range(int(last) - n + 1, int(last) + 1))

    def _insert_batches(
        self, conn: psycopg.Connection[Any], todo: Sequence[tuple[AcceptedBatch, bytes]], ids: Sequence[int]
    ) -> None:
        cur = conn.cursor()
        with cur.copy(f"COPY batches ({', '.join(_BATCH_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_BATCH_TYPES)
            for i, (b, data) in zip(ids, todo, strict=True):
                copy.write_row((i, b.gateway, b.seq, b.header_sha256, b.prev, b.key_id, b.root, b.created_ms,
                                b.received_ms, b.count, b.verdict, data, "zlib"))  # fmt: skip
        with cur.copy(
            'COPY intervals (batch_id, idx, gateway, meter, quantity, start, "end", issues)'
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(_INTERVAL_TYPES)
            for i, (b, _) in zip(ids, todo, strict=True):
                g = b.gateway
                for r in b.intervals:
                    issues = ",".join(r.issues) or None
                    copy.write_row((i, r.index, g, r.meter, r.quantity, r.start, r.end, issues))
        with cur.copy(
            "COPY batch_series (gateway, meter, quantity, batch_id, first_start, last_end)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(_SERIES_TYPES)
            for i, (b, _) in zip(ids, todo, strict=True):
                for row in _series_rows(i, b):
                    copy.write_row(row)
        sessions = [
            (i, r.index, b.gateway, r.charger, r.connector, r.meter, r.transaction_id, r.start_time_ms,
             r.stop_time_ms, r.energy_wh, r.assurance, ",".join(r.flags) or None)
            for i, (b, _) in zip(ids, todo, strict=True) for r in b.chain_sessions
        ]  # fmt: skip
        if sessions:
            cur.executemany(
                "INSERT INTO ocpp_chain_sessions (batch_id, idx, gateway, charger, connector, meter,"
                " transaction_id, start_time_ms, stop_time_ms, energy_wh, assurance, flags)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                sessions,
            )
        with conn.pipeline():  # the statements that answer nothing: one round trip
            self._chain_effects(conn, [b for b, _ in todo])

    def _chain_effects(self, conn: psycopg.Connection[Any], todo: Sequence[AcceptedBatch]) -> None:
        """Gaps, chain heads, counters and announced keys of the stored batches (after their rows,
        so a gap is never recorded for a seq this group stores)."""
        missing = [(b.gateway, s, b.received_ms) for b in todo for s in b.missing]
        if missing:
            conn.execute(
                "INSERT INTO gaps (gateway, seq, detected_ms) SELECT u.g, u.s, u.t"
                " FROM unnest(%s::text[], %s::int8[], %s::int8[]) AS u(g, s, t)"
                " WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.gateway = u.g AND b.seq = u.s)"
                " ON CONFLICT DO NOTHING",
                _columns(missing, 3),
            )
        conn.execute(
            "UPDATE gaps SET filled_ms = u.t FROM unnest(%s::text[], %s::int8[], %s::int8[]) AS u(g, s, t)"
            " WHERE gaps.gateway = u.g AND gaps.seq = u.s AND gaps.filled_ms IS NULL",
            _columns([(b.gateway, b.seq, b.received_ms) for b in todo], 3),
        )
        dropped = {(b.gateway, s): (b.received_ms, b.seq) for b in todo for s in b.dropped_seqs}  # last wins
        if dropped:
            conn.execute(
                "INSERT INTO gaps (gateway, seq, detected_ms, explained_by_seq)"
                " SELECT * FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::int8[])"
                " ON CONFLICT (gateway, seq) DO UPDATE SET explained_by_seq = excluded.explained_by_seq",
                _columns([(g, s, t, by) for (g, s), (t, by) in dropped.items()], 4),
            )
        conn.execute(
            "UPDATE gateway_heads h SET seq = u.s, header_sha256 = u.h FROM (SELECT DISTINCT ON (g) g, s, h"
            " FROM unnest(%s::text[], %s::int8[], %s::text[]) AS v(g, s, h) ORDER BY g, s DESC) AS u"
            " WHERE h.gateway = u.g AND u.s > h.seq",
            _columns([(b.gateway, b.seq, b.header_sha256) for b in todo], 3),
        )
        counters = _counter_rows(todo)
        if counters:
            conn.execute(
                'INSERT INTO counter_state (gateway, meter, quantity, "end", counter_end)'
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int8[], %s::float8[])"
                ' ON CONFLICT (gateway, meter, quantity) DO UPDATE SET "end" = excluded."end",'
                ' counter_end = excluded.counter_end WHERE excluded."end" > counter_state."end"',
                _columns(counters, 5),
            )
        for b in todo:
            if b.new_key is not None:
                _insert_key(conn, b.new_key)

    def record_rejection(self, rejection: Rejection) -> None:
        def body(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCKS, _REJECTION_LOCK))
            self._insert_rejection(conn, rejection)

        self._transaction("recording a rejection", body)

    def _insert_rejection(self, conn: psycopg.Connection[Any], r: Rejection) -> None:
        """As SQLite's: one more repeat of the same bytes refused for the same reason, or a new
        row, or past ``rejection_rows_per_source`` rows for the source, only a count. The caller
        holds the rejections' lock, so two aggregators cannot both take the last row."""
        digest = r.data_sha256 or hashlib.sha256(r.data).hexdigest()
        size = len(r.data) if r.size is None else r.size
        source = "gateway IS NULL" if r.gateway is None else "gateway = %(gateway)s"
        params = {"gateway": r.gateway, "at": r.received_ms, "digest": digest, "reason": r.reason,
                  "detail": r.detail}  # fmt: skip
        repeated = conn.execute(
            "UPDATE rejections SET repeats = repeats + 1, last_ms = %(at)s WHERE data_sha256 = %(digest)s"
            f" AND reason = %(reason)s AND {source} AND detail = %(detail)s",
            params,
        )
        if repeated.rowcount:
            return
        [(rows,)] = conn.execute(f"SELECT count(*) FROM rejections WHERE {source}", params).fetchall()
        if rows >= self.rejection_rows_per_source:
            conn.execute(
                "INSERT INTO rejection_overflow VALUES (%s, %s, 1, %s, %s, %s) ON CONFLICT (source, reason)"
                " DO UPDATE SET count = rejection_overflow.count + 1,"
                " bytes = rejection_overflow.bytes + excluded.bytes, last_ms = excluded.last_ms",
                (r.gateway or "", r.reason, size, r.received_ms, r.received_ms),
            )
            return
        conn.execute(
            "INSERT INTO rejections (gateway, seq, header_sha256, reason, detail, received_ms, data,"
            " data_sha256, size) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (r.gateway, r.seq, r.header_sha256, r.reason, r.detail, r.received_ms, r.data, digest, size),
        )

    def mark_influx(self, ids: Collection[int], *, error: str | None = None) -> None:
        """Mark batches written to InfluxDB, or parked as failed with ``error``."""
        state = INFLUX_WRITTEN if error is None else INFLUX_FAILED
        self._transaction(
            "updating the InfluxDB outbox",
            lambda conn: conn.execute(
                "UPDATE batches SET influx_state = %s, influx_error = %s, influx_lease_ms = NULL"
                " WHERE id = ANY(%s)",
                (state, error, list(ids)),
            ),
        )

    # -- the registry ------------------------------------------------------------------

    def save_enrolment(self, entry: GatewayEntry, at_ms: int) -> None:
        """Insert or update the gateway and its meters, and add its (new) keys."""
        e = entry

        def body(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO gateways VALUES (%s, %s, %s, %s, %s) ON CONFLICT (gateway) DO UPDATE SET"
                " site = excluded.site, region = excluded.region, document = excluded.document",
                (e.gateway, e.site, e.region, at_ms, e.document),
            )
            conn.execute("DELETE FROM meters WHERE gateway = %s", (e.gateway,))
            conn.cursor().executemany(
                "INSERT INTO meters (gateway, meter, scenario, rated_power_kw, meter_class, calibrated_until)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(m.gateway, m.meter, m.scenario, m.rated_power_kw, m.meter_class, m.calibrated_until)
                 for m in e.meters],
            )  # fmt: skip
            conn.cursor().executemany(
                "INSERT INTO gateway_keys (gateway, key_id, public_key, valid_from_seq, revoked_from_ms,"
                " source, added_ms) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(k.gateway, k.key_id, k.public_key_der, k.valid_from_seq, k.revoked_from_ms, k.source,
                  k.added_ms) for k in e.keys],
            )  # fmt: skip
            _registry_changed(conn)

        self._transaction(f"enrolling {e.gateway}", body)

    def add_key(self, entry: KeyEntry) -> None:
        try:
            self._transaction(f"adding key {entry.key_id}", lambda conn: _insert_key(conn, entry))
        except StoreConflict as exc:  # as SQLite's: a key added twice is an error, not a lost race
            raise StoreError(str(exc)) from exc

    def revoke_key(self, gateway: str, key_id: str, from_ms: int) -> None:
        """Revoke from ``from_ms`` on (an earlier revocation time is kept)."""

        def body(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE gateway_keys SET revoked_from_ms = least(coalesce(revoked_from_ms, %s), %s)"
                " WHERE gateway = %s AND key_id = %s",
                (from_ms, from_ms, gateway, key_id),
            )
            _registry_changed(conn)

        self._transaction(f"revoking {gateway} key {key_id}", body)

    def registry_version(self) -> int:
        [(version,)] = self._read("SELECT value FROM meta WHERE key = 'registry_version'")
        return int(version)

    def gateways(self) -> list[GatewayEntry]:
        keys: dict[str, list[KeyEntry]] = {}
        for row in self._read(
            "SELECT gateway, key_id, public_key, valid_from_seq, source, added_ms, revoked_from_ms"
            " FROM gateway_keys ORDER BY gateway, valid_from_seq, added_ms"
        ):
            entry = KeyEntry(row[0], row[1], bytes(row[2]), *row[3:])
            keys.setdefault(entry.gateway, []).append(entry)
        meters: dict[str, list[MeterInfo]] = {}
        for info in self.meters():
            meters.setdefault(info.gateway, []).append(info)
        rows = self._read(
            "SELECT gateway, site, region, enrolled_ms, document FROM gateways ORDER BY gateway"
        )
        return [
            GatewayEntry(g, s, r, int(t), tuple(meters.get(g, ())), tuple(keys.get(g, ())), bytes(d))
            for g, s, r, t, d in rows
        ]

    # -- the aggregator's own keys -------------------------------------------------------

    def aggregator_keys(self) -> list[AggregatorKey]:
        """Every aggregator key, oldest first."""
        rows = self._read(
            "SELECT key_id, public_key, valid_from_ms, retired_ms, revoked_from_ms, endorsement"
            " FROM aggregator_keys ORDER BY seq"
        )
        return [AggregatorKey(*row) for row in rows]

    def add_aggregator_key(self, key: AggregatorKey, *, retire: str | None = None) -> None:
        """Append ``key``; ``retire`` (its predecessor) stops signing when it starts."""

        def body(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCKS, _AGGREGATOR_KEY_LOCK))
            if retire is not None:
                conn.execute(
                    "UPDATE aggregator_keys SET retired_ms = %s WHERE key_id = %s",
                    (key.valid_from_ms, retire),
                )
            conn.execute(
                "INSERT INTO aggregator_keys VALUES (%s, %s, %s, %s, %s, %s,"
                " (SELECT coalesce(max(seq), 0) + 1 FROM aggregator_keys))",
                (key.key_id, key.public_key, key.valid_from_ms, key.retired_ms, key.revoked_from_ms,
                 key.endorsement),
            )  # fmt: skip

        self._transaction("adding an aggregator key", body)

    def revoke_aggregator_key(self, key_id: str, from_ms: int) -> bool:
        done = self._transaction(
            "revoking an aggregator key",
            lambda conn: (
                conn.execute(
                    "UPDATE aggregator_keys SET revoked_from_ms = %s WHERE key_id = %s", (from_ms, key_id)
                ).rowcount
            ),
        )
        return done == 1

    # -- signed checkpoints --------------------------------------------------------------

    def save_checkpoint(self, size: int, created_ms: int, document: bytes) -> None:
        self._transaction(
            "keeping a checkpoint",
            lambda conn: conn.execute(
                "INSERT INTO checkpoints VALUES (%s, %s, %s) ON CONFLICT (size) DO UPDATE SET"
                " created_ms = excluded.created_ms, document = excluded.document",
                (size, created_ms, document),
            ),
        )

    def checkpoints(self, *, after_size: int = -1, limit: int = 100) -> list[tuple[int, int, bytes]]:
        """``(size, created_ms, document)`` of kept checkpoints, smallest log first."""
        rows = self._read(
            "SELECT size, created_ms, document FROM checkpoints WHERE size > %s ORDER BY size LIMIT %s",
            (after_size, limit),
        )
        return [(int(n), int(t), bytes(d)) for n, t, d in rows]

    # -- reads -------------------------------------------------------------------------

    def chain_links(self, gateway: str) -> list[tuple[int, str, str]]:
        """``(seq, header_sha256, prev)`` of every stored batch of ``gateway``, by seq."""
        rows = self._read("SELECT seq, header_sha256, prev FROM batches WHERE gateway = %s ORDER BY seq",
                          (gateway,))  # fmt: skip
        return [(int(s), str(h), str(p)) for s, h, p in rows]

    def batch_log(self) -> list[tuple[str, int, str]]:
        """``(gateway, seq, header_sha256)`` of every stored batch, in the order stored."""
        rows = self._read("SELECT gateway, seq, header_sha256 FROM batches ORDER BY id")
        return [(str(g), int(s), str(h)) for g, s, h in rows]

    def batch_created_ms(self, gateway: str, seq: int) -> int | None:
        rows = self._read("SELECT created_ms FROM batches WHERE gateway = %s AND seq = %s", (gateway, seq))
        return int(rows[0][0]) if rows else None

    def highest_seq(self, gateway: str) -> int:
        """The chain head's seq (0: none stored)."""
        rows = self._read("SELECT seq FROM gateway_heads WHERE gateway = %s", (gateway,))
        return int(rows[0][0]) if rows else 0

    def counter_state(self, gateway: str) -> dict[tuple[str, str], tuple[int, float]]:
        rows = self._read(
            'SELECT meter, quantity, "end", counter_end FROM counter_state WHERE gateway = %s', (gateway,)
        )
        return {(str(m), str(q)): (int(e), float(v)) for m, q, e, v in rows}

    def gaps(self, gateway: str | None = None) -> list[Gap]:
        sql = "SELECT gateway, seq, detected_ms, filled_ms, explained_by_seq FROM gaps"
        rows = self._read(sql + (" WHERE gateway = %s" if gateway else "") + " ORDER BY gateway, seq",
                          (gateway,) if gateway else ())  # fmt: skip
        return [Gap(*row) for row in rows]

    def rejections(self, gateway: str | None = None) -> list[Rejection]:
        sql = (
            "SELECT gateway, seq, header_sha256, reason, detail, received_ms, data, repeats,"
            " coalesce(last_ms, received_ms), coalesce(size, length(data)), data_sha256 FROM rejections"
        )
        rows = self._read(sql + (" WHERE gateway = %s" if gateway else "") + " ORDER BY id",
                          (gateway,) if gateway else ())  # fmt: skip
        return [
            Rejection(g, s, h, reason, detail, at, bytes(data), repeats, last, size, digest)
            for g, s, h, reason, detail, at, data, repeats, last, size, digest in rows
        ]

    def rejection_overflow(self) -> dict[tuple[str, str], int]:
        """Rejections only counted, by (source, reason); source "" is no gateway."""
        rows = self._read("SELECT source, reason, count FROM rejection_overflow ORDER BY source, reason")
        return {(str(s), str(r)): int(n) for s, r, n in rows}

    def batch_count(self, gateway: str | None = None) -> int:
        where, params = (" WHERE gateway = %s", (gateway,)) if gateway else ("", ())
        [(n,)] = self._read("SELECT count(*) FROM batches" + where, params)
        return int(n)

    def influx_backlog(self) -> tuple[int, int]:
        """(batches pending, batches parked as failed) in the InfluxDB outbox."""
        [(pending, failed)] = self._read(
            "SELECT count(*) FILTER (WHERE influx_state = 0), count(*) FILTER (WHERE influx_state = 2)"
            " FROM batches"
        )
        return int(pending), int(failed)

    def pending_influx(
        self, limit: int, known: Container[int] = (), exclude: Collection[int] = ()
    ) -> list[PendingBatch]:
        """The oldest ``limit`` batches not yet written to InfluxDB, except ids in ``exclude``,
        now *claimed* by this store object's writer for ``influx_lease_s`` (the database's clock):
        another aggregator's writer skips them (``FOR UPDATE SKIP LOCKED`` while claiming, the
        lease after), so no batch is written by two writers at once; claims of a writer that
        died lapse and are taken over. Claimed batches are this writer's to take again. Those
        in ``known`` come without their bytes and issues (the writer has their lines)."""
        rows = self._transaction(
            "claiming InfluxDB outbox batches",
            lambda conn: conn.execute(
                "WITH c AS (SELECT id FROM batches WHERE influx_state = 0 AND id <> ALL(%(exclude)s)"
                f" AND (influx_lease_ms IS NULL OR influx_owner = %(me)s OR influx_lease_ms < {_DB_NOW_MS})"
                " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                f" UPDATE batches b SET influx_owner = %(me)s, influx_lease_ms = {_DB_NOW_MS} + %(lease)s"
                " FROM c WHERE b.id = c.id RETURNING b.id, b.gateway, b.seq, b.verdict",
                {"exclude": list(exclude), "me": self.owner, "limit": limit, "lease": self.influx_lease_ms},
            ).fetchall(),
        )  # fmt: skip
        rows.sort(key=lambda r: int(r[0]))
        wanted = [int(r[0]) for r in rows if int(r[0]) not in known]
        data: dict[int, bytes] = {}
        issues: dict[int, dict[int, tuple[str, ...]]] = {i: {} for i in wanted}
        if wanted:
            for batch_id, blob, codec in self._read(
                "SELECT id, data, data_codec FROM batches WHERE id = ANY(%s)", (wanted,)
            ):
                data[int(batch_id)] = _data(blob, codec)
            for batch_id, idx, text in self._read(
                "SELECT batch_id, idx, issues FROM intervals WHERE batch_id = ANY(%s) AND issues IS NOT NULL",
                (wanted,),
            ):
                issues[int(batch_id)][int(idx)] = _issues(str(text))
        return [
            PendingBatch(int(i), str(g), int(s), str(v), data.get(int(i), b""), issues.get(int(i), {}))
            for i, g, s, v in rows
        ]

    def meters(self) -> list[MeterInfo]:
        """Every enrolled meter, with its gateway's grid region."""
        rows = self._read(
            "SELECT m.gateway, m.meter, m.scenario, m.rated_power_kw, m.meter_class, g.region,"
            " m.calibrated_until FROM meters m JOIN gateways g USING (gateway) ORDER BY m.gateway, m.meter"
        )
        return [MeterInfo(*row) for row in rows]

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
            "%s",
            gateway=gateway,
            charger=charger,
            transaction_id=transaction_id,
            start_ms=start_ms,
            end_ms=end_ms,
        )
        return chain_session_leaves(self._read(sql, params))

    def batch_bytes(self, gateway: str, seq: int) -> bytes | None:
        """The exact signed bytes of a stored batch, or None."""
        rows = self._read(
            "SELECT data, data_codec FROM batches WHERE gateway = %s AND seq = %s", (gateway, seq)
        )
        return _data(*rows[0]) if rows else None

    def gateway_public_key(self, gateway: str, key_id: str) -> PublicKey | None:
        """The enrolled key ``key_id`` of ``gateway``, revoked or not, or None."""
        rows = self._read(
            "SELECT public_key FROM gateway_keys WHERE gateway = %s AND key_id = %s", (gateway, key_id)
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
        """Stored interval records in arrival order, filtered as SQLite's
        (:meth:`aggregator.store.sqlite.SQLiteEvidenceStore.attested_intervals`)."""
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
        starting after ``after``: a cursor that stays valid while batches arrive."""
        wanted = None if meters is None else list(meters)
        if wanted is not None and not wanted:
            return
        f = {"gateway": gateway, "meters": wanted, "start": start, "end": end}
        series = ["s.batch_id = b.id"]
        rows_where = ["batch_id = %(batch)s", "idx > %(skip)s"]
        if gateway is not None:
            series.append("s.gateway = %(gateway)s")
        if wanted is not None:
            series.append("s.meter = ANY(%(meters)s)")
            rows_where.append("meter = ANY(%(meters)s)")
        if start is not None:  # some interval starts at or after `start`: it ends after it
            series.append("s.last_end > %(start)s")
            rows_where.append("start >= %(start)s")
        if end is not None:  # some interval ends by `end`: it starts before it
            series.append("s.first_start < %(end)s")
            rows_where.append('"end" <= %(end)s')
        where = ["b.id > %(cursor)s"] + (["b.gateway = %(gateway)s"] if gateway is not None else [])
        if wanted is not None or start is not None or end is not None:
            where.append(f"EXISTS (SELECT 1 FROM batch_series s WHERE {' AND '.join(series)})")
        batch_sql = (
            "SELECT b.id, b.gateway, b.seq, b.header_sha256, b.root, b.key_id, b.data, b.data_codec"
            f" FROM batches b WHERE {' AND '.join(where)} ORDER BY b.id LIMIT {_BATCH_PAGE}"
        )
        rows_sql = f"SELECT idx, issues FROM intervals WHERE {' AND '.join(rows_where)} ORDER BY idx"
        first_batch, first_idx = after
        cursor = first_batch - 1 if first_idx >= 0 else first_batch  # re-read the cursor's batch
        while True:
            batches = self._read(batch_sql, {**f, "cursor": cursor})
            for batch_id, gw, seq, digest, root, kid, data, codec in batches:
                skip = first_idx if batch_id == first_batch else -1
                rows = self._read(rows_sql, {**f, "batch": batch_id, "skip": skip})
                if not rows:
                    continue
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

    # -- for the statement schedule --------------------------------------------------------

    def latest_batch_id(self, gateway: str) -> int:
        """The row id of the gateway's latest stored batch (0: none): grows with every batch."""
        [(top,)] = self._read("SELECT coalesce(max(id), 0) FROM batches WHERE gateway = %s", (gateway,))
        return int(top)

    def evidence_mark(self, gateway: str, meters: Collection[str], start: int, end: int) -> int:
        """The row id of the latest stored batch with an interval of ``meters`` in ``[start, end)``."""
        [(top,)] = self._read(
            "SELECT coalesce(max(batch_id), 0) FROM batch_series WHERE gateway = %s AND meter = ANY(%s)"
            " AND first_start < %s AND last_end > %s",
            (gateway, list(meters), end, start),
        )
        return int(top)

    def evidence_reach(self, gateway: str, meters: Collection[str]) -> tuple[int, int]:
        """The latest interval end of ``meters`` (s, 0: none) and the latest batch's arrival (ms)."""
        [(end, received)] = self._read(
            "SELECT (SELECT coalesce(max(last_end), 0) FROM batch_series WHERE gateway = %s"
            " AND meter = ANY(%s)), (SELECT coalesce(max(received_ms), 0) FROM batches WHERE gateway = %s)",
            (gateway, list(meters), gateway),
        )
        return int(end), int(received)

    # -- for the platform API's metrics ------------------------------------------------

    def verdict_counts(self) -> dict[str, int]:
        rows = self._read("SELECT verdict, count(*) FROM batches GROUP BY verdict")
        return {str(v): int(n) for v, n in rows}

    def rejection_counts(self) -> dict[str, int]:
        """Refused payloads by reason, repeats and the uncapped overflow counts included."""
        out: dict[str, int] = {}
        for reason, n in self._read(
            "SELECT reason, sum(repeats) FROM rejections GROUP BY reason"
            " UNION ALL SELECT reason, sum(count) FROM rejection_overflow GROUP BY reason"
        ):
            out[str(reason)] = out.get(str(reason), 0) + int(n)
        return out


def connection_info(settings: PostgresSettings) -> dict[str, Any]:
    """:func:`psycopg.connect`'s keyword arguments for a config's ``store.postgres`` (the
    password read from its file or variable now). Raises :class:`StoreError`."""
    s = settings
    info: dict[str, Any] = {"host": s.host, "port": s.port, "dbname": s.dbname, "user": s.user,
                            "connect_timeout": s.connect_timeout_s}  # fmt: skip
    if s.password is not None:
        try:
            info["password"] = read_secret(s.password, "store.postgres.password")
        except SecretError as exc:
            raise StoreError(str(exc)) from exc
    if s.insecure:
        info["sslmode"] = "disable"
    else:
        info.update(sslmode=s.sslmode, sslrootcert=str(s.sslrootcert))
    return info


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as ``width`` column lists: one array parameter each (``unnest``)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _insert_key(conn: psycopg.Connection[Any], k: KeyEntry) -> None:
    conn.execute(
        "INSERT INTO gateway_keys (gateway, key_id, public_key, valid_from_seq, revoked_from_ms, source,"
        " added_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (k.gateway, k.key_id, k.public_key_der, k.valid_from_seq, k.revoked_from_ms, k.source, k.added_ms),
    )
    _registry_changed(conn)


def _registry_changed(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'registry_version'")


class Leadership:
    """Which of several aggregators over one database runs the statement schedule and the
    pusher: the holder of a PostgreSQL *session* advisory lock, on a connection of its own.
    The server releases it when that session ends (the process died, the connection broke),
    and another aggregator's :meth:`try_take` then gets it. Thread-safe enough for one
    caller (the aggregator's leader task)."""

    def __init__(self, store: PostgresEvidenceStore) -> None:
        self._store = store
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_take(self) -> bool:
        """Take the lock if free (False: another aggregator holds it, or the server is away)."""
        if self._conn is not None:
            return True
        try:
            conn = self._store._connect()
        except StoreError as exc:
            log.warning("leadership: %s", exc)
            return False
        try:
            [(got,)] = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCKS, _LEADER_LOCK)).fetchall()
        except psycopg.Error as exc:
            log.warning("leadership: %s: %s", self._store.where, exc)
            got = False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def still_held(self) -> bool:
        """Whether the lock's session is alive (a round trip); False once it is lost."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.execute("SELECT 1").fetchall()
            return True
        except psycopg.Error:
            self.release()
            return False

    def backend_pid(self) -> int | None:
        """The server process of the lock's session (for an operator, and the tests)."""
        return None if self._conn is None else int(self._conn.info.backend_pid)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the session ends: the server releases the lock
