"""Imported charging sessions in an evidence package (docs/evidence-package.md, *Imported
sessions*): each source file a statement's sessions came from is checked offline against the
network's signed manifest and pinned key, each listed session is found in its source with the
digest the statement names and passes the import's record checks again; the sessions then
serve the statement's recomputation as its session store (:class:`PackageSessions`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.package import (
    NETWORK_KEYS,
    NETWORK_KEYS_FORMAT,
    batch_name,
    session_manifest_name,
    session_source_name,
)
from aggregator.sessions.checks import check_continuity, check_record
from aggregator.sessions.errors import ManifestRefused, SessionFileError
from aggregator.sessions.manifest import Manifest, verify_manifest
from aggregator.sessions.records import SessionRecord, StoredSession, parse_file
from evidence.batch import parse_batch
from evidence.errors import EvidenceError
from evidence.keys import PublicKey, key_id, load_public_key
from evidence.records import SessionRecord as ChainSessionRecord
from evidence.records import decode_record

SESSION_ROLES = ("network-keys", "session-source", "session-manifest")
CREDITED = "credited"
REL_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A session file of the package whose manifest verified: its records by session id (the
    first of an id, as the import took it)."""

    sha256: str
    data: bytes
    manifest: Manifest
    records: dict[str, SessionRecord]


class PackageSessions:
    """The session store of a statement's recomputation over a package: exactly the sessions
    the statement lists, each as its verified source file holds it
    (:class:`aggregator.methodology.assurance.SessionReader`)."""

    def __init__(self, network: str, sessions: Sequence[StoredSession], sources: Mapping[str, SourceFile]):
        self._network = network
        self._sessions = list(sessions)
        self._sources = dict(sources)

    def imported_sessions(
        self, network: str, *, chargers: Collection[str] | None = None, start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[StoredSession]:  # fmt: skip
        if network != self._network:
            return []
        return [
            s for s in self._sessions
            if (chargers is None or s.record.charger in chargers)
            and (start_ms is None or s.record.start_ms >= start_ms)
            and (end_ms is None or s.record.stop_ms <= end_ms)
        ]  # fmt: skip

    def session_source(self, sha256: str) -> tuple[bytes, bytes] | None:
        src = self._sources.get(sha256)
        return None if src is None else (src.data, src.manifest.data)


def check_sessions(
    members: Mapping[str, bytes],
    roles: Mapping[str, str],
    body: Mapping[str, Any],
    pinned: Mapping[str, PublicKey],
    checked: list[str],
    problems: list[str],
) -> PackageSessions | None:
    """The package's sessions if every check passed (None, with ``problems``, otherwise; None
    and no problem for a statement listing no sessions in a package holding none)."""
    before = len(problems)
    listed = _evidence(body).get("sessions")
    items = _items(listed, "sessions", problems)
    held = sorted(n for n, r in roles.items() if r in SESSION_ROLES)
    if not items:
        problems += [f"{n}: the statement lists no imported session" for n in held]
        return None
    assert isinstance(listed, dict)
    network = str(listed.get("network"))
    key = network_key(members.get(NETWORK_KEYS), network, pinned.get(network), checked, problems)
    if key is None:
        return None
    needed = sorted({str(i.get("source_sha256")) for i in items if isinstance(i, dict)})
    sources: dict[str, SourceFile | None] = {
        sha: source_file(members, sha, network, key, problems) for sha in needed
    }
    wanted = {NETWORK_KEYS} | {f(sha) for sha in needed for f in (session_source_name, session_manifest_name)}
    problems += [f"{n}: no session the statement lists comes from it" for n in held if n not in wanted]
    records = {sha: None if src is None else src.records for sha, src in sources.items()}
    sessions = resolve_sessions(network, items, records, problems)
    recheck_records(network, sessions, {sha: s.manifest for sha, s in sources.items() if s}, problems)
    energy_problem = credited_energy(items, body.get("assurance"))
    if energy_problem is not None:
        problems.append(energy_problem)
    if len(problems) > before:
        return None
    checked.append(
        f"sessions: {len(sessions)} session(s) of {network} found in {len(needed)} source file(s), each file "
        f"as its manifest signed by the network names it, each record as the statement's digest and as "
        f"the import's checks take it"
    )
    return PackageSessions(network, sessions, {sha: s for sha, s in sources.items() if s is not None})


def network_key(
    raw: bytes | None, network: str, pinned: PublicKey | None, checked: list[str], problems: list[str]
) -> PublicKey | None:
    """The network's manifest key from the package, checked against the one pinned here (if any)."""
    if raw is None:
        problems.append(f"package: no {NETWORK_KEYS}: the statement lists sessions of network {network}")
        return None
    try:
        doc = json.loads(raw)
        if doc["format"] != NETWORK_KEYS_FORMAT:
            raise ValueError(f"format is not {NETWORK_KEYS_FORMAT}")
        entry = next((e for e in doc["networks"] if e["network"] == network), None)
        if entry is None:
            problems.append(f"{NETWORK_KEYS}: holds no key of network {network}")
            return None
        key = load_public_key(str(entry["public_key_pem"]).encode("ascii"))
        kid, added = str(entry["key_id"]), int(entry["added_ms"])
    except (ValueError, KeyError, TypeError, RecursionError, EvidenceError) as exc:
        problems.append(f"{NETWORK_KEYS}: not a list of network keys: {exc}")
        return None
    if key_id(key) != kid:
        problems.append(f"{NETWORK_KEYS}: network {network}'s key_id {kid} is not its key's id {key_id(key)}")
        return None
    if pinned is not None and key_id(pinned) != kid:
        problems.append(
            f"{NETWORK_KEYS}: network {network}'s key is {kid}, the key pinned for it is {key_id(pinned)}"
        )
        return None
    checked.append(
        f"network {network}: key {kid}, "
        + ("the one pinned for it" if pinned is not None else
           f"as the package gives it (pinned at the aggregator at {added} ms; not pinned here)")
    )  # fmt: skip
    return key


def source_file(
    members: Mapping[str, bytes], sha: str, network: str, key: PublicKey, problems: list[str]
) -> SourceFile | None:
    """A source file and its manifest: present, hashing to the name the statement lists, the
    manifest verifying with the network's key and naming this file, the record count right."""
    name, mname = session_source_name(sha), session_manifest_name(sha)
    if name not in members or mname not in members:
        absent = name if name not in members else mname
        problems.append(
            f"{absent}: not in the package: statement sessions of {network} came from source {sha}"
        )
        return None
    data = members[name]
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha:
        problems.append(f"{name}: sha256 is {actual}: not the source {sha} the statement lists")
        return None
    try:
        manifest = verify_manifest(members[mname], network=network, pinned=key, file_bytes=data)
    except ManifestRefused as exc:
        problems.append(f"{mname}: {exc}")
        return None
    try:
        parsed = parse_file(data, name)
    except SessionFileError as exc:
        problems.append(str(exc))  # names the member
        return None
    if len(parsed) != manifest.records:
        problems.append(f"{mname}: names {manifest.records} records, source {sha} holds {len(parsed)}")
        return None
    records: dict[str, SessionRecord] = {}
    for p in parsed:  # the import's pick: the first record of an id that passes its checks
        if isinstance(p, SessionRecord) and (
            p.session_id not in records
            or (not _taken(records[p.session_id], manifest) and _taken(p, manifest))
        ):
            records[p.session_id] = p
    return SourceFile(sha, data, manifest, records)


def _taken(r: SessionRecord, m: Manifest) -> bool:
    return (
        r.network == m.network
        and m.start_ms <= r.start_ms
        and r.stop_ms <= m.end_ms
        and (check_record(r, m.end_ms) is None)
    )


def resolve_sessions(
    network: str,
    items: Sequence[Any],
    sources: Mapping[str, Mapping[str, SessionRecord] | None],
    problems: list[str],
) -> list[StoredSession]:
    """Each listed session as its source holds it. ``sources``: the records of each verified
    source file by session id; None for a source already refused (not reported again)."""
    out: list[StoredSession] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            sid, digest, sha = str(item["session_id"]), str(item["sha256"]), str(item["source_sha256"])
        except (KeyError, TypeError):
            problems.append(f"statement: evidence.sessions.items[{i}] is not a session entry")
            continue
        what = f"sessions: {network} session {sid}"
        if sid in seen:
            problems.append(f"{what}: listed twice")
            continue
        seen.add(sid)
        if sha not in sources:
            problems.append(f"{what}: its source {sha} is not in the package")
            continue
        held = sources[sha]
        if held is None:
            continue
        record = held.get(sid)
        if record is None:
            problems.append(f"{what} is not in its source {sha}")
        elif record.sha256 != digest:
            problems.append(
                f"{what}: its record in source {sha} hashes to {record.sha256}, the statement lists {digest}"
            )
        elif item.get("energy_wh") != record.energy_wh:
            problems.append(
                f"{what}: the statement lists {item.get('energy_wh')!r} Wh, its record in source {sha} "
                f"{record.energy_wh!r} Wh"
            )
        else:
            out.append(StoredSession(record, digest, sha, 0))
    return out


def recheck_records(
    network: str, sessions: Sequence[StoredSession], manifests: Mapping[str, Manifest], problems: list[str]
) -> None:
    """The import's record checks again, on the source records: the network, the manifest's
    period, the record on its own, and no overlap or register going back between them."""
    for s in sessions:
        r, m = s.record, manifests[s.source_sha256]
        what = f"sessions: {network} session {r.session_id}"
        if r.network != network:
            problems.append(f"{what}: network: {r.network!r} in source {s.source_sha256}")
        elif r.start_ms < m.start_ms or r.stop_ms > m.end_ms:
            problems.append(f"{what}: start/stop: outside the period manifest {s.source_sha256} attests")
        elif (why := check_record(r, m.end_ms)) is not None:
            problems.append(f"{what}: {why.field}: {why.reason} (source {s.source_sha256})")
    _, refused = check_continuity([s.record for s in sessions], {})
    problems += [
        f"sessions: {network} session {why.session_id}: {why.field}: {why.reason}" for why in refused
    ]


def credited_energy(items: Sequence[Any], assurance: Any) -> str | None:
    """A problem if the energy of the sessions listed as credited does not add up to the
    statement's platform_attested activity (None when it does, or the statement has no
    assurance section)."""
    if not isinstance(assurance, dict):
        return None
    try:
        level = assurance["levels"]["platform_attested"]
        credited_mwh = float(level["activity"].get("energy_mwh", 0.0)) if level["credited"] else 0.0
        listed_wh = math.fsum(
            _listed_energy(i) for i in items if isinstance(i, dict) and i.get("status") == CREDITED
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"statement: assurance.levels.platform_attested is not a level record: {exc!r}"
    if not math.isclose(listed_wh, credited_mwh * 1e6, rel_tol=REL_TOL, abs_tol=1e-6):
        return (
            f"statement: assurance.levels.platform_attested credits {credited_mwh * 1e6!r} Wh, the sessions "
            f"it lists as credited add up to {listed_wh!r} Wh"
        )
    return None


def _evidence(body: Mapping[str, Any]) -> Mapping[str, Any]:
    evidence = body.get("evidence")
    return evidence if isinstance(evidence, dict) else {}


def _items(listed: Any, field: str, problems: list[str]) -> list[Any]:
    """The items of ``evidence.<field>`` (none when the statement has no such listing)."""
    if listed is None:
        return []
    items = listed.get("items", []) if isinstance(listed, dict) else None
    if not isinstance(items, list):
        problems.append(f"statement: evidence.{field} is not a listing with items")
        return []
    return items


def _listed_energy(item: Mapping[str, Any]) -> float:
    value = item.get("energy_wh")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"energy_wh {value!r} of session {item.get('session_id')} is not a number")
    return float(value)


def check_chain_sessions(
    body: Mapping[str, Any],
    gateway: str,
    batches: Mapping[int, bytes],
    checked: list[str],
    problems: list[str],
) -> None:
    """Each OCPP session record the statement lists (``evidence.chain_sessions.items``: gateway,
    seq, index, sha256) is the leaf at that index of that batch of the package, with that hash,
    and is a ``session`` record. The batches themselves are verified (signature, root, chain) by
    the package checks; the recomputation decides what each record credits."""
    items = _items(_evidence(body).get("chain_sessions"), "chain_sessions", problems)
    leaves: dict[int, list[bytes] | None] = {}
    before = len(problems)
    for i, item in enumerate(items):
        try:
            gw, seq, index, digest = (
                str(item["gateway"]),
                int(item["seq"]),
                int(item["index"]),
                str(item["sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            problems.append(
                f"statement: evidence.chain_sessions.items[{i}] is not a (gateway, seq, index, sha256)"
            )
            continue
        where = f"chain_sessions: {gw}#{seq} record {index}"
        if gw != gateway:
            problems.append(f"{where}: not of the statement's gateway {gateway}")
            continue
        if seq not in leaves:
            leaves[seq] = _leaves(batches.get(seq))
        held = leaves[seq]
        if held is None:
            problems.append(f"{where}: batch {batch_name(seq)} is not in the package")
        elif not 0 <= index < len(held):
            problems.append(f"{where}: the batch holds {len(held)} records")
        elif (actual := hashlib.sha256(held[index]).hexdigest()) != digest:
            problems.append(f"{where}: the record hashes to {actual}, the statement lists {digest}")
        elif not _is_session(held[index]):
            problems.append(f"{where}: not a session record")
    if items and len(problems) == before:
        checked.append(
            f"chain sessions: {len(items)} OCPP session record(s) found in the batches with their hashes"
        )


def _leaves(data: bytes | None) -> list[bytes] | None:
    if data is None:
        return None
    try:
        return list(parse_batch(data).records)
    except EvidenceError:
        return []  # the batch checks report it


def _is_session(raw: bytes) -> bool:
    try:
        return isinstance(decode_record(raw), ChainSessionRecord)
    except EvidenceError:
        return False
