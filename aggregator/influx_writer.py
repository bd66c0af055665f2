"""Feeds InfluxDB from the evidence store: every verified interval, exactly once.

The store is the source of truth and InfluxDB a view of it. Each stored batch starts in the
outbox (``batches.influx_state = 0``); the writer takes the oldest pending batches, writes
their points in one gzip-compressed request, and only then marks them written. If
InfluxDB is down or slow, ingest and acknowledgements carry on and the outbox grows; the
writer retries with jittered exponential backoff and catches up when the server is back.

**Exactly once** comes from InfluxDB itself: a point is identified by measurement, tag set
and timestamp, and writing the same point again *overwrites* it with the same fields. A
crash between the write and the outbox update therefore rewrites identical points, which
leaves one point per interval: at-least-once delivery of idempotent points. We rely on
this deliberately: every point's identity is derived only from signed data
(gateway, meter, quantity, interval start), never from arrival order or wall time.
A consequence, documented in docs/influx-schema.md: if a gateway signs the same interval
again in a later batch, the later one replaces the earlier one in InfluxDB (its
``batch_seq`` field says which); the store keeps both.

A request the server rejects as data (4xx other than auth and missing database) is split
per batch; a batch that still fails is parked (``influx_state = 2`` with the server's
message), logged and counted, so one bad point cannot block the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aggregator.config import InfluxSettings
from aggregator.errors import StoreError
from aggregator.influx import (
    InfluxAuthError,
    InfluxDatabaseNotFound,
    InfluxRejected,
    InfluxUnavailable,
    InfluxV1Client,
    LineProtocolError,
    Point,
    encode_point,
    float_texts,
)
from aggregator.records import Interval, decode_records
from aggregator.store import InfluxOutbox, PendingBatch
from common.backoff import Backoff
from common.clock import Clock
from evidence.batch import BatchHeader, parse_batch

log = logging.getLogger(__name__)
T = TypeVar("T")
RunDb = Callable[..., Awaitable[Any]]

STATUS_VERIFIED = "verified"
_STRING_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\"})
_PROBE_FIELD = " x=1i 0"  # what encode_point appends for the probe point below
_prefixes: dict[tuple[str, ...], str] = {}


def _prefix(measurement: str, *tags: str) -> str:
    """Escaped ``measurement,key=value,...`` for tag pairs ``k1, v1, k2, v2, ...``; validated
    (and sorted) by encode_point. Empty values are left out (line protocol has no empty tag)."""
    key = (measurement, *tags)
    prefix = _prefixes.get(key)
    if prefix is None:
        pairs = {tags[i]: tags[i + 1] for i in range(0, len(tags), 2) if tags[i + 1]}
        prefix = encode_point(Point(measurement, pairs, {"x": 1}, 0))[: -len(_PROBE_FIELD)]
        if len(_prefixes) > 100_000:
            _prefixes.clear()
        _prefixes[key] = prefix
    return prefix


def _series(measurement: str, gateway: str, r: Interval) -> str:
    """The interval point's series: where it was measured and what it is (docs/influx-schema.md)."""
    st = r.stats
    return _prefix(
        measurement, "gateway", gateway, "meter", r.meter, "quantity", r.quantity, "unit", r.unit,
        "kind", r.kind, "stat_unit", "" if st is None else st.unit, "status", STATUS_VERIFIED,
    )  # fmt: skip


def _text(value: str) -> str:
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def _num(name: str, value: Any) -> str:
    if value is None:
        return ""
    return f",{name}={float(value)!r}"


def _int(name: str, value: Any) -> str:
    return "" if value is None else f",{name}={int(value)}i"


# The common case (every number present): one %-format, same bytes as the general path; the
# six floats of each line written for the whole batch at once (float_texts).
_FAST_LINE = (
    "%s delta=%s,counter_start=%s,counter_end=%s,counter_start_time_ms=%di,counter_end_time_ms=%di,"
    "stat_min=%s,stat_avg=%s,stat_max=%s,samples=%di,expected=%di,interval_s=%di,"
    'flags="%s",issues="%s",plausible=%s,batch_seq=%di,batch_index=%di %d'
)


def interval_lines(
    measurement: str,
    gateway: str,
    seq: int,
    index_records: Iterable[tuple[int, Interval, Sequence[str]]],
) -> list[str]:
    """One line of line protocol per ``(leaf index, interval record, issues)`` of one batch."""
    out: list[str] = []
    append = out.append
    prefixes: dict[tuple[str, str, str, str, str], str] = {}  # this batch's series
    fast: list[tuple[int, str, int, Interval, Sequence[str]]] = []  # (line, prefix, index, r, issues)
    floats: list[float] = []
    for index, r, issues in index_records:
        st = r.stats
        a, b, d = r.counter_start, r.counter_end, r.delta
        ta, tb = r.counter_start_time_ms, r.counter_end_time_ms
        if (
            st is None or type(a) is not float or type(b) is not float or type(d) is not float
            or type(ta) is not int or type(tb) is not int
        ):  # fmt: skip
            append(interval_line(measurement, gateway, seq, index, r, issues))
            continue
        key = (r.meter, r.quantity, r.unit, r.kind, st.unit)
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = prefixes[key] = _series(measurement, gateway, r)
        fast.append((len(out), prefix, index, r, issues))
        floats += (d, a, b, float(st.min), float(st.avg), float(st.max))
        append("")
    texts = float_texts(floats)
    for i, (line, prefix, index, r, issues) in enumerate(fast):
        f = 6 * i
        out[line] = _FAST_LINE % (
            prefix, texts[f], texts[f + 1], texts[f + 2], r.counter_start_time_ms, r.counter_end_time_ms,
            texts[f + 3], texts[f + 4], texts[f + 5], r.samples, r.expected, r.end - r.start,
            ",".join(r.flags),
            ",".join(issues), "false" if issues else "true", seq, index, r.start * 1000,
        )  # fmt: skip
    return out


def interval_line(
    measurement: str, gateway: str, seq: int, index: int, r: Interval, issues: Sequence[str]
) -> str:
    """One line of line protocol for one interval record (the general case: values missing)."""
    stats = r.stats
    fields = [
        _num("delta", r.delta),
        _num("counter_start", r.counter_start),
        _num("counter_end", r.counter_end),
        _int("counter_start_time_ms", r.counter_start_time_ms),
        _int("counter_end_time_ms", r.counter_end_time_ms),
        "" if stats is None else (
            f",stat_min={float(stats.min)!r},stat_avg={float(stats.avg)!r},stat_max={float(stats.max)!r}"
        ),
        f",samples={r.samples}i,expected={r.expected}i,interval_s={r.end - r.start}i",
        f',flags="{",".join(r.flags)}",issues="{",".join(issues)}"',
        f",plausible={'false' if issues else 'true'}",
        f",batch_seq={seq}i,batch_index={index}i",
    ]  # fmt: skip
    return f"{_series(measurement, gateway, r)} {''.join(fields)[1:]} {r.start * 1000}"


def batch_line(measurement: str, h: BatchHeader, verdict: str, implausible: int) -> str:
    """One point per stored batch (timestamp: the batch's created_ms)."""
    return (
        f'{_prefix(measurement, "gateway", h.gateway)} seq={h.seq}i,count={h.count}i,chain="{verdict}",'
        f'status="{STATUS_VERIFIED}",key_id="{h.key_id}",root="{h.root}",'
        f"implausible={implausible}i {h.created_ms}"
    )


def batch_lines(settings: InfluxSettings, pending: PendingBatch) -> bytes:
    """Rebuild a stored batch's lines from its exact bytes (after a restart or a cache miss)."""
    sealed = parse_batch(pending.data)
    intervals, _, _ = decode_records(sealed)
    lines = interval_lines(
        settings.measurement, pending.gateway, pending.seq,
        ((index, record, pending.issues.get(index, ())) for index, record in intervals),
    )  # fmt: skip
    lines.append(batch_line(settings.batch_measurement, sealed.header, pending.verdict, len(pending.issues)))
    return lines_bytes(lines)


def lines_bytes(lines: Iterable[str]) -> bytes:
    """Lines joined into a request body. A lone surrogate (which JSON allows and a signed record
    may carry) cannot be UTF-8: it is written as a backslash escape rather than fail the batch."""
    return "".join([line + "\n" for line in lines]).encode("utf-8", "backslashreplace")


@dataclass
class WriterStats:
    points_written: int = 0
    requests: int = 0
    retries: int = 0
    parked_batches: int = 0
    batches_written: int = 0


class InfluxWriter:
    """Drains the store's InfluxDB outbox into one database, forever (cancel to stop)."""

    def __init__(
        self,
        store: InfluxOutbox,
        client: InfluxV1Client,
        settings: InfluxSettings,
        *,
        clock: Clock,
        run_db: RunDb,
        run_read: RunDb | None = None,
        on_progress: Callable[[], None] = lambda: None,
        cache_limit: int = 256,
    ) -> None:
        self._store = store
        self._client = client
        self._settings = settings
        self._clock = clock
        self._run_db = run_db
        self._run_read = run_read or run_db  # reads need not queue behind ingest's commits
        self._writing: set[int] = set()  # taken, being written to InfluxDB
        self._marking: set[int] = set()  # written, being marked in the store
        self._mark_tasks: set[asyncio.Task[None]] = set()
        self._on_progress = on_progress
        self._wakeup = asyncio.Event()
        self._cache: dict[int, bytes] = {}
        self._cache_limit = cache_limit
        self.stats = WriterStats()

    def offer(self, batch_id: int, lines: bytes) -> None:
        """Lines ingest already built for a just-stored batch (saves re-decoding it); none (b""):
        only a wake-up, the lines are rebuilt from the store."""
        if lines and len(self._cache) < self._cache_limit:
            self._cache[batch_id] = lines
        self._wakeup.set()

    def notify(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        """Write pending batches as they come, ``concurrent_writes`` requests at a time (the
        server parses one request while the next travels); sleep until ingest stores more."""
        if self._settings.create_database:
            await self._retrying("create database", self._client.create_database)
        writes: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wakeup.clear()
                for task in [t for t in writes if t.done()]:
                    writes.discard(task)
                    task.result()  # a bug in a write ends the writer, loudly
                if len(writes) < self._settings.concurrent_writes:
                    bodies = await self._take()
                    if bodies:
                        writes.add(asyncio.create_task(self._write(bodies), name="aggregator-influx-write"))
                        continue
                await self._wakeup.wait()  # ingest stored more, or a write finished
        finally:
            for task in (*writes, *self._mark_tasks):
                task.cancel()  # unmarked batches are written again: the same points

    async def _take(self) -> dict[int, bytes]:
        """The next pending batches' lines (up to ``max_batches_per_write``), now in flight."""
        known = set(self._cache)  # only _take takes from the cache: these stay in it
        busy = self._writing | self._marking
        pending: list[PendingBatch] = await self._run_read(
            self._store.pending_influx, self._settings.max_batches_per_write, known, busy
        )
        # Written meanwhile: not again (a point written twice is harmless, only wasted).
        pending = [p for p in pending if p.id not in self._writing and p.id not in self._marking]
        # Lines offered meanwhile are taken too; a batch in `known` is still cached (no data).
        bodies = {p.id: self._cache.pop(p.id, None) or self._lines(p) for p in pending}
        good = {i: b for i, b in bodies.items() if b is not None}
        for i in set(bodies) - set(good):
            await self._park(i, "a point cannot be encoded as line protocol (see the log)")
        self._writing.update(good)
        return good

    async def _write(self, good: dict[int, bytes]) -> None:
        try:
            try:
                await self._retrying("write", self._client.write, b"".join(good.values()), "ms")
            except InfluxRejected as exc:
                await self._isolate(good, exc)
            else:
                await self._written(good)
        finally:
            self._writing.difference_update(good)  # now marked, marking or parked
            self._wakeup.set()
            self._on_progress()

    def _lines(self, p: PendingBatch) -> bytes | None:
        try:
            return batch_lines(self._settings, p)
        except LineProtocolError as exc:
            log.error("batch %s#%s: cannot write to InfluxDB: %s", p.gateway, p.seq, exc)
            return None

    async def _written(self, bodies: Mapping[int, bytes]) -> None:
        """Count the write and mark it in the store in the background (the store's write
        thread may be busy with ingest's commits): the next write does not wait for it, and
        batches being marked are not read as pending meanwhile."""
        self.stats.requests += 1
        self.stats.batches_written += len(bodies)
        self.stats.points_written += sum(b.count(b"\n") for b in bodies.values())
        ids = list(bodies)
        self._marking.update(ids)
        task = asyncio.create_task(self._mark(ids), name="aggregator-influx-mark")
        self._mark_tasks.add(task)
        task.add_done_callback(self._mark_tasks.discard)

    async def _mark(self, ids: list[int]) -> None:
        try:
            await self._run_db(self._store.mark_influx, ids)
        except StoreError as exc:  # the points are in InfluxDB; they will be written again
            log.error("InfluxDB outbox: %d written batches not marked: %s", len(ids), exc)
        finally:
            self._marking.difference_update(ids)
        self._on_progress()

    async def _isolate(self, bodies: Mapping[int, bytes], exc: InfluxRejected) -> None:
        """The server refused the data: write batch by batch, park those it still refuses."""
        if len(bodies) == 1:
            [batch_id] = bodies
            await self._park(batch_id, f"HTTP {exc.status_code}: {exc.server_message}")
            return
        for batch_id, body in bodies.items():
            try:
                await self._retrying("write", self._client.write, body, "ms")
            except InfluxRejected as one:
                await self._park(batch_id, f"HTTP {one.status_code}: {one.server_message}")
            else:
                await self._written({batch_id: body})

    async def _park(self, batch_id: int, reason: str) -> None:
        log.error("InfluxDB outbox: batch id %s parked: %s", batch_id, reason)
        await self._run_db(self._store.mark_influx, [batch_id], error=reason[:500])
        self.stats.parked_batches += 1

    async def _retrying(self, what: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Retry while the server is unavailable (or auth/database is being fixed)."""
        backoff, attempt = Backoff(self._settings.retry_initial_s, self._settings.retry_max_s), 0
        while True:
            try:
                return await call(*args)
            except InfluxDatabaseNotFound as exc:
                problem: Exception = exc
                if self._settings.create_database:
                    await self._create_database_quietly()
            except (InfluxUnavailable, InfluxAuthError) as exc:
                problem = exc
            self.stats.retries += 1
            delay, attempt = backoff.delay(attempt), attempt + 1
            log.warning("InfluxDB %s failed (%s); retrying in %.1f s", what, problem, delay)
            await self._clock.sleep(delay)

    async def _create_database_quietly(self) -> None:
        try:
            await self._client.create_database()
        except (InfluxUnavailable, InfluxRejected) as exc:
            log.warning("InfluxDB: cannot create database %s: %s", self._settings.database, exc)
