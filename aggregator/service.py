"""The running aggregator: ingest and the InfluxDB writer in one TaskGroup.

::

    async with Aggregator(config) as agg:      # opens the store, starts both tasks
        async with asyncio.timeout(30):
            await agg.wait_for(lambda a: a.ingest.stats.stored >= 10)

Tasks: ``aggregator-ingest`` (MQTT -> verify -> store -> ack) and ``aggregator-influx``
(store outbox -> InfluxDB). Store writes run on one dedicated thread (``puhui-store``):
SQLite's commit and fsync then overlap with verification on the event loop, and the single
thread serialises writes. The writer's outbox reads run on another (``puhui-store-read``,
the store's reader connection), so they do not wait behind ingest's group commits.
Leaving the context cancels and awaits both tasks, then closes the InfluxDB client, the
threads and the store. A task that fails
(a bug, a broken store) ends the group and the error propagates from ``__aexit__``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aggregator.config import AggregatorConfig
from aggregator.influx import InfluxV1Client
from aggregator.influx_writer import InfluxWriter
from aggregator.ingest import BatchIngest
from aggregator.keys import register_current
from aggregator.programme.leader import run_as_leader
from aggregator.programme.schedule import StatementScheduler, open_scheduler
from aggregator.push.pusher import Pusher
from aggregator.registry import GatewayRegistry
from aggregator.store import open_evidence_store
from aggregator.store.postgres import Leadership, PostgresEvidenceStore
from aggregator.store.sqldb import open_programme_db

if TYPE_CHECKING:
    from aggregator.store import AnyEvidenceStore
from common.clock import Clock, SystemClock
from common.tls import client_context, read_secret
from evidence.keys import GatewayKey, load_private_key

log = logging.getLogger(__name__)


def tune_gc() -> None:
    """For a long-running ingest process, once started: everything loaded so far (modules,
    models) moves out of the collector's sight (``gc.freeze``), and young objects are
    collected every 10,000 allocations instead of 700. Ingest allocates a few tracked objects
    per interval record and makes almost no cycles, so the default collected every few
    hundred records; this took 10-15 % off ingest's CPU (bench_ingest, noisy machine)."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class StoreThreads:
    """The store's two threads: ``run_db`` (writes, serialised) and ``run_read`` (the writer's
    outbox reads). A context manager: leaving it waits for the calls under way."""

    def __init__(self) -> None:
        self._write = ThreadPoolExecutor(max_workers=1, thread_name_prefix="puhui-store")
        self._read = ThreadPoolExecutor(max_workers=1, thread_name_prefix="puhui-store-read")

    async def run_db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write, functools.partial(fn, *args, **kwargs))

    async def run_read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read, functools.partial(fn, *args, **kwargs))

    def __enter__(self) -> Self:
        return self

    def close(self) -> None:
        self._write.shutdown(wait=True)
        self._read.shutdown(wait=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


class Aggregator:
    """Ingest + InfluxDB writer over one evidence store, as an async context manager."""

    def __init__(
        self, config: AggregatorConfig, *, clock: Clock | None = None, key: GatewayKey | None = None
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._key = key
        self._stack = AsyncExitStack()
        self._tasks: asyncio.TaskGroup | None = None
        self._changed = asyncio.Event()  # replaced by a fresh one at every change
        self._running: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()
        self.store: AnyEvidenceStore
        self.registry: GatewayRegistry
        self.ingest: BatchIngest
        self.writer: InfluxWriter
        self.scheduler: StatementScheduler | None = None  # with a programme section
        self.pusher: Pusher | None = None  # pushes statements to the platforms of config.push
        self.leadership: Leadership | None = None  # over PostgreSQL: who runs scheduler and pusher

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        key = self._key or load_private_key(self.config.key_file)
        threads = self._stack.enter_context(StoreThreads())
        run_db, run_read = threads.run_db, threads.run_read

        self.store = open_evidence_store(
            self.config.store, rejection_rows_per_source=self.config.limits.rejection_rows_per_source
        )
        self._stack.callback(self.store.close)
        if isinstance(self.store, PostgresEvidenceStore):  # its InfluxDB claims, again after a restart
            self.store.owner = self.config.mqtt.client_id
        register_current(self.store, key, round(self.clock.now() * 1000))  # the key history starts here
        self.registry = GatewayRegistry(self.store)
        influx = self.config.influx
        client = InfluxV1Client(
            influx.url, influx.database, username=influx.username,
            password=None if influx.password is None else read_secret(influx.password, "influx.password"),
            token=None if influx.token is None else read_secret(influx.token, "influx.token"),
            timeout=influx.timeout_s, retention_policy=influx.retention_policy,
            tls=None if influx.tls is None else client_context(influx.tls, "influx.tls"),
        )  # fmt: skip
        await self._stack.enter_async_context(client)
        self.writer = InfluxWriter(
            self.store, client, influx, clock=self.clock, run_db=run_db, run_read=run_read,
            on_progress=self._progress,
        )  # fmt: skip
        self.ingest = BatchIngest(
            self.config, store=self.store, registry=self.registry, key=key, clock=self.clock,
            run_db=run_db, on_stored=self.writer.offer, on_progress=self._progress,
        )  # fmt: skip
        programme = self.config.programme
        if programme is not None:  # closed after the tasks stopped (a look under way finishes first)
            programme_db = open_programme_db(self.config.store)  # PostgreSQL's, shared by every host
            self._stack.callback(programme_db.close)
            self.scheduler = open_scheduler(
                programme, db=programme_db, evidence=self.store, key=key, clock=self.clock
            )
            self._stack.callback(self.scheduler.close)
        if self.config.push:  # on this process's own evidence store (never a second one: see Pusher)
            pusher = Pusher(self.config, clock=self.clock, evidence=self.store)
            self.pusher = await self._stack.enter_async_context(pusher)
            if self.scheduler is not None:  # signed in the scheduler's thread: wake the pusher in the loop's
                loop = asyncio.get_running_loop()

                def wake() -> None:
                    loop.call_soon_threadsafe(pusher.notify)

                self.scheduler.on_signed = wake
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._stack.push_async_callback(self._cancel_tasks)
        self._running = [
            self._tasks.create_task(
                self.ingest.serve(on_connected=self.connected.set), name="aggregator-ingest"
            ),
            self._tasks.create_task(self.writer.run(), name="aggregator-influx"),
        ]
        named: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        if self.pusher is not None:
            named.append(("aggregator-push", self.pusher.run))
        if self.scheduler is not None and programme is not None:
            scheduler, every_s = self.scheduler, programme.check_every_s
            named.append(("aggregator-statements", lambda: scheduler.run(every_s)))
        jobs = [job for _, job in named]
        if jobs and isinstance(self.store, PostgresEvidenceStore):  # one signer among the aggregators
            leadership = Leadership(self.store)
            self._stack.callback(leadership.release)
            self.leadership = leadership
            self._running.append(self._tasks.create_task(
                run_as_leader(leadership, jobs, clock=self.clock, run_db=run_read), name="aggregator-leader"
            ))  # fmt: skip
        else:
            for name, job in named:
                self._running.append(self._tasks.create_task(job(), name=name))

    async def _cancel_tasks(self) -> None:
        for task in self._running:
            task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    def _progress(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[Aggregator], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked whenever ingest or the writer moved).

        Bound it with ``asyncio.timeout``.
        """
        while not predicate(self):
            await self._changed.wait()

    async def run_forever(self) -> None:
        """Block until cancelled (the tasks run in the group)."""
        await asyncio.Event().wait()
