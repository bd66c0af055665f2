"""Statements on a calendar (issue 18): a month of evidence yields one statement per unit and
beneficiary with nobody running a command; late evidence yields a signed supplement.

The programme's state (units, schedule, statements) in SQLite and in PostgreSQL (issue 21),
the evidence in SQLite for both: the scheduler reads it through its narrow protocol."""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from aggregator.methodology import verify_statement
from aggregator.methodology.engine import compute
from aggregator.methodology.params import PARAMS_DIR, load_parameter_set
from aggregator.methodology.store import StatementStore
from aggregator.methodology.subject import Period, Subject, Unit
from aggregator.package import build_package
from aggregator.programme.schedule import StatementScheduler, calendar_periods
from aggregator.programme.units import UnitRegistry
from aggregator.store import SQLiteEvidenceStore
from aggregator.store.sqldb import Db, PostgresDb, SQLiteDb
from evidence import generate_key
from puhui.verify import verify_package

from .support import DELTA_KWH, GATEWAY, MONTH, MONTH_END, Street, deliver

DAY = 86400
PV = load_parameter_set(PARAMS_DIR / "pv-export-mee-2.0.0.yaml")
EV = load_parameter_set(PARAMS_DIR / "ev-charging-jjj-2.0.0.yaml")
SETS = {"pv": PV, "ev_charging": EV}
SPLIT = MONTH + 15 * DAY  # pv-02's reductions go to another account from 16 January on


class StillClock:
    """Time as the test sets it (``t``); the scheduler only reads it in a tick."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("the tests call tick() themselves")


class Setup:
    """``conninfo``: the programme's state in that PostgreSQL database, else in the SQLite file
    beside the evidence."""

    def __init__(self, tmp: Path, conninfo: dict[str, Any] | None = None) -> None:
        self.tmp, self.db, self.key, self.street = tmp, tmp / "agg.sqlite3", generate_key(), Street()
        self.conninfo = conninfo
        self.clock = StillClock(MONTH)
        with self.open_db() as db, UnitRegistry(db) as units:
            now = MONTH * 1000
            units.add("house-7-pv", gateway=GATEWAY, meters=["pv-01"], scenario="pv", beneficiary="acct-0001",
                      start_ms=now, now_ms=now)  # fmt: skip
            units.add("house-9-pv", gateway=GATEWAY, meters=["pv-02"], scenario="pv", beneficiary="acct-0002",
                      start_ms=now, now_ms=now)  # fmt: skip
            units.set_beneficiary("house-9-pv", "acct-0003", from_ms=SPLIT * 1000, now_ms=now)
            units.add("charger-1", gateway=GATEWAY, meters=["ev-01"], scenario="ev_charging",
                      beneficiary="acct-0004", start_ms=now, now_ms=now)  # fmt: skip
        self._enrolled = False

    def open_db(self) -> Any:
        """Where the programme's state is (a new connection; a context manager closing it)."""
        return _Closing(SQLiteDb(self.db) if self.conninfo is None else PostgresDb(self.conninfo))

    def sql(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.open_db() as db:
            return db.execute(sql, args).fetchall()  # type: ignore[no-any-return]

    def deliver(self, start: int, end: int) -> None:
        deliver(self.db, self.tmp, self.key, self.street, start, end, enrol=not self._enrolled)
        self._enrolled = True

    def scheduler(self) -> Generator[StatementScheduler]:
        evidence = SQLiteEvidenceStore(self.db)
        db: Db = SQLiteDb(self.db) if self.conninfo is None else PostgresDb(self.conninfo)
        units, statements = UnitRegistry(db), StatementStore(db)
        sched = StatementScheduler(
            db=db, units=units, statements=statements, evidence=evidence, key=self.key, clock=self.clock,  # type: ignore[arg-type]
            parameter_sets=SETS, period="month", settle_s=48 * 3600,
        )  # fmt: skip
        try:
            yield sched
        finally:
            sched.close()
            units.close()
            statements.close()
            db.close()
            evidence.close()


class _Closing:
    def __init__(self, db: Db) -> None:
        self.db = db

    def __enter__(self) -> Db:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def street(tmp_path: Path, request: pytest.FixtureRequest) -> Setup:
    if request.param == "postgres":
        return Setup(tmp_path, request.getfixturevalue("postgres_db"))
    return Setup(tmp_path)


def _pv_er(meter: str, intervals: int) -> float:
    """Export x (1 - class-1 MPE) x the smallest of Hebei 0.6516, North China 0.6361, national 0.5306."""
    return intervals * DELTA_KWH[meter] / 1000 * (1 - 0.01) * 0.5306


def test_calendar_months_in_china_time() -> None:
    periods = list(calendar_periods("month", MONTH + 5 * DAY, MONTH_END + 40 * DAY))
    assert periods[0] == (MONTH, MONTH_END)  # January 2026, 1st 00:00 +08:00 to 1 February
    assert (periods[1][1] - periods[1][0]) // DAY == 28  # February 2026
    assert list(calendar_periods("month", MONTH, MONTH_END - 1)) == []  # not ended yet
    weeks = list(calendar_periods("week", MONTH, MONTH + 20 * DAY))
    assert all(b - a == 7 * DAY for a, b in weeks) and weeks[0][0] == MONTH - 3 * DAY  # Mon 29 Dec 2025


def test_a_month_yields_one_statement_per_unit_and_beneficiary_with_no_command(street: Setup) -> None:
    street.deliver(MONTH, MONTH_END + 3 * DAY)
    for sched in street.scheduler():
        street.clock.t = MONTH_END + 47 * 3600  # the month has not settled yet (48 h)
        assert sched.tick().signed == []
        street.clock.t = MONTH_END + 48 * 3600
        report = sched.tick()
        assert report.problems == []
        got = {(s.unit, s.period_start, s.period_end, s.beneficiary, s.kind) for s in report.signed}
        assert got == {
            ("house-7-pv", MONTH, MONTH_END, "acct-0001", "scheduled"),
            ("house-9-pv", MONTH, SPLIT, "acct-0002", "scheduled"),
            ("house-9-pv", SPLIT, MONTH_END, "acct-0003", "scheduled"),
            ("charger-1", MONTH, MONTH_END, "acct-0004", "scheduled"),
        }
        er = {(s.unit, s.beneficiary): s.er_tco2e for s in report.signed}
        assert er[("house-7-pv", "acct-0001")] == pytest.approx(_pv_er("pv-01", 31 * 96), rel=1e-12)
        assert er[("house-9-pv", "acct-0002")] == pytest.approx(_pv_er("pv-02", 15 * 96), rel=1e-12)
        assert er[("house-9-pv", "acct-0003")] == pytest.approx(_pv_er("pv-02", 16 * 96), rel=1e-12)
        assert er[("charger-1", "acct-0004")] > 0
        street.clock.t += 3600
        assert sched.tick().signed == []  # nothing new: nothing signed twice
        for s in report.signed:
            st = sched.statements.get(s.statement)
            assert st is not None and st.body["subject"]["beneficiary"] == s.beneficiary
            assert st.body["subject"]["units"] == [{"id": s.unit, "meters": list(_meters(s.unit))}]
            ok = verify_statement(st.to_bytes(), issuer_key=street.key.public_key, source=sched.evidence)
            assert ok.ok, str(ok)


def _meters(unit: str) -> tuple[str, ...]:
    return {"house-7-pv": ("pv-01",), "house-9-pv": ("pv-02",), "charger-1": ("ev-01",)}[unit]


def test_a_late_batch_yields_a_signed_supplement_and_the_first_statement_stays(street: Setup) -> None:
    street.deliver(MONTH, MONTH_END - DAY)  # the gateway went offline on 31 January
    street.clock.t = time.time() + 49 * 3600  # the gateway has been silent for more than the settle time
    for sched in street.scheduler():
        first = {(s.unit, s.beneficiary): s for s in sched.tick().signed}
        assert first[("house-7-pv", "acct-0001")].er_tco2e == pytest.approx(
            _pv_er("pv-01", 30 * 96), rel=1e-12
        )
        kept = {s.statement: sched.statements.document(s.statement) for s in first.values()}
    street.deliver(MONTH_END - DAY, MONTH_END + 3 * DAY)  # back online: the backlog arrives
    street.clock.t += 600
    for sched in street.scheduler():  # a restarted aggregator
        late = sched.tick()
        late.signed = [s for s in late.signed if s.period_start < MONTH_END]  # February is stated too
        assert {(s.unit, s.beneficiary, s.kind) for s in late.signed} == {
            ("house-7-pv", "acct-0001", "supplementary"),
            ("house-9-pv", "acct-0003", "supplementary"),  # the 31st is in the second stretch only
            ("charger-1", "acct-0004", "supplementary"),
        }
        sup = {(s.unit, s.beneficiary): s for s in late.signed}
        assert sup[("house-7-pv", "acct-0001")].er_tco2e == pytest.approx(_pv_er("pv-01", 96), rel=1e-12)
        body = sched.statements.get(sup[("house-7-pv", "acct-0001")].statement).body  # type: ignore[union-attr]
        assert body["supplements"] == [
            {"statement": first[("house-7-pv", "acct-0001")].statement,
             "er_tco2e": first[("house-7-pv", "acct-0001")].er_tco2e}
        ]  # fmt: skip
        assert {sid: sched.statements.document(sid) for sid in kept} == kept  # never changed
        # together: exactly what one statement over the whole month credits
        whole = compute(
            sched.evidence, PV, Subject(GATEWAY, (Unit("house-7-pv", ("pv-01",)),)), Period(MONTH, MONTH_END)
        ).result.er
        total = first[("house-7-pv", "acct-0001")].er_tco2e + sup[("house-7-pv", "acct-0001")].er_tco2e
        assert total == pytest.approx(whole, rel=1e-12)
        find = sched.statements.document
        for s in late.signed:
            doc = sched.statements.document(s.statement)
            assert doc is not None
            report = verify_statement(
                doc, issuer_key=street.key.public_key, source=sched.evidence, earlier=find
            )
            assert report.ok, str(report)
        street.clock.t += 600
        assert sched.tick().signed == []
        # the supplement's evidence package carries the statement it adds to, and verifies alone
        sid = sup[("house-7-pv", "acct-0001")].statement
        package = build_package(sched.evidence, sched.statements, sid)  # type: ignore[arg-type]
        assert f"supplemented/{first[('house-7-pv', 'acct-0001')].statement}.statement" in package.decode(
            "latin-1"
        )
        checked = verify_package(package, street.key.public_key)
        assert checked.ok, checked.problems


def test_a_statement_saved_just_before_a_crash_is_found_not_signed_again(street: Setup) -> None:
    street.deliver(MONTH, MONTH_END + 3 * DAY)
    street.clock.t = MONTH_END + 3 * DAY
    for sched in street.scheduler():
        signed = sched.tick().signed
    street.sql("DELETE FROM programme_statements")  # the crash: statements saved, rows not written
    street.sql("DELETE FROM programme_checks")
    for sched in street.scheduler():
        report = sched.tick()
        assert report.signed == [] and report.problems == []
        assert {s.statement for s in sched.signed()} == {s.statement for s in signed}


def test_a_unit_that_cannot_be_stated_is_reported_once_and_the_others_go_on(
    street: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    street.deliver(MONTH, MONTH_END + 3 * DAY)
    street.clock.t = MONTH_END + 3 * DAY
    for sched in street.scheduler():
        sched.parameter_sets.pop("ev_charging")
        report = sched.tick()
        assert {s.unit for s in report.signed} == {"house-7-pv", "house-9-pv"}
        assert report.problems == [
            "unit charger-1 2026-01-01T00:00+08:00 .. 2026-02-01T00:00+08:00: no parameter set for scenario "
            "ev_charging (programme.parameter_sets in the config)"
        ]
        street.deliver(MONTH_END + 3 * DAY, MONTH_END + 4 * DAY)  # more batches: it looks again
        street.clock.t += 600
        again = sched.tick()
        assert again.signed == [] and again.problems == []  # the same problem: not logged again
        assert [p[0] for p in sched.problems()] == ["charger-1"]
        sched.parameter_sets["ev_charging"] = EV  # fixed (the config, then a restart)
        street.deliver(MONTH_END + 4 * DAY, MONTH_END + 5 * DAY)
        assert [s.unit for s in sched.tick().signed] == ["charger-1"]
        assert sched.problems() == []


def test_in_production_the_schedule_signs_only_with_a_filed_set_the_rule_picks(street: Setup) -> None:
    from aggregator.methodology.params import list_parameter_sets
    from tests.aggregator.methodology.filing_fixture import Spec, write_sets

    sets_dir = street.tmp / "sets"
    write_sets(sets_dir, Spec("ev-hebei", "local", regions=("hebei",)), Spec("ev-group", "group"))
    street.deliver(MONTH, MONTH_END + 3 * DAY)
    street.clock.t = MONTH_END + 3 * DAY
    for sched in street.scheduler():
        sched.parameter_sets = {}  # no fixed sets: the precedence rule picks
        sched.production = True
        sched.candidates = tuple(list_parameter_sets(PARAMS_DIR))  # the shipped sets: none is filed
        report = sched.tick()
        assert report.signed == [] and len(report.problems) == 4  # house-9-pv has two stretches
        assert all("production" in p or "filed" in p for p in report.problems), report.problems
        sched.candidates += tuple(list_parameter_sets(sets_dir))  # a filed EV set for Hebei arrives
        street.deliver(MONTH_END + 3 * DAY, MONTH_END + 4 * DAY)
        [signed] = sched.tick().signed
        body = sched.statements.get(signed.statement).body  # type: ignore[union-attr]
        m = body["methodology"]
        assert signed.unit == "charger-1" and m["production"] is True
        assert m["parameter_set"]["id"] == "ev-hebei" and m["selection"]["reason"] == "tier"
        assert m["filing"]["number"] == "TEST-ev-hebei-2.0.0 (fictitious)"
        assert [p[0] for p in sched.problems()] == ["house-7-pv", "house-9-pv", "house-9-pv"]  # still unfiled


def test_a_signer_that_loses_the_race_mid_look_saves_nothing(
    street: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leadership moved while a look computed: the other aggregator signed the same stretches
    first. The slower one's claim finds them and saves nothing (no double statement, and no
    ledger refusal either: it never gets that far); its next look counts them."""
    from aggregator.methodology.statements import issue_statement as issue

    street.deliver(MONTH, MONTH_END + 3 * DAY)
    street.clock.t = MONTH_END + 3 * DAY
    slow_gen, fast_gen = street.scheduler(), street.scheduler()
    slow, fast = next(slow_gen), next(fast_gen)
    raced: list[Any] = []

    def issue_then_lose(*args: Any, **kwargs: Any) -> Any:
        statement = issue(*args, **kwargs)
        if not raced:  # the first statement the slow one computed: the other signs everything now
            raced.append(None)
            raced[0] = fast.tick()
        return statement

    try:
        monkeypatch.setattr("aggregator.programme.schedule.issue_statement", issue_then_lose)
        lost = slow.tick()
        monkeypatch.setattr("aggregator.programme.schedule.issue_statement", issue)
        assert len(raced[0].signed) == 4 and raced[0].problems == []
        assert lost.problems == []  # no DoubleClaim: the claim stopped it first
        assert lost.signed == []  # every stretch was signed by the other one meanwhile
        street.clock.t += 600
        again = slow.tick()  # its next look finds them and signs nothing
        assert again.signed == [] and again.problems == []
        assert {s.statement for s in slow.signed()} == {s.statement for s in raced[0].signed}
    finally:
        slow_gen.close()
        fast_gen.close()
    rows = street.sql(
        "SELECT unit, period_start, period_end, count(*) FROM programme_statements"
        " GROUP BY unit, period_start, period_end"
    )
    assert len(rows) == 4 and all(n == 1 for *_, n in rows), rows
    assert street.sql("SELECT count(*) FROM reduction_statements") == [(4,)]


def test_the_database_refuses_a_second_scheduled_statement_for_a_stretch(street: Setup) -> None:
    from aggregator.errors import StoreError

    street.deliver(MONTH, MONTH_END + 3 * DAY)
    street.clock.t = MONTH_END + 3 * DAY
    for sched in street.scheduler():
        [first, *_] = sched.tick().signed
    other = street.sql("SELECT statement FROM programme_statements WHERE statement != ?", (first.statement,))
    with pytest.raises((StoreError, __import__("sqlite3").IntegrityError)):  # another row, same stretch
        street.sql(
            "INSERT INTO programme_statements (statement, unit, period_start, period_end, beneficiary, kind, "
            "evidence_mark, created_ms) VALUES (?, ?, ?, ?, 'acct-0009', 'scheduled', 0, 0)",
            (other[0][0], first.unit, first.period_start, first.period_end),
        )


def test_an_older_file_with_two_scheduled_rows_for_a_stretch_opens_and_keeps_the_first(
    tmp_path: Path,
) -> None:
    """Before the unique index, two statements found for one stretch were both recorded as
    scheduled: the later becomes a supplement, and the index is created."""
    import sqlite3

    from aggregator.programme.schedule import _SCHEMA

    db = sqlite3.connect(tmp_path / "old.sqlite3", isolation_level=None)
    db.executescript(_SCHEMA.split("-- files from")[0])  # the tables as they were
    db.execute("INSERT INTO programme_statements VALUES ('late', 'u', 0, 10, 'acct-1', 'scheduled', 0, 5)")
    db.execute("INSERT INTO programme_statements VALUES ('early', 'u', 0, 10, 'acct-1', 'scheduled', 0, 3)")
    db.executescript(_SCHEMA)
    assert db.execute("SELECT statement, kind FROM programme_statements ORDER BY statement").fetchall() == [
        ("early", "scheduled"), ("late", "supplementary"),
    ]  # fmt: skip
    db.close()
