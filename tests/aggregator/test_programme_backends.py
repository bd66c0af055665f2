"""The programme's stores (statements and ledger, push outbox, units, the API's tokens)
behave alike in SQLite and in PostgreSQL (issue 21), and the database keeps their rules when
two writers race: an interval is credited once, a delivered row stays delivered, a unit id
is taken once."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggregator.api.tokens import Refused, TokenStore
from aggregator.errors import StoreError
from aggregator.methodology.engine import compute
from aggregator.methodology.errors import DoubleClaim
from aggregator.methodology.params import PARAMS_DIR, load_parameter_set
from aggregator.methodology.statements import Statement, issue_statement
from aggregator.methodology.store import StatementFilter, StatementStore
from aggregator.methodology.subject import Period, Subject, Unit
from aggregator.programme.errors import ProgrammeError
from aggregator.programme.units import UnitRegistry
from aggregator.push.outbox import PushOutbox
from aggregator.store import SQLiteEvidenceStore
from aggregator.store.sqldb import Db, PostgresDb, SQLiteDb
from tests.aggregator.api.support import GATEWAY, METERS, START, Populated, populate

DAY = 86_400
PV = load_parameter_set(PARAMS_DIR / "pv-export-mee.yaml")


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    """Two weeks of two meters' statements (four), on three weeks of evidence."""
    return populate(tmp_path_factory.mktemp("backends-seed"), weeks=2, steps=96 * 21, per_batch=96)


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``opener()``: a new connection to the test's programme database (closed at teardown)."""
    conninfo = request.getfixturevalue("postgres_db") if request.param == "postgres" else None
    opened: list[Db] = []

    def open_() -> Db:
        db: Db = SQLiteDb(tmp_path / "programme.sqlite3") if conninfo is None else PostgresDb(conninfo)
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()


@pytest.fixture
def evidence(seed: Populated, tmp_path: Path) -> Iterator[SQLiteEvidenceStore]:
    shutil.copy(seed.db, tmp_path / "evidence.sqlite3")
    store = SQLiteEvidenceStore(tmp_path / "evidence.sqlite3")
    yield store
    store.close()


def _seed_statements(seed: Populated) -> list[Statement]:
    with StatementStore(seed.db) as source:
        return [s for s in (source.get(i) for i in seed.statements) if s is not None]


def _statement(evidence: SQLiteEvidenceStore, seed: Populated, day: int, created_ms: int) -> Statement:
    """A statement of pv-01 for one day of the third (unstated) week."""
    start = START + (14 + day) * DAY
    comp = compute(
        evidence, PV, Subject(GATEWAY, (Unit("roof-1", (METERS[0],)),)), Period(start, start + DAY)
    )
    return issue_statement(comp, seed.aggregator, created_ms=created_ms)


def test_statements_read_back_alike(seed: Populated, opener: Any) -> None:
    statements = _seed_statements(seed)
    with StatementStore(opener()) as store:
        for st in statements:
            store.save(st)
        with pytest.raises(DoubleClaim, match="already stored"):
            store.save(statements[0])
        assert [s.id for s in store.list()] == [s.id for s in sorted(statements, key=_order)]
        for st in statements:
            assert store.document(st.id) == st.to_bytes()
            got = store.get(st.id[:12])  # a unique prefix
            assert got is not None and got.id == st.id
            assert store.status(st.id) == "signed"
        first = statements[0]
        unit = first.body["subject"]["units"][0]["id"]
        period = first.body["period"]
        assert first.id in {s.id for s in store.of_unit(unit, period["start"], period["end"])}
        page = store.page(StatementFilter(gateway=GATEWAY), limit=3)
        rest = store.page(StatementFilter(gateway=GATEWAY), after=_key(page[-1]), limit=10)
        assert [s.id for s in page + rest] == [s.id for s in store.list()]
        run = next(iter(first.credited_runs()))
        assert store.credited_by(first.gateway, run[0], run[1], run[2]) == first.id


def _order(st: Statement) -> tuple[int, str, str]:
    return (st.body["period"]["start"], st.gateway, st.id)


def _key(s: Any) -> tuple[int, str, str]:
    return (s.period_start, s.gateway, s.id)


def test_two_writers_racing_credit_an_interval_once(
    seed: Populated, opener: Any, evidence: SQLiteEvidenceStore
) -> None:
    """Two statements over the same intervals (signed apart), saved at once by two
    connections (two aggregators): one is stored, the other refused; every round."""
    stores = [StatementStore(opener()), StatementStore(opener())]
    try:
        for day in range(4):
            pair = [_statement(evidence, seed, day, created_ms=1000 + k) for k in range(2)]
            assert pair[0].id != pair[1].id
            outcome: list[str] = []
            go = threading.Barrier(2)

            threads = [
                threading.Thread(target=_save, args=(s, st, go, outcome))
                for s, st in zip(stores, pair, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcome) == ["refused", "stored"], (day, outcome)
        assert len(stores[0].list()) == 4
    finally:
        for s in stores:
            s.close()


def _save(store: StatementStore, st: Statement, go: threading.Barrier, outcome: list[str]) -> None:
    go.wait()
    try:
        store.save(st)
        outcome.append("stored")
    except DoubleClaim:
        outcome.append("refused")


def test_push_outbox_alike(seed: Populated, opener: Any) -> None:
    statements = sorted(_seed_statements(seed), key=lambda s: (s.body["created_ms"], s.id))
    db = opener()
    with StatementStore(db) as store:
        for st in statements:
            store.save(st)
    ids = [s.id for s in statements]
    with PushOutbox(db) as outbox, PushOutbox(opener()) as other:  # two pushers' views
        assert outbox.owed("city", 10) == ids  # creation order
        outbox.failed("city", ids[0], at_ms=1, next_ms=2, error="HTTP 503", http_status=503)
        other.delivered("city", ids[1], at_ms=3, http_status=200)
        outbox.failed("city", ids[1], at_ms=4, next_ms=5, error="late", http_status=None)  # stays delivered
        outbox.refused("city", ids[2], at_ms=6, http_status=422, error="no")
        other.held("city", ids[3], at_ms=7, error="does not verify")
        assert outbox.owed("city", 10) == [ids[0]]
        assert outbox.owed("town", 10) == ids  # per target
        s = other.status("city")
        assert (s.delivered, s.owed, s.retrying, s.refused, s.held) == (1, 1, 1, 1, 1)
        assert s.last is not None and s.last.statement == ids[0] and s.last.attempts == 1
        assert [d.statement for d in outbox.deliveries("city", "delivered")] == [ids[1]]
        assert outbox.deliveries("city", "delivered")[0].attempts == 1
        assert other.requeue("city", [ids[2]]) == 1
        assert outbox.owed("city", 10) == [ids[0], ids[2]]
        assert outbox.requeue("city") == 1  # the held one
        assert outbox.document(ids[0]) == statements[0].to_bytes()


def test_units_alike(opener: Any) -> None:
    a, b = UnitRegistry(opener()), UnitRegistry(opener())  # two hosts' CLIs
    try:
        a.add("roof-1", gateway="gw-1", meters=["m1"], scenario="pv", beneficiary="acct-0001",
              start_ms=1000, now_ms=1000)  # fmt: skip
        with pytest.raises(ProgrammeError, match="already enrolled"):
            b.add("roof-1", gateway="gw-2", meters=["m9"], scenario="pv", beneficiary="acct-0001",
                  start_ms=1000, now_ms=1000)  # fmt: skip
        with pytest.raises(ProgrammeError, match="already belong"):
            b.add("roof-2", gateway="gw-1", meters=["m1"], scenario="pv", beneficiary="acct-0002",
                  start_ms=1000, now_ms=1000)  # fmt: skip
        b.set_beneficiary("roof-1", "acct-0003", from_ms=5000, now_ms=6000)
        with pytest.raises(ProgrammeError, match="after the last one"):
            a.set_beneficiary("roof-1", "acct-0004", from_ms=5000, now_ms=7000)  # history is appended only
        assert [(e.from_ms, e.beneficiary) for e in a.beneficiaries("roof-1")] == [
            (1000, "acct-0001"), (5000, "acct-0003"),
        ]  # fmt: skip
        assert [u.unit for u in a.units(beneficiary="acct-0003")] == ["roof-1"]
        raw = opener()  # the database itself keeps the history append-only, in order
        earlier = "INSERT INTO programme_beneficiaries VALUES ('roof-1', 4000, 'acct-0009', 1)"
        for sql in ("UPDATE programme_beneficiaries SET beneficiary = 'acct-0009'",
                    "DELETE FROM programme_beneficiaries", earlier):  # fmt: skip
            with pytest.raises((sqlite3.Error, StoreError)):
                raw.execute(sql)
        b.withdraw("roof-1", from_ms=9000)
        with pytest.raises(ProgrammeError, match="no active unit"):
            a.withdraw("roof-1", from_ms=9000)
        entry = a.get("roof-1")
        assert entry is not None and entry.end_ms == 9000 and entry.meters == ("m1",)
        segs = a.segments(entry, 0, 10)
        assert [(s.start, s.end, s.beneficiary) for s in segs] == [(1, 5, "acct-0001"), (5, 9, "acct-0003")]
    finally:
        a.close()
        b.close()


def test_api_tokens_alike(opener: Any) -> None:
    a, b = TokenStore(opener()), TokenStore(opener())  # two aggregators' APIs
    try:
        token, info = a.create("city", ["statements:read"], now_ms=1000, expires_ms=10_000)
        assert b.authorise(f"Bearer {token}", "statements:read", now_ms=2000).id == info.id
        with pytest.raises(Refused, match="lacks scope"):
            b.authorise(f"Bearer {token}", "receipts:write", now_ms=2000)
        a.revoke(info.id, now_ms=3000)
        with pytest.raises(Refused, match="revoked"):
            b.authorise(f"Bearer {token}", "statements:read", now_ms=4000)
        assert [(t.id, t.revoked_ms) for t in b.list()] == [(info.id, 3000)]
    finally:
        a.close()
        b.close()


def test_the_api_and_the_tokens_command_use_the_postgresql_store(
    seed: Populated,
    tmp_path: Path,
    postgres: Any,
    postgres_db: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With ``store.postgres`` the API serves the statements and takes the tokens kept there
    (what another aggregator signed or made), not the local SQLite file's."""
    from aggregator.api.server import api_context
    from aggregator.config import AggregatorConfig
    from puhui.cli import main

    secret = tmp_path / "pg-password"
    secret.write_text(postgres.password + "\n")
    secret.chmod(0o600)
    pg = {"host": "127.0.0.1", "port": postgres.port, "dbname": postgres_db["dbname"], "user": postgres.user,
          "password": {"file": str(secret)}, "sslrootcert": str(postgres.tls.ca_file)}  # fmt: skip
    data = {"mqtt": {"insecure": True}, "store": {"path": str(tmp_path / "local.sqlite3"), "postgres": pg},
            "influx": {"url": "http://127.0.0.1:9", "database": "unused"},
            "key_file": str(tmp_path / "none.pem"),
            "api": {"insecure": True, "port": 0}}  # fmt: skip
    config_file = tmp_path / "aggregator.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = AggregatorConfig.model_validate(data)
    with StatementStore(PostgresDb(postgres_db)) as elsewhere:  # signed by another aggregator
        for st in _seed_statements(seed):
            elsewhere.save(st)
        elsewhere.db.close()
    base = ["aggregator", "tokens", "--config", str(config_file)]
    assert main([*base, "create", "--name", "city", "--scope", "statements:read"]) == 0
    token = capsys.readouterr().out.strip()
    assert config.api is not None
    with api_context(config, config.api) as ctx:
        assert sorted(s.id for s in ctx.statements.list()) == sorted(seed.statements)
        assert ctx.tokens.authorise(f"Bearer {token}", "statements:read", now_ms=ctx.now_ms()).name == "city"
    assert not (tmp_path / "local.sqlite3").exists()  # nothing of it in the local file


def test_the_programme_database_reconnects_after_a_postgresql_restart(fresh_postgres: Any) -> None:
    pg = fresh_postgres()
    pg.create_database("programme")
    db = PostgresDb(pg.conninfo("programme"))
    units = UnitRegistry(db)
    try:
        units.add("roof-1", gateway="gw-1", meters=["m1"], scenario="pv", beneficiary="acct-0001",
                  start_ms=1000, now_ms=1000)  # fmt: skip
        pg.kill()
        pg.start()
        entry = units.get("roof-1")  # a read: tried again on a new connection
        assert entry is not None and entry.gateway == "gw-1"
        pg.kill()
        pg.start()
        units.add("roof-2", gateway="gw-1", meters=["m2"], scenario="pv", beneficiary="acct-0002",
                  start_ms=1000, now_ms=2000)  # a transaction first: its connection is checked  # fmt: skip
        assert [u.unit for u in units.units(gateway="gw-1")] == ["roof-1", "roof-2"]
    finally:
        units.close()
        db.close()
