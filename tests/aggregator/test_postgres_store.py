"""What is particular to the PostgreSQL evidence store: it answers as the SQLite store does
for the same history (every reader, row ids included), it has every method SQLite's has,
migrations, the durability check, connections the server dropped, and its settings (TLS
verify-full against the test cluster's CA, the password from a 0600 file)."""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aggregator.config import PostgresSettings, StoreSettings, parse_config
from aggregator.errors import ConfigError, StoreConflict, StoreError
from aggregator.registry import GatewayRegistry
from aggregator.store import Rejection, SQLiteEvidenceStore, open_evidence_store
from aggregator.store.postgres import PostgresEvidenceStore
from aggregator.store.postgres_schema import SCHEMA_VERSION
from aggregator.store.protocols import ChainSessionStore, SessionStore
from evidence.keylist import AggregatorKey
from testbed.servers import PrivatePostgres
from tests.aggregator.ingest_support import STEP, T0, SimGateway
from tests.aggregator.store_support import AnyStore, accepted

pytestmark = pytest.mark.integration


def test_it_has_every_method_of_the_sqlite_store_with_the_same_signature() -> None:
    """The modules still typed with SQLite's class (keys, push, packages, the API) get this one
    from ``open_evidence_store``: every public method they could call must be there."""
    methods = inspect.getmembers(SQLiteEvidenceStore, inspect.isfunction)
    public = {name for name, _ in methods if not name.startswith("_")}
    missing = sorted(n for n in public if not hasattr(PostgresEvidenceStore, n))
    # Imported sessions (SessionStore) and chain sessions (ChainSessionStore) are SQLite only so
    # far: their callers open the store through aggregator.sessions.intake.open_session_store
    # and ingest's isinstance check, which refuse PostgreSQL with a message, not a traceback.
    sqlite_only = {n for p in (SessionStore, ChainSessionStore) for n in vars(p) if not n.startswith("_")}
    sqlite_only.add("session_imports")  # the sessions CLI's list, behind the same refusal
    assert sorted(set(missing) - sqlite_only) == []
    for name in sorted(public - set(missing)):
        want = inspect.signature(getattr(SQLiteEvidenceStore, name))
        got = inspect.signature(getattr(PostgresEvidenceStore, name))
        assert list(got.parameters) == list(want.parameters), name
        assert [p.default for p in got.parameters.values()] == [p.default for p in want.parameters.values()]


def _history() -> list[Callable[[AnyStore], object]]:
    """A store's life in steps: enrolments, appends, a gap filled late, a drop, a conflicting
    group, counters, a key rotation, rejections (repeats, over the cap), the outbox, keys and
    checkpoints. Batches are sealed once, so both stores get the same bytes."""
    a, b = SimGateway("gw-a"), SimGateway("gw-b", meters=("ev-01",))
    a1, a2, a3, a4, a5 = (accepted(a) for _ in range(5))
    b1, b2 = accepted(b), accepted(b)
    key = ("pv-01", "energy_import")
    steps: list[Callable[[AnyStore], object]] = [
        lambda s: GatewayRegistry(s).enrol(a.enrolment(), at_ms=1),
        lambda s: GatewayRegistry(s).enrol(b.enrolment(rated_kw=7.0), at_ms=2),
        lambda s: s.store_group([a1, dataclasses.replace(a2, counters={key: (T0 + 4 * STEP, 5.0)}), b1]),
        lambda s: s.store_batch(dataclasses.replace(a4, verdict="gap", missing=(3,))),
        lambda s: s.store_group([b1, b2, dataclasses.replace(a3, verdict="reorder", received_ms=50)]),
        lambda s: s.store_batch(dataclasses.replace(a5, dropped_seqs=(9,), counters={key: (T0, 1.0)})),
        lambda s: s.record_rejection(Rejection("gw-a", 6, "c" * 64, "bad_signature", "x", 60, b"junk")),
        lambda s: s.record_rejection(Rejection("gw-a", 6, "c" * 64, "bad_signature", "x", 61, b"junk")),
        lambda s: s.store_group([], [Rejection(None, None, None, "malformed", "y", 62, b"?", size=99)]),
        lambda s: s.record_rejection(Rejection("gw-a", 7, None, "fork", "z", 63, b"more")),
        lambda s: s.record_rejection(Rejection("gw-a", 8, None, "fork", "w", 64, b"over the cap")),
        lambda s: s.mark_influx([1, 2]),
        lambda s: s.mark_influx([4], error="HTTP 400: bad"),
        lambda s: s.revoke_key("gw-b", s.gateways()[1].keys[0].key_id, 70),
        lambda s: s.add_aggregator_key(AggregatorKey("k1", "p1", 0)),
        lambda s: s.add_aggregator_key(AggregatorKey("k2", "p2", 80, endorsement="e"), retire="k1"),
        lambda s: s.save_checkpoint(4, 90, b"cp"),
    ]
    return steps


def _answers(s: AnyStore) -> dict[str, object]:
    gws = ("gw-a", "gw-b", "gw-none")
    meters = ["pv-01", "hm-01", "ev-01"]
    return {
        "gateways": s.gateways(), "meters": s.meters(), "registry_version": s.registry_version(),
        "chains": [s.chain_links(g) for g in gws], "heads": [s.highest_seq(g) for g in gws],
        "log": s.batch_log(), "count": s.batch_count(), "verdicts": s.verdict_counts(),
        "gaps": s.gaps(), "rejections": s.rejections(), "overflow": s.rejection_overflow(),
        "rejection_counts": s.rejection_counts(), "counters": [s.counter_state(g) for g in gws],
        "backlog": s.influx_backlog(), "pending": s.pending_influx(100, known={3}),
        "intervals": list(s.attested_after()),
        "pv": list(s.attested_after(meters=["pv-01"], start=T0 + STEP, end=T0 + 7 * STEP)),
        "latest": [s.latest_batch_id(g) for g in gws],
        "marks": [s.evidence_mark(g, meters, T0 + 2 * STEP, T0 + 3 * STEP) for g in gws],
        "reach": [s.evidence_reach(g, meters) for g in gws],
        "bytes": [s.batch_bytes("gw-a", n) for n in range(7)], "created": s.batch_created_ms("gw-a", 4),
        "keys": s.aggregator_keys(), "checkpoints": s.checkpoints(),
    }  # fmt: skip


def _outcome(result: object) -> object:
    """A step's result, a conflict as its kind (its message names the store)."""
    if isinstance(result, list):
        return [_outcome(r) for r in result]
    return "conflict" if isinstance(result, StoreConflict) else result


def test_the_same_history_gets_the_same_answers_from_both_stores(
    tmp_path: Path, postgres_db: dict[str, Any]
) -> None:
    steps = _history()
    lite = SQLiteEvidenceStore(tmp_path / "e.sqlite3", rejection_rows_per_source=2)
    pg = PostgresEvidenceStore(postgres_db, rejection_rows_per_source=2)
    try:
        for n, step in enumerate(steps):
            assert _outcome(step(pg)) == _outcome(step(lite)), f"step {n}"  # conflicts and ids alike
        want, got = _answers(lite), _answers(pg)
    finally:
        lite.close()
        pg.close()
    assert len(want["intervals"]) == 5 * 4 + 2  # type: ignore[arg-type]  (b#2 fell with b#1's conflict)
    for name in want:
        assert got[name] == want[name], name


def test_migrations_run_once_and_a_newer_schema_is_refused(postgres_db: dict[str, Any]) -> None:
    opened: list[PostgresEvidenceStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresEvidenceStore(postgres_db))
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]  # first opens race on a fresh database
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in opened:
        store.close()
    assert errors == [] and len(opened) == 3
    with psycopg.connect(**postgres_db, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)
        ]
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        PostgresEvidenceStore(postgres_db)


def test_a_server_that_would_not_flush_commits_is_refused(postgres_db: dict[str, Any]) -> None:
    with psycopg.connect(**postgres_db, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{postgres_db["dbname"]}" SET synchronous_commit = off')
    with pytest.raises(StoreError, match="synchronous_commit is off"):
        PostgresEvidenceStore(postgres_db)


def test_connections_the_server_dropped_are_replaced(postgres_db: dict[str, Any]) -> None:
    store = PostgresEvidenceStore(postgres_db)
    gw = SimGateway("gw-d")
    try:
        store.store_batch(accepted(gw))
        with psycopg.connect(**postgres_db, autocommit=True) as admin:  # as a server restart would
            [(ended,)] = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        assert ended >= 1
        assert store.batch_count() == 1  # a read: once more on a new connection
        with psycopg.connect(**postgres_db, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert isinstance(store.store_batch(accepted(gw)), int)  # dropped before its commit: retried
        assert [s for s, _, _ in store.chain_links("gw-d")] == [1, 2]
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.batch_count()


def _settings(postgres: PrivatePostgres, dbname: str, tmp_path: Path, **changes: Any) -> StoreSettings:
    secret = tmp_path / "pg-password"
    secret.write_text(postgres.password + "\n")
    secret.chmod(0o600)
    assert postgres.tls is not None
    pg = {"host": "127.0.0.1", "port": postgres.port, "dbname": dbname, "user": postgres.user,
          "password": {"file": str(secret)}, "sslrootcert": str(postgres.tls.ca_file), **changes}  # fmt: skip
    return StoreSettings.model_validate({"path": str(tmp_path / "local.sqlite3"), "postgres": pg})


def test_the_config_opens_it_over_tls_verifying_the_server(
    postgres: PrivatePostgres, postgres_db: dict[str, Any], tmp_path: Path
) -> None:
    store = open_evidence_store(_settings(postgres, postgres_db["dbname"], tmp_path))
    assert isinstance(store, PostgresEvidenceStore)
    try:
        with store._pool.borrow() as (conn, _):
            assert conn.info.pgconn.ssl_in_use and conn.info.parameter_status("application_name")
    finally:
        store.close()
    other_ca = tmp_path / "other-ca.crt"  # a server the CA did not sign is refused
    from puhui.pki import make_ca

    make_ca(tmp_path / "other")
    other_ca.write_bytes((tmp_path / "other" / "ca.crt").read_bytes())
    wrong = _settings(postgres, postgres_db["dbname"], tmp_path, sslrootcert=str(other_ca))
    with pytest.raises(StoreError, match=r"postgresql://puhui@127\.0\.0\.1:\d+/t.*certificate verify failed"):
        open_evidence_store(wrong)
    plain = _settings(postgres, postgres_db["dbname"], tmp_path, sslrootcert=None, insecure=True)
    with pytest.raises(StoreError, match="no encryption"):  # the server takes TLS only
        open_evidence_store(plain)
    readable = _settings(postgres, postgres_db["dbname"], tmp_path)
    (tmp_path / "pg-password").chmod(0o644)
    with pytest.raises(StoreError, match=r"store\.postgres\.password\.file: .* others may read it"):
        open_evidence_store(readable)


def test_postgres_settings_are_closed_and_keep_secrets_out_of_the_file(tmp_path: Path) -> None:
    base = {"mqtt": {"insecure": True}, "influx": {"url": "http://127.0.0.1:8086", "database": "p"},
            "key_file": "k.pem"}  # fmt: skip
    pg = {"host": "db", "dbname": "puhui", "user": "agg", "sslrootcert": "ca.crt", "password": {"file": "pw"}}
    store = {"path": "e.sqlite3", "postgres": pg}
    config = parse_config({**base, "store": store}, "a.yaml").resolved(tmp_path)
    assert config.store.postgres == PostgresSettings(
        host="db", dbname="puhui", user="agg", sslrootcert=tmp_path / "ca.crt",
        password={"file": str(tmp_path / "pw")},  # type: ignore[arg-type]
    )  # fmt: skip
    for bad, says in [
        ({**pg, "password": "hunter2"}, "store.postgres.password"),
        ({**pg, "sslrootcert": None}, "needs TLS"),
        ({**pg, "insecure": True}, "sslrootcert is for TLS"),
        ({**pg, "sslmode": "prefer"}, "store.postgres.sslmode"),
        ({**pg, "hots": "db"}, "store.postgres.hots"),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_config({**base, "store": {"path": "e.sqlite3", "postgres": bad}}, "a.yaml")


def test_postgresql_killed_mid_stream_keeps_every_batch_it_acknowledged(
    fresh_postgres: Callable[..., PrivatePostgres],
) -> None:
    """A writer stores batch after batch (as ingest would, resending what failed) while the
    server is SIGKILLed three times: every store_group that answered an id is there after
    the restarts, with its exact bytes; a failure is an error, never an id."""
    pg = fresh_postgres()
    pg.create_database("evidence")
    store = PostgresEvidenceStore(pg.conninfo("evidence"))
    gw = SimGateway("gw-x", meters=("pv-01",))
    batches = [accepted(gw, steps=1) for _ in range(120)]
    answered: dict[int, int | str] = {}  # seq -> id, or "conflict": stored by an attempt that lost its answer
    failures: list[StoreError] = []
    progressed, failed, restarted = threading.Event(), threading.Event(), threading.Event()

    def write() -> None:
        n = 0
        while n < len(batches):
            try:
                [result] = store.store_group([batches[n]])
            except StoreError as exc:
                failures.append(exc)
                failed.set()
                restarted.wait(30)
                continue
            answered[batches[n].seq] = result if isinstance(result, int) else "conflict"
            n += 1
            progressed.set()

    writer = threading.Thread(target=write, name="evidence-writer")
    writer.start()
    try:
        for _ in range(3):
            progressed.clear()
            assert progressed.wait(30), "no batch stored"
            restarted.clear()
            failed.clear()
            pg.kill()
            assert failed.wait(30), "the writer did not notice the dead server"
            pg.start()
            restarted.set()
    finally:
        restarted.set()
        writer.join(60)
    try:
        assert not writer.is_alive() and len(answered) == len(batches) and len(failures) >= 3
        assert [s for s, _, _ in store.chain_links("gw-x")] == [b.seq for b in batches]
        for b in batches:
            assert store.batch_bytes("gw-x", b.seq) == b.data
        ids = [i for i in answered.values() if isinstance(i, int)]
        assert {i for (i,) in _ids(pg)} >= set(ids)
    finally:
        store.close()


def _ids(pg: PrivatePostgres) -> list[tuple[int]]:
    with psycopg.connect(**pg.conninfo("evidence")) as conn:
        return conn.execute("SELECT id FROM batches").fetchall()
