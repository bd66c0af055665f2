"""``puhui verify PACKAGE --issuer KEY``: check an evidence package with nothing but the
package and a pinned aggregator key (docs/evidence-package.md).

:func:`verify_package` checks, in this order: the container (canonical zip, every member in
the manifest with its sha256, nothing more), the aggregator key (the pinned one, or one the
package's signed key list reaches from it), the gateway's enrolment and keys, every batch
(signature with the gateway key valid for its sequence number, Merkle root) and the hash
chain between them, and finally the statement itself with
:func:`aggregator.methodology.verify.verify_statement` over the package's contents: its
signature, its parameter set, its batches, the credited records and the recomputed ER.

Plausibility verdicts are the aggregator's (``aggregator/verdicts.json``): recomputing them
needs state the package does not hold (counter readings before the period, the aggregator's
clock at receipt, its limits). They are not taken on trust: the statement signs which
intervals were implausible and why, so a changed verdict changes the recomputed statement.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import io
import json
import struct
import sys
import zipfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.methodology.errors import MethodologyError
from aggregator.methodology.params import LoadedParameterSet, parse_parameter_set
from aggregator.methodology.statements import Statement, parse_statement
from aggregator.methodology.verify import verify_statement
from aggregator.package import (
    ENROLMENT,
    FORMAT,
    GATEWAY_KEYS,
    KEY_LIST,
    MANIFEST,
    ROLES,
    STATEMENT,
    VERDICTS,
    VERDICTS_FORMAT,
    batch_name,
    member_order,
    write_zip,
)
from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from evidence.batch import GENESIS_PREV, SealedBatch, parse_batch
from evidence.enrolment import parse_enrolment
from evidence.errors import EvidenceError
from evidence.keylist import GatewayKeyEntry, verify_keylist
from evidence.keys import PublicKey, key_id, load_public_key
from evidence.records import IntervalRecord, Record, SessionRecord, decode_record
from puhui.verify_sessions import check_chain_sessions, check_sessions

MAX_PACKAGE_BYTES = 2 << 30  # a month of a 35-meter site is tens of MB
MAX_MEMBERS = 1_000_000


class PackageInvalid(Exception):
    """The package cannot be read as one: the message names the member and what is wrong."""


@dataclass(slots=True)
class PackageReport:
    """What was checked, and every problem found (empty: verified)."""

    statement_id: str = "?"
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recomputed_er_tco2e: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f"  checked: {c}" for c in self.checked]
        if self.ok:
            return "\n".join(
                [f"VERIFIED statement {self.statement_id}: ER {self.recomputed_er_tco2e!r} tCO2e", *lines]
            )
        return "\n".join(
            [
                f"NOT VERIFIED statement {self.statement_id}:",
                *(f"  FAILED: {p}" for p in self.problems),
                *lines,
            ]
        )


@dataclass(frozen=True, slots=True)
class PackageContents:
    """The members of a package whose container and manifest checked out."""

    manifest: dict[str, Any]
    members: dict[str, bytes]

    def role(self, role: str) -> list[str]:
        return [m["name"] for m in self.manifest["members"] if m["role"] == role]


# -- reading the container ---------------------------------------------------------------


def read_package(data: bytes) -> PackageContents:
    """Open the zip, check it is the canonical zip of its members and that the manifest lists
    every other member with its sha256; raise :class:`PackageInvalid` naming what failed."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise PackageInvalid(f"package: {len(data)} bytes, more than {MAX_PACKAGE_BYTES}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > MAX_PACKAGE_BYTES:
                raise PackageInvalid("package: too many members or too many bytes")
            names = [i.filename for i in infos]
            for info in infos:
                _check_entry(info)
            members = {n: _read_member(zf, n) for n in names}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError,
            RuntimeError, struct.error) as exc:  # fmt: skip
        raise PackageInvalid(f"package: not a readable zip file: {exc}") from exc
    if len(members) != len(names):
        raise PackageInvalid("package: a member name occurs twice")
    if MANIFEST not in members:
        raise PackageInvalid(f"package: no {MANIFEST}")
    manifest = _manifest(members[MANIFEST])
    _check_members(manifest, members)
    _check_canonical(data, names, members)
    return PackageContents(manifest, members)


def _check_entry(info: zipfile.ZipInfo) -> None:
    """Stored, no flags (encryption, data descriptors), no extras: the canonical writer's entries."""
    if (info.compress_type, info.flag_bits, info.extra, info.comment) != (zipfile.ZIP_STORED, 0, b"", b""):
        raise PackageInvalid(
            f"{info.filename}: zip entry is not stored plainly (method {info.compress_type}, "
            f"flags {info.flag_bits:#x}, {len(info.extra)} extra bytes): changed in the package"
        )


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, RuntimeError, ValueError, NotImplementedError, EOFError) as exc:
        raise PackageInvalid(f"{name}: changed in the package ({exc})") from exc


def _manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        ok = (
            isinstance(manifest, dict)
            and manifest.get("format") == FORMAT
            and all(
                isinstance(m, dict) and set(m) == {"name", "role", "sha256", "size"} and m["role"] in ROLES
                for m in manifest["members"]
            )
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PackageInvalid(f"{MANIFEST}: not a {FORMAT} manifest: {exc}") from exc
    if not ok:
        raise PackageInvalid(
            f"{MANIFEST}: not a {FORMAT} manifest (format, members[] with name, role, sha256, size)"
        )
    return dict(manifest)


def _check_members(manifest: dict[str, Any], members: dict[str, bytes]) -> None:
    listed = {m["name"]: m for m in manifest["members"]}
    unlisted = sorted(set(members) - set(listed) - {MANIFEST})
    if unlisted:
        raise PackageInvalid(f"package: members not in the manifest: {unlisted}")
    for name, entry in sorted(listed.items()):
        if name not in members:
            raise PackageInvalid(f"{name}: listed in the manifest, not in the package")
        digest = hashlib.sha256(members[name]).hexdigest()
        if digest != entry["sha256"] or len(members[name]) != entry["size"]:
            raise PackageInvalid(
                f"{name}: sha256 {digest} ({len(members[name])} bytes), the manifest names "
                f"{entry['sha256']} ({entry['size']} bytes)"
            )


def _check_canonical(data: bytes, names: list[str], members: dict[str, bytes]) -> None:
    if names != member_order(names):
        raise PackageInvalid(f"package: members are not in canonical order ({MANIFEST} first, then by name)")
    canonical = write_zip([(n, members[n]) for n in names])
    if canonical != data:
        at = next(
            (i for i, (a, b) in enumerate(zip(canonical, data, strict=False)) if a != b),
            min(len(canonical), len(data)),
        )
        raise PackageInvalid(
            f"package: byte {at} differs from the canonical zip of its members (zip headers changed, "
            f"or bytes added or cut: {len(data)} bytes, canonical {len(canonical)})"
        )


# -- the evidence source over the package --------------------------------------------------


class PackageSource:
    """:class:`aggregator.methodology.source.EvidenceSource` over a package's members."""

    def __init__(
        self,
        gateway: str,
        meters: list[MeterInfo],
        batches: dict[int, bytes],
        keys: dict[str, PublicKey],
        verdicts: dict[tuple[int, int], tuple[str, ...]],
    ) -> None:
        self.gateway = gateway
        self._meters = meters
        self._batches = batches
        self._keys = keys
        self._verdicts = verdicts

    def meters(self) -> list[MeterInfo]:
        return list(self._meters)

    def attested_intervals(
        self,
        *,
        gateway: str | None = None,
        meters: Collection[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[AttestedInterval]:
        if gateway not in (None, self.gateway):
            return
        for ref, index, rec, _ in self._leaves():
            if not isinstance(rec, IntervalRecord) or (meters is not None and rec.meter not in meters):
                continue
            if (start is None or rec.start >= start) and (end is None or rec.end <= end):
                yield AttestedInterval(ref, index, rec, self._verdicts.get((ref.seq, index), ()))

    def batch_bytes(self, gateway: str, seq: int) -> bytes | None:
        return self._batches.get(seq) if gateway == self.gateway else None

    def chain_sessions(
        self, *, gateway: str | None = None, charger: str | None = None, transaction_id: str | None = None
    ) -> list[tuple[BatchRef, int, bytes]]:
        """``(batch, leaf index, exact bytes)`` of the OCPP session records in the package's
        batches, by seq and index (as :class:`aggregator.store.protocols.ChainSessionStore`)."""
        if gateway not in (None, self.gateway):
            return []
        return [
            (ref, index, raw)
            for ref, index, rec, raw in self._leaves()
            if isinstance(rec, SessionRecord)
            and charger in (None, rec.charger)
            and transaction_id in (None, rec.transaction_id)
        ]

    def _leaves(self) -> Iterator[tuple[BatchRef, int, Record, bytes]]:
        """Every record of the package's batches, by seq and index: its batch, index, decoded
        record and exact bytes."""
        for seq in sorted(self._batches):
            sealed = parse_batch(self._batches[seq])
            h = sealed.header
            ref = BatchRef(self.gateway, seq, sealed.header_sha256, h.root, h.key_id)
            for index, raw in enumerate(sealed.records):
                yield ref, index, decode_record(raw), raw

    def gateway_public_key(self, gateway: str, key_id: str) -> PublicKey | None:
        return self._keys.get(key_id) if gateway == self.gateway else None


# -- verification ---------------------------------------------------------------------------


def verify_package(
    data: bytes, issuer_key: PublicKey, network_keys: Mapping[str, PublicKey] | None = None
) -> PackageReport:
    """Verify an evidence package against a pinned aggregator key (and, for imported sessions,
    the networks' keys pinned here, by network name); the report lists what was checked and
    every problem found."""
    report = PackageReport()
    try:
        contents = read_package(data)
        report.checked.append(
            f"container: canonical zip, {len(contents.members) - 1} members match the manifest"
        )
        document = contents.members[STATEMENT]
        st = parse_statement(document)
        report.statement_id = st.id
        _verify_contents(contents, st, issuer_key, report, network_keys or {})
    except (PackageInvalid, EvidenceError, MethodologyError) as exc:
        report.problems.append(str(exc))
    except KeyError as exc:
        report.problems.append(f"package: member {exc} is missing")
    return report


def _verify_contents(
    contents: PackageContents,
    st: Statement,
    pinned: PublicKey,
    report: PackageReport,
    network_keys: Mapping[str, PublicKey],
) -> None:
    gateway = st.gateway
    if contents.manifest.get("statement") != st.id or contents.manifest.get("gateway") != gateway:
        report.problems.append(
            f"{MANIFEST}: names statement {contents.manifest.get('statement')}, the package holds {st.id}"
        )
        return
    issuer, listed_keys = _issuer(contents, st, pinned, report)
    if issuer is None:
        return
    entries = _gateway_keys(contents, gateway, listed_keys, report)
    meters = _enrolment(contents, gateway, entries, report)
    batches = {_seq(n): contents.members[n] for n in contents.role("batch")}
    _check_batches(gateway, batches, entries, report)
    roles = {m["name"]: m["role"] for m in contents.manifest["members"]}
    sessions = check_sessions(contents.members, roles, st.body, network_keys, report.checked, report.problems)
    check_chain_sessions(st.body, gateway, batches, report.checked, report.problems)
    if report.problems:
        return
    params = _parameter_set(contents)
    keys = {e.key_id: load_public_key(e.public_key) for e in entries}
    source = PackageSource(gateway, meters, batches, keys, _verdicts(contents, gateway))
    earlier = {n.removeprefix("supplemented/").removesuffix(".statement"): contents.members[n]
               for n in contents.role("supplemented")}  # fmt: skip
    candidates = [params] + [
        parse_parameter_set(contents.members[n], n) for n in contents.role("candidate-set")
    ]
    result = verify_statement(
        contents.members[STATEMENT], issuer_key=issuer, source=source, params=params, earlier=earlier.get,
        candidates=candidates, sessions=sessions,
    )  # fmt: skip
    report.problems += [f"statement: {p}" for p in result.problems]
    if result.ok:
        report.recomputed_er_tco2e = result.recomputed_er_tco2e
        report.checked += [
            f"statement: signature by aggregator key {st.key_id}",
            f"parameter set: {params.id} {params.version} sha256 {params.sha256}",
            f"statement: {result.batches_checked} batches it relies on re-verified; credited records and the "
            f"aggregator's plausibility verdicts are the ones it names",
            f"statement: recomputed ER {result.recomputed_er_tco2e!r} tCO2e equals the signed figures",
        ]
        if sessions is not None:
            level = st.body.get("assurance", {}).get("levels", {}).get("platform_attested", {})
            report.checked.append(
                f"statement: platform_attested recomputed from the package's session sources: "
                f"{level.get('kwh')!r} kWh"
            )


def _issuer(
    contents: PackageContents, st: Statement, pinned: PublicKey, report: PackageReport
) -> tuple[PublicKey | None, list[GatewayKeyEntry] | None]:
    """The key that signed the statement: the pinned one, or one the package's signed key list
    reaches from it by endorsements; and the gateway keys that list vouches for."""
    if KEY_LIST not in contents.members:
        report.checked.append(f"aggregator key: the pinned key {key_id(pinned)} (no key list in the package)")
        return pinned, None
    try:
        keylist = verify_keylist(contents.members[KEY_LIST], pinned)
    except EvidenceError as exc:
        report.problems.append(f"{KEY_LIST}: {exc}")
        return None, None
    key = keylist.aggregator_key_at(int(st.body["created_ms"]), st.key_id)
    if key is None:
        report.problems.append(
            f"{KEY_LIST}: statement signed by key {st.key_id}, which the list (trusted from "
            f"{key_id(pinned)}) does not give as valid at {st.body['created_ms']} ms"
        )
        return None, None
    report.checked.append(
        f"aggregator key: {st.key_id}, from the key list signed by {keylist.issuer}, trusted "
        f"from the pinned {key_id(pinned)}"
    )
    return key, [g for g in keylist.gateway_keys if g.gateway == st.gateway]


def _gateway_keys(
    contents: PackageContents, gateway: str, signed: list[GatewayKeyEntry] | None, report: PackageReport
) -> list[GatewayKeyEntry]:
    try:
        raw = json.loads(contents.members[GATEWAY_KEYS])
        entries = [GatewayKeyEntry(**k) for k in raw["gateway_keys"]]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PackageInvalid(f"{GATEWAY_KEYS}: not a list of gateway keys: {exc}") from exc
    if any(e.gateway != gateway for e in entries):
        report.problems.append(f"{GATEWAY_KEYS}: holds keys of another gateway than {gateway}")
    if signed is None:
        return entries
    if sorted(entries, key=repr) != sorted(signed, key=repr):
        report.problems.append(f"{GATEWAY_KEYS}: differs from the gateway keys in the signed key list")
    report.checked.append(
        f"gateway keys: {len(signed)} key(s) of {gateway}, as the signed key list gives them"
    )
    return signed


def _enrolment(
    contents: PackageContents, gateway: str, entries: list[GatewayKeyEntry], report: PackageReport
) -> list[MeterInfo]:
    doc = parse_enrolment(contents.members[ENROLMENT])
    if doc.gateway != gateway:
        report.problems.append(f"{ENROLMENT}: enrols {doc.gateway}, the statement is of {gateway}")
    if not any(e.key_id == doc.key_id and e.public_key == doc.public_key for e in entries):
        report.problems.append(f"{ENROLMENT}: key {doc.key_id} is not among the gateway's keys")
    report.checked.append(
        f"enrolment: {gateway} self-signed with key {doc.key_id}, {len(doc.meters)} meter(s)"
    )
    return [
        MeterInfo(gateway, m.id, m.scenario, m.rated_power_kw, m.meter_class, doc.region, m.calibrated_until)
        for m in doc.meters
    ]


def _seq(name: str) -> int:
    stem = name.removeprefix("batches/").removesuffix(".batch")
    if not stem.isdigit() or batch_name(int(stem)) != name:
        raise PackageInvalid(f"{name}: a batch member is named batches/NNNNNNNNNN.batch")
    return int(stem)


def _check_batches(
    gateway: str, batches: dict[int, bytes], entries: list[GatewayKeyEntry], report: PackageReport
) -> None:
    """Each batch: its name, the gateway key valid for its seq and time, the chain to the one before."""
    parsed: dict[int, SealedBatch] = {}
    for seq, data in sorted(batches.items()):
        try:
            sealed = parsed[seq] = parse_batch(data)
        except EvidenceError as exc:
            report.problems.append(f"{batch_name(seq)}: {exc}")
            continue
        h = sealed.header
        if (h.gateway, h.seq) != (gateway, seq):
            report.problems.append(f"{batch_name(seq)}: holds batch {h.gateway}#{h.seq}")
        valid = _key_valid(entries, seq, h.created_ms)
        if valid is None or valid.key_id != h.key_id:
            report.problems.append(
                f"{batch_name(seq)}: signed with key {h.key_id}, the key valid for "
                f"{gateway}#{seq} is {valid.key_id if valid else 'none'}"
            )
    gaps = []
    for seq, sealed in parsed.items():
        before = parsed.get(seq - 1)
        if before is not None and sealed.header.prev != before.header_sha256:
            report.problems.append(
                f"chain: {gateway}#{seq} does not follow {gateway}#{seq - 1} (prev differs)"
            )
        elif seq == 1 and sealed.header.prev != GENESIS_PREV:
            report.problems.append(f"chain: {gateway}#1 does not start the chain")
        elif before is None and seq - 1 in range(min(parsed), max(parsed)):
            gaps.append(seq - 1)
    if parsed:
        note = f" (#{gaps} not in the package)" if gaps else ""
        report.checked.append(
            f"chain: {gateway}#{min(parsed)}..#{max(parsed)}, {len(parsed)} batches linked by "
            f"header hash{note}"
        )


def _key_valid(entries: list[GatewayKeyEntry], seq: int, created_ms: int) -> GatewayKeyEntry | None:
    """The key that signs ``seq``: the latest to start at or below it, if not revoked by then."""
    started = [e for e in entries if e.valid_from_seq <= seq]
    if not started:
        return None
    key = max(started, key=lambda e: e.valid_from_seq)
    return key if key.revoked_from_ms is None or created_ms < key.revoked_from_ms else None


def _parameter_set(contents: PackageContents) -> LoadedParameterSet:
    names = contents.role("parameter-set")
    if len(names) != 1:
        raise PackageInvalid(f"package: {len(names)} parameter set members, expected one")
    return parse_parameter_set(contents.members[names[0]], names[0])


def _verdicts(contents: PackageContents, gateway: str) -> dict[tuple[int, int], tuple[str, ...]]:
    try:
        raw = json.loads(contents.members[VERDICTS])
        if raw["format"] != VERDICTS_FORMAT or raw["gateway"] != gateway:
            raise ValueError(f"not {VERDICTS_FORMAT} of {gateway}")
        return {
            (int(v["seq"]), int(v["index"])): tuple(str(i) for i in v["issues"]) for v in raw["implausible"]
        }
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PackageInvalid(f"{VERDICTS}: {exc}") from exc


# -- command line ---------------------------------------------------------------------------


class _NotAKey(Exception):
    """A key file given on the command line holds no public key."""


def _public_key(path: Path) -> PublicKey:
    data = path.read_bytes()
    try:
        return load_public_key(data)
    except (EvidenceError, ValueError, binascii.Error) as exc:
        raise _NotAKey(f"{path}: not a public key: {exc}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", type=Path, help="an evidence package (.zip, docs/evidence-package.md)")
    parser.add_argument(
        "--issuer", type=Path, required=True, help="the aggregator's public key, pinned (PEM or DER)"
    )
    parser.add_argument(
        "--network-key", action="append", default=[], metavar="NETWORK=KEY", type=_network_key_arg,
        help="pin a charging network's manifest key (PEM) for the imported sessions a statement lists; "
        "repeatable (without it the package's copy of the key is used, and the report says so)",
    )  # fmt: skip
    parser.set_defaults(func=_run)


def _network_key_arg(text: str) -> tuple[str, Path]:
    network, sep, path = text.partition("=")
    if not sep or not network or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NETWORK=KEY.pem")
    return network, Path(path)


def _run(args: argparse.Namespace) -> int:
    try:
        data = args.package.read_bytes()
        issuer = _public_key(args.issuer)
        networks = {name: _public_key(path) for name, path in args.network_key}
    except OSError as exc:
        print(f"puhui verify: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except _NotAKey as exc:
        print(f"puhui verify: {exc}", file=sys.stderr)
        return 2
    report = verify_package(data, issuer, networks)
    print(f"{args.package}:\n{report}", file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


__all__ = [
    "PackageContents",
    "PackageInvalid",
    "PackageReport",
    "PackageSource",
    "read_package",
    "verify_package",
]
