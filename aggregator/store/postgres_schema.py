"""The evidence store's PostgreSQL schema, as numbered migrations (applied by
:meth:`PostgresEvidenceStore._migrate`, each once, recorded in ``schema_version``).

The tables are SQLite's (:mod:`aggregator.store.schema`) in PostgreSQL's types (``bigint``
times and sequence numbers, ``bytea`` batch bytes, ``date`` calibration days), plus:

- ``gateway_heads``: one row per gateway, the chain head (highest stored seq and its header
  digest), locked ``FOR UPDATE`` by every transaction that stores a batch of the gateway, so
  two aggregators never check the same chain at once;
- ``batch_ids``: the sequence batch row ids come from, drawn under a store-wide transaction
  lock so that ids become visible in the order they were drawn (see ``store_group``);
- ``batches.influx_owner`` / ``influx_lease_ms`` (version 2): which aggregator's InfluxDB writer
  has claimed a pending batch, until when (the database's clock, ms): several writers drain
  one outbox without writing a batch at once; a killed writer's claims lapse and are taken over.
- ``ocpp_chain_sessions`` (version 3): SQLite's table of the same name, one row per OCPP
  ``session`` record of a stored batch (issue 24). Batches stored before version 3 are not
  indexed (ingest logged each of them); their records are in the batch bytes.
"""

from __future__ import annotations

import logging
from typing import Any

from aggregator.errors import StoreError

log = logging.getLogger(__name__)

# (version, statements): append only; a released migration is never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO meta VALUES ('registry_version', 0);
CREATE TABLE gateways (
    gateway text PRIMARY KEY, site text NOT NULL, region text,
    enrolled_ms bigint NOT NULL, document bytea NOT NULL);
CREATE TABLE gateway_keys (
    gateway text NOT NULL, key_id text NOT NULL, public_key bytea NOT NULL,
    valid_from_seq bigint NOT NULL, revoked_from_ms bigint, source text NOT NULL,
    added_ms bigint NOT NULL, PRIMARY KEY (gateway, key_id));
CREATE TABLE meters (
    gateway text NOT NULL, meter text NOT NULL, scenario text NOT NULL,
    rated_power_kw double precision NOT NULL, meter_class text NOT NULL, calibrated_until date,
    PRIMARY KEY (gateway, meter));
CREATE TABLE gateway_heads (gateway text PRIMARY KEY, seq bigint NOT NULL DEFAULT 0, header_sha256 text);
CREATE SEQUENCE batch_ids AS bigint;
CREATE TABLE batches (
    id bigint PRIMARY KEY, gateway text NOT NULL, seq bigint NOT NULL,
    header_sha256 text NOT NULL, prev text NOT NULL, key_id text NOT NULL, root text NOT NULL,
    created_ms bigint NOT NULL, received_ms bigint NOT NULL, count integer NOT NULL,
    verdict text NOT NULL, data bytea NOT NULL, data_codec text,
    influx_state smallint NOT NULL DEFAULT 0, influx_error text,
    UNIQUE (gateway, seq));
CREATE INDEX batches_influx_pending ON batches (id) WHERE influx_state = 0;
CREATE TABLE intervals (
    batch_id bigint NOT NULL, idx integer NOT NULL, gateway text NOT NULL,
    meter text NOT NULL, quantity text NOT NULL, start bigint NOT NULL, "end" bigint NOT NULL,
    issues text, PRIMARY KEY (batch_id, idx));
CREATE TABLE batch_series (
    gateway text NOT NULL, meter text NOT NULL, quantity text NOT NULL, batch_id bigint NOT NULL,
    first_start bigint NOT NULL, last_end bigint NOT NULL,
    PRIMARY KEY (gateway, meter, quantity, batch_id));
CREATE TABLE gaps (
    gateway text NOT NULL, seq bigint NOT NULL, detected_ms bigint NOT NULL,
    filled_ms bigint, explained_by_seq bigint, PRIMARY KEY (gateway, seq));
CREATE TABLE rejections (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, gateway text, seq bigint,
    header_sha256 text, reason text NOT NULL, detail text NOT NULL, received_ms bigint NOT NULL,
    data bytea NOT NULL, data_sha256 text, repeats integer NOT NULL DEFAULT 1, last_ms bigint,
    size bigint);
CREATE INDEX rejections_by_data ON rejections (data_sha256);
CREATE INDEX rejections_by_source ON rejections (gateway);
CREATE TABLE rejection_overflow (
    source text NOT NULL, reason text NOT NULL, count bigint NOT NULL, bytes bigint NOT NULL,
    first_ms bigint NOT NULL, last_ms bigint NOT NULL, PRIMARY KEY (source, reason));
CREATE TABLE aggregator_keys (
    key_id text PRIMARY KEY, public_key text NOT NULL, valid_from_ms bigint NOT NULL,
    retired_ms bigint, revoked_from_ms bigint, endorsement text, seq integer NOT NULL UNIQUE);
CREATE TABLE checkpoints (size bigint PRIMARY KEY, created_ms bigint NOT NULL, document bytea NOT NULL);
CREATE TABLE counter_state (
    gateway text NOT NULL, meter text NOT NULL, quantity text NOT NULL,
    "end" bigint NOT NULL, counter_end double precision NOT NULL, PRIMARY KEY (gateway, meter, quantity));
""",
    ),
    (
        2,
        """
ALTER TABLE batches ADD COLUMN influx_owner text, ADD COLUMN influx_lease_ms bigint;
""",
    ),
    (
        3,
        """
CREATE TABLE ocpp_chain_sessions (
    batch_id bigint NOT NULL, idx integer NOT NULL, gateway text NOT NULL, charger text NOT NULL,
    connector integer, meter text, transaction_id text NOT NULL, start_time_ms bigint,
    stop_time_ms bigint NOT NULL, energy_wh double precision, assurance text NOT NULL, flags text,
    PRIMARY KEY (batch_id, idx));
CREATE INDEX ocpp_chain_sessions_by_gateway ON ocpp_chain_sessions (gateway, charger, transaction_id);
""",
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]


def apply_migrations(
    conn: Any,
    *,
    table: str,
    migrations: tuple[tuple[int, str], ...],
    lock: tuple[int, int],
    what: str,
    where: str,
) -> None:
    """Apply the ``migrations`` that ``table`` (the version log) has not recorded, each once,
    under the advisory lock ``lock`` (``conn``: a psycopg connection in a transaction, so
    whoever opens the database first migrates it and the others wait). A database newer than
    this puhui is refused: ``what`` and ``where`` name it in the error."""
    conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", lock)
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {table} (version integer PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    [(version,)] = conn.execute(f"SELECT coalesce(max(version), 0) FROM {table}").fetchall()
    latest = migrations[-1][0]
    if version > latest:
        raise StoreError(
            f"{where}: {what} at schema version {version}, newer than this puhui knows ({latest}): "
            "upgrade puhui"
        )
    for number, statements in migrations:
        if number > version:
            conn.execute(statements.encode())
            conn.execute(f"INSERT INTO {table} (version) VALUES (%s)", (number,))
            log.info("%s: %s migrated to schema version %d", where, what, number)
