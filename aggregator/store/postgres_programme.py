"""The programme's tables in PostgreSQL, as numbered migrations of their own (recorded in
``programme_schema_version``, beside the evidence's ``schema_version``; applied by
:class:`aggregator.store.sqldb.PostgresDb` at open, once, whoever opens it first).

The tables are the SQLite ones of :mod:`aggregator.methodology.store` (statements, ledger,
receipts), :mod:`aggregator.programme.units` (units, beneficiary history),
:mod:`aggregator.programme.schedule` (what the schedule signed, its last looks),
:mod:`aggregator.push.outbox` (deliveries) and, from version 2, :mod:`aggregator.api.tokens`
(the platform API's bearer tokens, hashed) in PostgreSQL's types, with the same keys, so the
database refuses what SQLite refuses:

- one delivery row per (target, statement); beneficiary entries are only ever added, each
  after the unit's last one (a trigger refuses an UPDATE, a DELETE or an earlier entry);
- one *scheduled* statement per unit and stretch (``programme_statements_scheduled``, a
  partial unique index; supplements are more rows of kind ``supplementary``);
- a credited run per (gateway, meter, quantity, start); overlapping runs are refused by the
  statement store's check, made under the ``reduction_ledger`` advisory lock (one writer at
  a time across every aggregator).

``reduction_receipts.seq`` orders receipts taken at the same millisecond (SQLite's rowid).
"""

from __future__ import annotations

from typing import Any

from aggregator.store.postgres_schema import apply_migrations

LOCK_CLASS = 0x70756876  # advisory lock class of the programme's named locks ("puhv")

# (version, statements): append only; a released migration is never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE reduction_statements (
    id text PRIMARY KEY, gateway text NOT NULL, scenario text NOT NULL,
    parameter_set text NOT NULL, parameter_version text NOT NULL,
    period_start bigint NOT NULL, period_end bigint NOT NULL, created_ms bigint NOT NULL,
    er_tco2e double precision NOT NULL, document bytea NOT NULL);
CREATE INDEX reduction_statements_order ON reduction_statements (period_start, gateway, id);
CREATE INDEX reduction_statements_created ON reduction_statements (created_ms, id);
CREATE TABLE reduction_ledger (
    gateway text NOT NULL, meter text NOT NULL, quantity text NOT NULL,
    start bigint NOT NULL, "end" bigint NOT NULL,
    statement text NOT NULL REFERENCES reduction_statements (id),
    PRIMARY KEY (gateway, meter, quantity, start));
CREATE INDEX reduction_ledger_statement ON reduction_ledger (statement);
CREATE TABLE reduction_statement_units (
    statement text NOT NULL REFERENCES reduction_statements (id), unit text NOT NULL,
    PRIMARY KEY (unit, statement));
CREATE TABLE reduction_receipts (
    platform text NOT NULL, receipt_id text NOT NULL,
    statement text NOT NULL REFERENCES reduction_statements (id), kind text NOT NULL,
    tco2e double precision NOT NULL, created_ms bigint NOT NULL, received_ms bigint NOT NULL,
    document bytea NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (platform, receipt_id));
CREATE INDEX reduction_receipts_statement ON reduction_receipts (statement, received_ms);
CREATE TABLE reduction_statement_beneficiaries (
    statement text PRIMARY KEY REFERENCES reduction_statements (id), beneficiary text NOT NULL);
CREATE INDEX reduction_statement_beneficiaries_ref ON reduction_statement_beneficiaries (beneficiary);

CREATE TABLE programme_units (
    unit text PRIMARY KEY, gateway text NOT NULL, meters text NOT NULL, scenario text NOT NULL,
    start_ms bigint NOT NULL, end_ms bigint, created_ms bigint NOT NULL);
CREATE TABLE programme_beneficiaries (
    unit text NOT NULL REFERENCES programme_units (unit), from_ms bigint NOT NULL,
    beneficiary text NOT NULL, set_ms bigint NOT NULL, PRIMARY KEY (unit, from_ms));
CREATE INDEX programme_beneficiaries_ref ON programme_beneficiaries (beneficiary);
CREATE FUNCTION programme_beneficiaries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'programme_beneficiaries is append-only: % refused', TG_OP;
    END IF;
    IF EXISTS (SELECT 1 FROM programme_beneficiaries WHERE unit = NEW.unit AND from_ms >= NEW.from_ms) THEN
        RAISE EXCEPTION 'unit %: a beneficiary entry must start after the last one', NEW.unit;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER programme_beneficiaries_append_only BEFORE INSERT OR UPDATE OR DELETE
    ON programme_beneficiaries FOR EACH ROW EXECUTE FUNCTION programme_beneficiaries_append_only();

CREATE TABLE programme_statements (
    statement text PRIMARY KEY REFERENCES reduction_statements (id), unit text NOT NULL,
    period_start bigint NOT NULL, period_end bigint NOT NULL, beneficiary text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('scheduled', 'supplementary')),
    evidence_mark bigint NOT NULL, created_ms bigint NOT NULL);
CREATE INDEX programme_statements_unit ON programme_statements (unit, period_start, period_end);
CREATE UNIQUE INDEX programme_statements_scheduled ON programme_statements (unit, period_start, period_end)
    WHERE kind = 'scheduled';
CREATE TABLE programme_checks (
    unit text NOT NULL, period_start bigint NOT NULL, period_end bigint NOT NULL,
    gateway_mark bigint NOT NULL, evidence_mark bigint NOT NULL, checked_ms bigint NOT NULL,
    problem text, PRIMARY KEY (unit, period_start, period_end));

CREATE TABLE push_deliveries (
    target text NOT NULL, statement text NOT NULL REFERENCES reduction_statements (id),
    state text NOT NULL CHECK (state IN ('pending', 'delivered', 'refused', 'held')),
    attempts integer NOT NULL, last_attempt_ms bigint, next_attempt_ms bigint,
    delivered_ms bigint, http_status integer, last_error text,
    PRIMARY KEY (target, statement));
CREATE INDEX push_deliveries_state ON push_deliveries (target, state, last_attempt_ms);
""",
    ),
    (
        2,
        """
CREATE TABLE api_tokens (
    id text PRIMARY KEY, name text NOT NULL, secret_sha256 text NOT NULL, scopes text NOT NULL,
    created_ms bigint NOT NULL, expires_ms bigint NOT NULL, revoked_ms bigint);
""",
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: Any, where: str) -> None:
    """Bring the programme's tables up to date (``conn``: a psycopg connection in a transaction)."""
    apply_migrations(
        conn,
        table="programme_schema_version",
        migrations=MIGRATIONS,
        lock=(LOCK_CLASS, 0),
        what="the programme's tables are",
        where=where,
    )
