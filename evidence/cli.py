"""``puhui evidence``: keys, batch and record verification from files."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from evidence.batch import verify_batch, verify_record
from evidence.chain import verify_chain
from evidence.errors import EvidenceError, KeyMismatch
from evidence.keys import generate_key, key_id, load_public_key, public_key_pem, save_private_key
from evidence.merkle import InclusionProof
from evidence.vectors import record_proof_document, write_vectors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("keygen", help="generate a P-256 key (PKCS#8 PEM, mode 0600)")
    p.add_argument("--out", type=Path, required=True, help="private key file to create")
    p.set_defaults(func=keygen)

    p = sub.add_parser("verify-batch", help="verify batch files (signature, root, chain)")
    p.add_argument("--key", type=Path, required=True, help="gateway public key (PEM or DER)")
    p.add_argument("batches", type=Path, nargs="+", help="batch files in chain order")
    p.set_defaults(func=_verify_batches)

    p = sub.add_parser("prove", help="write a stand-alone proof document for one record")
    p.add_argument("--key", type=Path, required=True, help="gateway public key")
    p.add_argument("--index", type=int, required=True, help="record index in the batch")
    p.add_argument("batch", type=Path)
    p.set_defaults(func=_prove)

    p = sub.add_parser("verify-record", help="verify a proof document from 'prove' with a pinned key")
    p.add_argument(
        "--key",
        type=Path,
        required=True,
        help="the gateway's public key from a source you trust (its enrolment, the aggregator's key "
        "list); the key a proof document carries is never trusted",
    )
    p.add_argument("proof", type=Path)
    p.set_defaults(func=_verify_record)

    p = sub.add_parser("make-vectors", help="rewrite the test vectors (fixed test key)")
    p.add_argument("directory", type=Path, nargs="?", default=Path("docs/vectors"))
    p.set_defaults(func=_make_vectors)


def _fail(message: str) -> int:
    print(f"puhui evidence: {message}", file=sys.stderr)
    return 1


def keygen(args: argparse.Namespace) -> int:
    """Create a P-256 key at ``args.out`` (0600, never overwritten); print its id and public key."""
    key = generate_key()
    try:
        save_private_key(key, args.out)
    except EvidenceError as exc:
        return _fail(str(exc))
    print(f"key id {key.key_id}\n{public_key_pem(key.public_key).decode()}", end="")
    return 0


def _verify_batches(args: argparse.Namespace) -> int:
    try:
        key = load_public_key(args.key.read_bytes())
        verified = [verify_batch(path.read_bytes(), key) for path in args.batches]
    except (OSError, EvidenceError) as exc:
        return _fail(str(exc))
    for path, v in zip(args.batches, verified, strict=True):
        print(f"OK {path}: {v.header.label}, {v.header.count} records, root {v.header.root}")
    report = verify_chain((v.header, v.sealed.header_sha256) for v in verified)
    if len(verified) > 1 and not report.ok:
        return _fail(f"chain: {report}")
    return 0


def _prove(args: argparse.Namespace) -> int:
    try:
        key = load_public_key(args.key.read_bytes())
        verified = verify_batch(args.batch.read_bytes(), key)
    except (OSError, EvidenceError) as exc:
        return _fail(str(exc))
    if not 0 <= args.index < verified.header.count:
        return _fail(f"index {args.index} outside the batch's {verified.header.count} records")
    doc = record_proof_document(verified.sealed, args.index, key)
    print(json.dumps(doc, indent=2))
    return 0


def _verify_record(args: argparse.Namespace) -> int:
    try:
        key = load_public_key(args.key.read_bytes())
    except (OSError, EvidenceError) as exc:
        return _fail(f"{args.key}: {exc}")
    trusted = key_id(key)
    try:
        doc = json.loads(args.proof.read_text())
        carried = doc.get("public_key_pem")
        if carried is not None and key_id(load_public_key(carried)) != trusted:
            raise KeyMismatch(
                f"the proof carries key {key_id(load_public_key(carried))}, the trusted key ({args.key}) "
                f"is {trusted}"
            )
        header = verify_record(
            doc["record"].encode("ascii"),
            InclusionProof.from_json(doc["proof"]),
            doc["header"].encode("ascii"),
            base64.b64decode(doc["signature"]),
            key,
        )
    except (OSError, ValueError, KeyError, EvidenceError) as exc:
        return _fail(f"{args.proof}: NOT VERIFIED: {exc}")
    print(f"OK: record {doc['proof']['index']} of {header.label}, signed by key {trusted} ({args.key})")
    return 0


def _make_vectors(args: argparse.Namespace) -> int:
    for path in write_vectors(args.directory):
        print(path)
    return 0
