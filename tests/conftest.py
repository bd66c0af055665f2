"""Fixtures shared by the whole suite: private real servers and the leak guard.

Servers (real Debian binaries on free 127.0.0.1 ports, see :mod:`testbed.servers`):

- ``mosquitto`` (session): a running :class:`PrivateMosquitto`; do not stop it.
- ``influxdb`` (session): a running :class:`PrivateInfluxDB`; do not stop it.
- ``influx_db`` (function, async): an open :class:`InfluxV1Client` on a fresh, uniquely
  named database of the session server, dropped afterwards.
- ``postgres`` (session): a running :class:`PrivatePostgres` (TLS with a throwaway CA from
  :mod:`puhui.pki`, SCRAM password); do not stop it. ``postgres_db`` (function): the
  ``psycopg.connect`` arguments of a fresh database on it, dropped afterwards.

Evidence stores, parametrised over the backends (``sqlite``, ``postgres``): ``open_store``
(function): ``open_store(**options)`` opens the test's store, again after a close (the same
SQLite file or PostgreSQL database); ``evidence_store`` (function): one open store.
- ``fresh_mosquitto`` / ``fresh_influxdb`` (function): factories that start a private
  server of the test's own (free to stop, kill and restart); closed after the test, their
  work directories under ``tmp_path`` are kept for post-mortems. ``fresh_postgres`` likewise
  (its work directory is temporary: see the fixture).

Leak guard (autouse): a test fails at teardown when it leaves behind threads, child
processes, or, for coroutine tests, asyncio tasks. Threads and tasks get a short grace
period to finish; leaked processes and tasks are killed/cancelled after being reported.

Area conftests (``tests/<area>/conftest.py``) add their own fixtures on top of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from aggregator.influx import InfluxV1Client
from aggregator.store import SQLiteEvidenceStore
from aggregator.store.postgres import PostgresEvidenceStore
from puhui.pki import issue_server, make_ca
from testbed.servers import PostgresTls, PrivateInfluxDB, PrivateMosquitto, PrivatePostgres, PrivateServer

pytest_plugins = ["pytester"]

THREAD_GRACE = 2.0  # seconds a new thread may take to finish after its test
PROCESS_GRACE = 2.0
TASK_GRACE = 1.0
LOOP_SCOPES = ("function", "class", "module", "package", "session")

_EXECUTOR_THREAD = re.compile(r"asyncio_\d+")
_session_servers: list[PrivateServer] = []
_database_numbers = itertools.count()


# -- servers ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[PrivateMosquitto]:
    """The session's Mosquitto broker (anonymous, no persistence)."""
    with PrivateMosquitto() as server:
        _session_servers.append(server)
        yield server
        _session_servers.remove(server)


@pytest.fixture(scope="session")
def influxdb() -> Iterator[PrivateInfluxDB]:
    """The session's InfluxDB 1.x server; tests use their own databases on it."""
    with PrivateInfluxDB() as server:
        _session_servers.append(server)
        yield server
        _session_servers.remove(server)


@pytest_asyncio.fixture
async def influx_db(
    influxdb: PrivateInfluxDB, request: pytest.FixtureRequest
) -> AsyncIterator[InfluxV1Client]:
    """A client on a new database named after the test, dropped at teardown."""
    slug = re.sub(r"\W+", "_", request.node.name)[:40]
    name = f"t{os.getpid()}_{next(_database_numbers)}_{slug}"
    async with InfluxV1Client(influxdb.url, name) as client:
        await client.create_database()
        yield client
        await client.drop_database()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """The session's PostgreSQL cluster; tests use their own databases on it (``postgres_db``)."""
    ca = make_ca(tmp_path_factory.mktemp("postgres-pki"), name="puhui test PostgreSQL CA")
    server = issue_server(ca)
    tls = PostgresTls(server.cert_path, server.key_path, ca.layout.ca_cert)
    with PrivatePostgres(tls=tls) as pg:
        _session_servers.append(pg)
        yield pg
        _session_servers.remove(pg)


@pytest.fixture
def postgres_db(postgres: PrivatePostgres, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """``psycopg.connect`` keyword arguments of a new database named after the test, dropped
    at teardown (its sessions ended first)."""
    slug = re.sub(r"\W+", "_", request.node.name)[:40].lower()
    name = f"t{os.getpid()}_{next(_database_numbers)}_{slug}"
    postgres.create_database(name)
    yield postgres.conninfo(name)
    postgres.drop_database(name)


@pytest.fixture
def fresh_postgres(tmp_path: Path) -> Iterator[Callable[..., PrivatePostgres]]:
    """Factory: ``fresh_postgres(**options)`` -> a started cluster of the test's own (TLS, free
    to kill and restart), closed after the test. Its work directory is a temporary one, not
    under ``tmp_path``: run as root, the cluster runs as ``postgres``, who cannot enter it."""
    started: list[PrivatePostgres] = []
    ca = make_ca(tmp_path / "postgres-pki", name="puhui test PostgreSQL CA")
    server = issue_server(ca)

    def start(**options: Any) -> PrivatePostgres:
        pg = PrivatePostgres(tls=PostgresTls(server.cert_path, server.key_path, ca.layout.ca_cert), **options)
        started.append(pg)
        return pg.start()

    try:
        yield start
    finally:
        for pg in started:
            pg.close()


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``open_store(**options)``: the test's evidence store, opened anew at each call; all
    closed at teardown."""
    opened: list[Any] = []
    conninfo: dict[str, Any] | None = None
    if request.param == "postgres":
        conninfo = request.getfixturevalue("postgres_db")

    def open_(**options: Any) -> Any:
        store: SQLiteEvidenceStore | PostgresEvidenceStore
        if conninfo is None:
            store = SQLiteEvidenceStore(tmp_path / "e.sqlite3", **options)
        else:
            store = PostgresEvidenceStore(conninfo, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def evidence_store(open_store: Callable[..., Any]) -> Any:
    """The test's evidence store (SQLite or PostgreSQL), open."""
    return open_store()


def _server_factory(kind: type[PrivateServer], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    started: list[PrivateServer] = []

    def start(**options: Any) -> PrivateServer:
        server = kind(tmp_path / f"{kind.binary}-{len(started)}", **options)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.close()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Callable[..., PrivateMosquitto]]:
    """Factory: ``fresh_mosquitto(persistence=False, extra_config="")`` -> started broker."""
    yield from _server_factory(PrivateMosquitto, tmp_path)


@pytest.fixture
def fresh_influxdb(tmp_path: Path) -> Iterator[Callable[..., PrivateInfluxDB]]:
    """Factory: ``fresh_influxdb(extra_config="")`` -> started InfluxDB server."""
    yield from _server_factory(PrivateInfluxDB, tmp_path)


# -- leak guard: threads and processes (every test) -------------------------------------


def _session_server_pids() -> set[int]:
    """The session servers and their own children (PostgreSQL's backends and workers come
    and go with the connections of any test)."""
    pids = {server.pid for server in _session_servers if server.pid is not None}
    for pid in list(pids):
        with contextlib.suppress(psutil.Error):
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return pids


def _child_processes() -> dict[int, psutil.Process]:
    children = psutil.Process().children(recursive=True)
    return {proc.pid: proc for proc in children}


def _leaked_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    deadline = time.monotonic() + THREAD_GRACE
    # Default-executor workers (asyncio_N) live as long as their event loop: a function
    # loop joins them when it closes, before this check; a module or session loop keeps
    # them for its later tests, which is not a leak of the test.
    new = [t for t in threading.enumerate() if t not in before and not _EXECUTOR_THREAD.fullmatch(t.name)]
    for thread in new:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in new if t.is_alive()]


def _leaked_processes(before: set[int]) -> list[psutil.Process]:
    new = [p for pid, p in _child_processes().items() if pid not in before]
    new = [p for p in new if p.pid not in _session_server_pids()]
    _, alive = psutil.wait_procs(new, timeout=PROCESS_GRACE) if new else ([], [])
    return list(alive)


def _describe_process(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} ({proc.status()}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid}"


@pytest.fixture(autouse=True)
def _leak_guard() -> Iterator[None]:
    """Fail the test at teardown if it left threads or child processes running."""
    threads_before = set(threading.enumerate())
    processes_before = set(_child_processes())
    yield
    problems = []
    threads = _leaked_threads(threads_before)
    if threads:
        names = ", ".join(f"{t.name!r} (target {getattr(t, '_target', None)!r})" for t in threads)
        problems.append(f"leaked {len(threads)} thread(s): {names}")
    processes = _leaked_processes(processes_before)
    if processes:
        described = "; ".join(_describe_process(p) for p in processes)
        for proc in processes:  # clean up before failing, so the next test starts clean
            proc.kill()
        psutil.wait_procs(processes, timeout=PROCESS_GRACE)
        problems.append(f"leaked {len(processes)} child process(es), killed: {described}")
    if problems:
        pytest.fail("leak guard: " + "\n".join(problems), pytrace=False)


# -- leak guard: asyncio tasks (coroutine tests only) -----------------------------------


def _make_task_guard(loop_scope: str) -> Any:
    async def guard() -> AsyncIterator[None]:
        before = asyncio.all_tasks()
        yield
        for _ in range(3):  # let tasks that were just cancelled or woken finish
            await asyncio.sleep(0)
        current = asyncio.current_task()
        leaked = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
        if leaked:
            _, leaked = await asyncio.wait(leaked, timeout=TASK_GRACE)
        if leaked:
            names = ", ".join(sorted(f"{t.get_name()!r} ({t.get_coro()!r})" for t in leaked))
            for task in leaked:
                task.cancel()
            await asyncio.wait(leaked, timeout=TASK_GRACE)
            pytest.fail(f"leak guard: leaked {len(leaked)} asyncio task(s): {names}", False)

    scope: Any = loop_scope  # one of LOOP_SCOPES
    return pytest_asyncio.fixture(guard, loop_scope=scope, name=f"_task_guard_{loop_scope}")


for _scope in LOOP_SCOPES:
    globals()[f"_task_guard_{_scope}"] = _make_task_guard(_scope)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every coroutine test the task guard that runs in the test's own event loop.

    It is placed right after ``_leak_guard`` so it is set up before, and torn down after,
    the test's other fixtures, and before the loop closes.
    """
    default_scope = config.getini("asyncio_default_test_loop_scope") or "function"
    for item in items:
        if not pytest_asyncio.is_async_test(item):
            continue
        marker = item.get_closest_marker("asyncio")
        scope = marker and (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope"))
        name = f"_task_guard_{scope or default_scope}"
        names = item.fixturenames
        if name not in names:
            position = names.index("_leak_guard") + 1 if "_leak_guard" in names else 0
            names.insert(position, name)


# Names a pytester conftest imports to run the guard on its own inner tests.
LEAK_GUARD_NAMES = (
    "_leak_guard",
    *(f"_task_guard_{scope}" for scope in LOOP_SCOPES),
    "pytest_collection_modifyitems",
    "mosquitto",
)
