"""The evidence store's SQLite schema and its version (migrations: :meth:`SQLiteEvidenceStore._migrate`).

Schema versions: 2 batches.data_codec (zlib); 3 batch_series instead of intervals_by_meter;
4 rejections.repeats (the same bytes refused again add no row); 5 meters.calibrated_until;
6 rejections.size and rejection_overflow (a capped number of rows per source);
7 checkpoints (signed checkpoints kept for the platform API); 8 ev_networks, ev_session_sources,
ev_session_imports, ev_sessions (back-end session import, docs/ev-sessions.md; additive).

``ocpp_chain_sessions`` (OCPP session records sealed by gateways, issue 24) is created by
``CREATE TABLE IF NOT EXISTS`` at every open, so it needs no version: a store written before
it simply has no chain sessions (the records stay in their batches' bytes).
"""

from __future__ import annotations

SCHEMA_VERSION = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gateways (
    gateway TEXT PRIMARY KEY, site TEXT NOT NULL, region TEXT,
    enrolled_ms INTEGER NOT NULL, document BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_keys (
    gateway TEXT NOT NULL, key_id TEXT NOT NULL, public_key BLOB NOT NULL,
    valid_from_seq INTEGER NOT NULL, revoked_from_ms INTEGER, source TEXT NOT NULL,
    added_ms INTEGER NOT NULL, PRIMARY KEY (gateway, key_id));
CREATE TABLE IF NOT EXISTS meters (
    gateway TEXT NOT NULL, meter TEXT NOT NULL, scenario TEXT NOT NULL,
    rated_power_kw REAL NOT NULL, meter_class TEXT NOT NULL, calibrated_until TEXT,
    PRIMARY KEY (gateway, meter));
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, gateway TEXT NOT NULL, seq INTEGER NOT NULL,
    header_sha256 TEXT NOT NULL, prev TEXT NOT NULL, key_id TEXT NOT NULL, root TEXT NOT NULL,
    created_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, count INTEGER NOT NULL,
    verdict TEXT NOT NULL, data BLOB NOT NULL,
    influx_state INTEGER NOT NULL DEFAULT 0, influx_error TEXT, data_codec TEXT,
    UNIQUE (gateway, seq));
CREATE INDEX IF NOT EXISTS batches_influx_pending ON batches (id) WHERE influx_state = 0;
CREATE TABLE IF NOT EXISTS intervals (
    batch_id INTEGER NOT NULL, idx INTEGER NOT NULL, gateway TEXT NOT NULL,
    meter TEXT NOT NULL, quantity TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    issues TEXT, PRIMARY KEY (batch_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_series (
    gateway TEXT NOT NULL, meter TEXT NOT NULL, quantity TEXT NOT NULL, batch_id INTEGER NOT NULL,
    first_start INTEGER NOT NULL, last_end INTEGER NOT NULL,
    PRIMARY KEY (gateway, meter, quantity, batch_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, detected_ms INTEGER NOT NULL,
    filled_ms INTEGER, explained_by_seq INTEGER, PRIMARY KEY (gateway, seq));
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, gateway TEXT, seq INTEGER, header_sha256 TEXT,
    reason TEXT NOT NULL, detail TEXT NOT NULL, received_ms INTEGER NOT NULL, data BLOB NOT NULL,
    data_sha256 TEXT, repeats INTEGER NOT NULL DEFAULT 1, last_ms INTEGER);
CREATE TABLE IF NOT EXISTS rejection_overflow (
    source TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL,
    first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, PRIMARY KEY (source, reason));
CREATE TABLE IF NOT EXISTS aggregator_keys (
    key_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, valid_from_ms INTEGER NOT NULL,
    retired_ms INTEGER, revoked_from_ms INTEGER, endorsement TEXT, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, document BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counter_state (
    gateway TEXT NOT NULL, meter TEXT NOT NULL, quantity TEXT NOT NULL,
    "end" INTEGER NOT NULL, counter_end REAL NOT NULL, PRIMARY KEY (gateway, meter, quantity));
CREATE TABLE IF NOT EXISTS ev_networks (
    network TEXT PRIMARY KEY, public_key TEXT NOT NULL, key_id TEXT NOT NULL, region TEXT,
    added_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ev_session_sources (
    sha256 TEXT PRIMARY KEY, network TEXT NOT NULL, data BLOB NOT NULL, manifest BLOB NOT NULL,
    first_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ev_session_imports (
    id INTEGER PRIMARY KEY AUTOINCREMENT, network TEXT NOT NULL, source_sha256 TEXT NOT NULL,
    received_ms INTEGER NOT NULL, via TEXT NOT NULL, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ev_sessions (
    network TEXT NOT NULL, session_id TEXT NOT NULL, charger TEXT NOT NULL, connector TEXT NOT NULL,
    start_ms INTEGER NOT NULL, stop_ms INTEGER NOT NULL, record TEXT NOT NULL, sha256 TEXT NOT NULL,
    source_sha256 TEXT NOT NULL, import_id INTEGER NOT NULL, PRIMARY KEY (network, session_id));
CREATE INDEX IF NOT EXISTS ev_sessions_by_connector ON ev_sessions (network, charger, connector, start_ms);
CREATE TABLE IF NOT EXISTS ocpp_chain_sessions (
    batch_id INTEGER NOT NULL, idx INTEGER NOT NULL, gateway TEXT NOT NULL, charger TEXT NOT NULL,
    connector INTEGER, meter TEXT, transaction_id TEXT NOT NULL, start_time_ms INTEGER,
    stop_time_ms INTEGER NOT NULL, energy_wh REAL, assurance TEXT NOT NULL, flags TEXT,
    PRIMARY KEY (batch_id, idx)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ocpp_chain_sessions_tx ON ocpp_chain_sessions (charger, transaction_id);
INSERT OR IGNORE INTO meta VALUES ('schema_version', 1), ('registry_version', 0);
"""
