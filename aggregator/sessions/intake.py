"""One import of a network's session file: manifest, parsing, checks, storage.

The file import (``puhui aggregator sessions import``) and the platform API's intake
(``POST /v1/networks/{network}/sessions``) both call :func:`import_sessions`; what it
returns is the answer both give (counts accepted / duplicate / refused and a reason per
refused record). The exact file and manifest bytes are kept even when every record is
refused; an import whose manifest does not verify keeps nothing and raises.
"""

from __future__ import annotations

from aggregator.config import StoreSettings
from aggregator.sessions.checks import check_continuity, check_record
from aggregator.sessions.errors import ManifestRefused, SessionStoreUnsupported, UnknownNetwork
from aggregator.sessions.manifest import Manifest, verify_manifest
from aggregator.sessions.records import ImportReport, NetworkEntry, Refusal, SessionRecord, parse_file
from aggregator.store.protocols import SessionStore
from aggregator.store.sqlite import SQLiteEvidenceStore
from evidence.keys import key_id, load_public_key

POSTGRES_UNSUPPORTED = (
    "store.postgres: imported charging sessions are kept in the SQLite evidence store only "
    "(store.path); session import is not available with a PostgreSQL store yet"
)


def open_session_store(settings: StoreSettings) -> SQLiteEvidenceStore:
    """The store that keeps imported sessions: the SQLite file at ``store.path``. A config
    naming PostgreSQL is refused with a clear error (docs/ev-sessions.md)."""
    if settings.postgres is not None:
        raise SessionStoreUnsupported(POSTGRES_UNSUPPORTED)
    return SQLiteEvidenceStore(settings.path)


def enrol_network(
    store: SessionStore, network: str, public_key_pem: bytes, *, region: str | None, now_ms: int
) -> NetworkEntry:
    """Pin a network's manifest key (PEM, ECDSA P-256)."""
    key = load_public_key(public_key_pem)  # KeyFileError names what is wrong with it
    pem = public_key_pem.decode("ascii").strip() + "\n"
    return store.add_network(NetworkEntry(network, pem, key_id(key), region, now_ms))


def network_entry(store: SessionStore, network: str) -> NetworkEntry:
    for entry in store.networks():
        if entry.network == network:
            return entry
    raise UnknownNetwork(f"network {network!r} is not enrolled (puhui aggregator networks add)")


def import_sessions(
    store: SessionStore,
    network: str,
    data: bytes,
    manifest: bytes,
    *,
    now_ms: int,
    via: str,
    name: str = "<sessions>",
) -> ImportReport:
    """Verify the manifest with the network's pinned key, check every record, keep the file
    and the records that pass. Raises :class:`ManifestRefused`, :class:`UnknownNetwork` or
    :class:`aggregator.sessions.errors.SessionFileError` for the import as a whole."""
    entry = network_entry(store, network)
    m = verify_manifest(
        manifest, network=network, pinned=load_public_key(entry.public_key_pem), file_bytes=data
    )
    parsed = parse_file(data, name)
    if len(parsed) != m.records:
        raise ManifestRefused(f"manifest: names {m.records} records, {name} holds {len(parsed)}")
    report = ImportReport(network, m.file_sha256, len(parsed), [], [], [])
    candidates = _candidates(parsed, m, report, now_ms)
    return store.import_sessions(
        report, data, manifest, candidates, check_continuity, received_ms=now_ms, via=via
    )


def _candidates(
    parsed: list[SessionRecord | Refusal], m: Manifest, report: ImportReport, now_ms: int
) -> list[SessionRecord]:
    seen: dict[str, SessionRecord] = {}
    out = []
    for p in parsed:
        why = p if isinstance(p, Refusal) else _refusal(p, m, now_ms)
        if why is not None:
            report.refused.append(why)
            continue
        assert isinstance(p, SessionRecord)
        first = seen.setdefault(p.session_id, p)
        if first is not p:
            if first.sha256 == p.sha256:
                report.duplicate.append(p.session_id)
            else:
                report.refused.append(
                    Refusal(p.session_id, "session_id", "appears twice in the file with different content")
                )
            continue
        out.append(p)
    return out


def _refusal(r: SessionRecord, m: Manifest, now_ms: int) -> Refusal | None:
    if r.network != m.network:
        return Refusal(r.session_id, "network", f"{r.network!r}: the import is for network {m.network!r}")
    if r.start_ms < m.start_ms:
        return Refusal(r.session_id, "start", "before the period the manifest attests")
    if r.stop_ms > m.end_ms:
        return Refusal(r.session_id, "stop", "after the period the manifest attests")
    return check_record(r, now_ms)
