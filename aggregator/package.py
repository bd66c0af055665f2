"""Portable evidence packages (``puhui-evidence-package/1``): one statement and everything a
verifier needs to check it without the aggregator's database.

A package is a zip file written canonically (stored, fixed timestamps, members in a fixed
order), so one set of members has exactly one spelling: the statement, every signed batch it
relies on (the exact bytes as received), the gateway's enrolment document and keys, the
parameter set file, the aggregator's keys and the aggregator's plausibility verdicts, and for
a statement listing imported sessions their source files, the networks' signed manifests and
pinned keys, listed with their sha256 in ``manifest.json``. Format and checks: docs/evidence-package.md;
the verifier: :mod:`puhui.verify`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.errors import AggregatorError
from aggregator.methodology.errors import MethodologyError
from aggregator.methodology.params import PARAMS_DIR, find_parameter_set
from aggregator.methodology.statements import Statement, parse_statement
from aggregator.methodology.store import StatementStore
from aggregator.store import SQLiteEvidenceStore

if TYPE_CHECKING:
    from aggregator.store import AnyEvidenceStore
from evidence.errors import EvidenceError
from evidence.keys import load_private_key

FORMAT = "puhui-evidence-package/1"
VERDICTS_FORMAT = "puhui-verdicts/1"
MANIFEST = "manifest.json"
STATEMENT = "statement.statement"
ENROLMENT = "gateway/enrolment.enrolment"
GATEWAY_KEYS = "gateway/keys.json"
AGGREGATOR_KEYS = "aggregator/keys.json"
KEY_LIST = "aggregator/keylist.keys"
VERDICTS = "aggregator/verdicts.json"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
ROLES = (
    "statement",
    "batch",
    "enrolment",
    "gateway-keys",
    "parameter-set",
    "aggregator-keys",
    "key-list",
    "verdicts",
    "supplemented",  # a supplementary statement's earlier statements (what they credited is not again)
    "candidate-set",  # the other parameter sets the precedence rule weighed (methodology.selection)
    "network-keys",  # imported sessions (issue 24): the networks' pinned manifest keys
    "session-source",  # the exact bytes of a session file the statement's sessions came from
    "session-manifest",  # the network's signed manifest of that file
)
NETWORK_KEYS = "sessions/networks.json"
NETWORK_KEYS_FORMAT = "puhui-network-keys/1"
PINNED_BY = "the aggregator's evidence store (ev_networks), pinned with puhui aggregator networks add"


class PackageError(AggregatorError):
    """A package cannot be built: the statement, a batch or the parameter file is missing."""


def batch_name(seq: int) -> str:
    return f"batches/{seq:010d}.batch"


def session_source_name(sha256: str) -> str:
    return f"sessions/{sha256}.source"


def session_manifest_name(sha256: str) -> str:
    return f"sessions/{sha256}.manifest"


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, two-space indent, ASCII, a final newline: readable and one spelling."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode()


def write_zip(members: Sequence[tuple[str, bytes]]) -> bytes:
    """The canonical zip of ``members`` in this order: stored (no compression, so no
    compressor version changes the bytes), 1980-01-01 timestamps, mode 0644, no comments."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, data)
    return buf.getvalue()


def member_order(names: Sequence[str]) -> list[str]:
    """The manifest first, then every other member by name."""
    return [MANIFEST, *sorted(n for n in names if n != MANIFEST)]


def build_package(
    store: AnyEvidenceStore,
    statement_store: StatementStore,
    statement_id: str,
    params_dir: Path = PARAMS_DIR,
    *,
    keylist: bytes | None = None,
) -> bytes:
    """The evidence package of a stored statement; ``keylist`` is the aggregator's signed key
    list (:func:`aggregator.keys.key_list`), included when given."""
    document = statement_store.document(statement_id)
    if document is None:
        raise PackageError(f"no statement {statement_id} in the statement store")
    st = parse_statement(document)
    members: dict[str, tuple[str, bytes]] = {STATEMENT: ("statement", document)}
    issues = _add_batches(store, st, members)
    members[VERDICTS] = ("verdicts", canonical_json(_verdicts(st, issues)))
    _add_gateway(store, st.gateway, members)
    _add_parameter_set(st, params_dir, members)
    for entry in st.body.get("supplements", []):
        earlier = statement_store.document(str(entry["statement"]))
        if earlier is None:
            raise PackageError(f"statement {st.id} supplements {entry['statement']}, which is not stored")
        members[f"supplemented/{entry['statement']}.statement"] = ("supplemented", earlier)
    _add_sessions(store, st, members)
    keys = [_fields(k) for k in store.aggregator_keys()]
    members[AGGREGATOR_KEYS] = ("aggregator-keys", canonical_json({"aggregator_keys": keys}))
    if keylist is not None:
        members[KEY_LIST] = ("key-list", keylist)
    manifest = {
        "format": FORMAT,
        "statement": st.id,
        "gateway": st.gateway,
        "members": [
            {"name": n, "role": role, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for n, (role, data) in sorted(members.items())
        ],
    }
    all_members = {**{n: data for n, (_, data) in members.items()}, MANIFEST: canonical_json(manifest)}
    return write_zip([(n, all_members[n]) for n in member_order(list(all_members))])


def _add_batches(
    store: AnyEvidenceStore, st: Statement, members: dict[str, tuple[str, bytes]]
) -> dict[tuple[int, int], tuple[str, ...]]:
    """Every batch from the first to the last the statement relies on (the ones it lists, the
    ones holding intervals of its subject in its period, as the verifier finds them, and the ones
    holding the OCPP session records it lists), so
    the hash chain is checkable across them; returns the verdicts of the subject's intervals."""
    body = st.body
    meters = [m for u in body["subject"]["units"] for m in u["meters"]]
    held = list(
        store.attested_intervals(
            gateway=st.gateway, meters=meters, start=body["period"]["start"], end=body["period"]["end"]
        )
    )
    needed = {int(b["seq"]) for b in body["evidence"]["batches"]} | {ai.batch.seq for ai in held}
    chain = body["evidence"].get("chain_sessions") or {}  # OCPP session records it considered
    needed |= {int(item["seq"]) for item in chain.get("items", []) if item["gateway"] == st.gateway}
    if not needed:
        return {}
    for seq in range(min(needed), max(needed) + 1):
        data = store.batch_bytes(st.gateway, seq)
        if data is None and seq in needed:
            raise PackageError(f"batch {st.gateway}#{seq}: the statement relies on it, the store lacks it")
        if data is not None:  # a batch never received leaves a gap the verifier reports
            members[batch_name(seq)] = ("batch", data)
    return {(ai.batch.seq, ai.index): ai.issues for ai in held if ai.issues}


def _verdicts(st: Statement, issues: dict[tuple[int, int], tuple[str, ...]]) -> dict[str, Any]:
    return {
        "format": VERDICTS_FORMAT,
        "gateway": st.gateway,
        "implausible": [
            {"seq": seq, "index": index, "issues": list(found)}
            for (seq, index), found in sorted(issues.items())
        ],
    }


def _add_gateway(store: AnyEvidenceStore, gateway: str, members: dict[str, tuple[str, bytes]]) -> None:
    entry = next((g for g in store.gateways() if g.gateway == gateway), None)
    if entry is None or not entry.document:
        raise PackageError(f"gateway {gateway}: no enrolment document in the evidence store")
    members[ENROLMENT] = ("enrolment", entry.document)
    keys = [
        {
            "gateway": k.gateway,
            "key_id": k.key_id,
            "public_key": base64.b64encode(k.public_key_der).decode("ascii"),
            "valid_from_seq": k.valid_from_seq,
            "source": k.source,
            "revoked_from_ms": k.revoked_from_ms,
        }
        for k in entry.keys
    ]
    members[GATEWAY_KEYS] = ("gateway-keys", canonical_json({"gateway": gateway, "gateway_keys": keys}))


def _add_parameter_set(st: Statement, params_dir: Path, members: dict[str, tuple[str, bytes]]) -> None:
    ref = st.body["methodology"]["parameter_set"]
    loaded = find_parameter_set(ref["id"], ref["version"], ref["sha256"], params_dir)
    if loaded.path is None:  # find_parameter_set reads files: it always has one
        raise PackageError(f"parameter set {ref['id']} {ref['version']}: no file")
    data = loaded.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise PackageError(f"{loaded.path}: changed while it was being packaged")
    members[f"parameters/{loaded.path.name}"] = ("parameter-set", data)
    selection = st.body["methodology"].get("selection")
    for c in [] if selection is None else selection["candidates"]:
        if (c["id"], c["version"], c["sha256"]) == (ref["id"], ref["version"], ref["sha256"]):
            continue
        other = find_parameter_set(c["id"], c["version"], c["sha256"], params_dir)
        if other.path is None:
            raise PackageError(f"parameter set {c['id']} {c['version']}: no file")
        members[f"candidates/{c['sha256'][:16]}-{other.path.name}"] = (
            "candidate-set",
            other.path.read_bytes(),
        )


def _add_sessions(store: AnyEvidenceStore, st: Statement, members: dict[str, tuple[str, bytes]]) -> None:
    """For a statement listing imported sessions: every source file they came from with its
    signed manifest, and the network's pinned key (nothing for a statement without sessions)."""
    listed = st.body["evidence"].get("sessions")
    if not listed or not listed.get("items"):
        return
    network = str(listed["network"])
    if not isinstance(store, SQLiteEvidenceStore):  # imported sessions are kept in SQLite only
        raise PackageError(f"statement {st.id} lists sessions of {network}; this store keeps no sessions")
    entry = next((n for n in store.networks() if n.network == network), None)
    if entry is None:
        raise PackageError(f"network {network}: not enrolled in the evidence store (no pinned key)")
    for sha in sorted({str(item["source_sha256"]) for item in listed["items"]}):
        source = store.session_source(sha)
        if source is None:
            raise PackageError(f"session source {sha} of network {network}: the store does not keep it")
        members[session_source_name(sha)] = ("session-source", source[0])
        members[session_manifest_name(sha)] = ("session-manifest", source[1])
    key = {
        "network": entry.network,
        "key_id": entry.key_id,
        "public_key_pem": entry.public_key_pem,
        "region": entry.region,
        "added_ms": entry.added_ms,
        "pinned_by": PINNED_BY,
    }
    members[NETWORK_KEYS] = (
        "network-keys",
        canonical_json({"format": NETWORK_KEYS_FORMAT, "networks": [key]}),
    )


def _fields(entry: Any) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in entry.__slots__}


def write_package_file(args: Any, ref: str, fail: Callable[[str], int]) -> int:
    """``puhui aggregator reductions package``: resolve ``ref`` in ``args.db``, write ``args.out``."""
    from aggregator.keys import key_list, register_current

    try:
        store = SQLiteEvidenceStore(args.db)
        try:
            with StatementStore(args.db) as statements:
                st = statements.get(ref)
                if st is None:
                    return fail(f"no statement {ref}… in {args.db} (or the prefix names more than one)")
                keylist = None
                if args.key is not None:
                    key, now_ms = load_private_key(args.key), time.time_ns() // 1_000_000
                    register_current(store, key, now_ms)
                    keylist = key_list(store, key, now_ms).to_bytes()
                data = build_package(store, statements, st.id, args.params_dir, keylist=keylist)
        finally:
            store.close()
        args.out.write_bytes(data)
    except (AggregatorError, MethodologyError, EvidenceError, OSError) as exc:
        return fail(str(exc))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    batches = sum(n.startswith("batches/") for n in names)
    sources = sum(n.startswith("sessions/") and n.endswith(".source") for n in names)
    print(
        f"{args.out}: evidence package of statement {st.id}: {len(names)} members, {batches} batches, "
        f"{f'{sources} session sources, ' if sources else ''}{len(data)} bytes"
        f"{', signed key list' if keylist else ''}"
    )
    return 0
