"""Checkpoints of the evidence store: sign how much is held, and check a store against them.

The log is every stored batch in the order it was stored (``batches.id``), one leaf each
(:func:`evidence.checkpoint.log_leaf`). A checkpoint signs the log's size and root and each
gateway's chain head. :func:`audit` says what a store lost since a checkpoint (naming the
gateway and the batches); :func:`prove_extension` checks that a later checkpoint extends an
earlier one. Format and reasoning: docs/evidence-format.md, "Checkpoints".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aggregator.errors import AggregatorError
from aggregator.store import SQLiteEvidenceStore
from evidence.checkpoint import (
    Checkpoint,
    chain_heads,
    consistency_proof,
    log_leaf,
    sign_checkpoint,
    verify_checkpoint,
    verify_consistency,
)
from evidence.errors import EvidenceError
from evidence.keys import GatewayKey, load_private_key, load_public_key
from evidence.merkle import leaf_hash, merkle_root


def _leaf_hashes(entries: Sequence[tuple[str, int, str]]) -> list[bytes]:
    return [leaf_hash(log_leaf(*e)) for e in entries]


def make_checkpoint(store: SQLiteEvidenceStore, key: GatewayKey, *, created_ms: int) -> Checkpoint:
    """Sign the store's log as it stands."""
    entries = store.batch_log()
    return sign_checkpoint(
        key,
        size=len(entries),
        root=merkle_root(_leaf_hashes(entries)),
        chains=chain_heads(entries),
        created_ms=created_ms,
    )


def audit(store: SQLiteEvidenceStore, checkpoint: Checkpoint) -> list[str]:
    """What the store no longer holds of what ``checkpoint`` signed (empty: all of it)."""
    entries = store.batch_log()
    problems = [
        f"gateway {gateway}: the checkpoint holds its chain at seq {head.seq} "
        f"(header {head.header_sha256[:16]}…); {_what_store_has(entries, gateway)}"
        for gateway, head in checkpoint.chains.items()
        if (gateway, head.seq, head.header_sha256) not in set(entries)
    ]
    if len(entries) < checkpoint.size:
        problems.append(f"the store holds {len(entries)} batches, the checkpoint {checkpoint.size}")
    elif merkle_root(_leaf_hashes(entries[: checkpoint.size])) != checkpoint.root:
        problems.append(
            f"the first {checkpoint.size} batches stored no longer give the checkpoint's root: "
            "batches were removed, replaced or reordered"
        )
    return problems


def _what_store_has(entries: Sequence[tuple[str, int, str]], gateway: str) -> str:
    seqs = [s for g, s, _ in entries if g == gateway]
    return f"the store's chain ends at seq {max(seqs)}" if seqs else "the store has no batch of it"


def prove_extension(store: SQLiteEvidenceStore, earlier: Checkpoint, later: Checkpoint) -> None:
    """Raise :class:`evidence.errors.InvalidProof` unless ``later`` extends ``earlier``; the
    proof is computed from the store's log and checked against the two signed roots only."""
    leaves = _leaf_hashes(store.batch_log()[: later.size])
    if len(leaves) < later.size:
        raise EvidenceError(f"the store holds {len(leaves)} batches, the later checkpoint {later.size}")
    proof = consistency_proof(leaves, earlier.size) if earlier.size else []
    if earlier.size:
        verify_consistency(earlier.size, later.size, earlier.root, later.root, proof)


# -- command line (puhui aggregator checkpoint ...) ---------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="checkpoint_action", metavar="ACTION", required=True)
    p = sub.add_parser("sign", help="sign a checkpoint of the evidence store as it stands")
    p.add_argument("--db", type=Path, required=True, help="aggregator SQLite database")
    p.add_argument("--key", type=Path, required=True, help="aggregator private key (PKCS#8 PEM, 0600)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.set_defaults(func=_sign)
    p = sub.add_parser("verify", help="check a store against a checkpoint (and an earlier one)")
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--issuer", type=Path, required=True, help="the aggregator's public key, pinned")
    p.add_argument("--since", type=Path, help="an earlier checkpoint the checkpoint must extend")
    p.add_argument("checkpoint", type=Path)
    p.set_defaults(func=_verify)


def _fail(message: str) -> int:
    print(f"puhui aggregator checkpoint: {message}", file=sys.stderr)
    return 1


def _sign(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
        store = SQLiteEvidenceStore(args.db)
        try:
            cp = make_checkpoint(store, key, created_ms=time.time_ns() // 1_000_000)
            store.save_checkpoint(cp.size, cp.created_ms, cp.to_bytes())  # served by the API
        finally:
            store.close()
        args.out.write_bytes(cp.to_bytes())
    except (OSError, EvidenceError, AggregatorError) as exc:
        return _fail(str(exc))
    print(f"checkpoint {args.out}: {cp.size} batches, {len(cp.chains)} gateways, root {cp.root.hex()[:16]}…")
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        issuer = load_public_key(args.issuer.read_bytes())
        cp = verify_checkpoint(args.checkpoint.read_bytes(), issuer)
        earlier = None if args.since is None else verify_checkpoint(args.since.read_bytes(), issuer)
        store = SQLiteEvidenceStore(args.db)
        try:
            problems = audit(store, cp)
            if earlier is not None and not problems:
                prove_extension(store, earlier, cp)
        finally:
            store.close()
    except (OSError, EvidenceError) as exc:
        return _fail(f"{args.checkpoint}: NOT VERIFIED: {exc}")
    if problems:
        return _fail(f"{args.checkpoint}: NOT VERIFIED:\n  " + "\n  ".join(problems))
    since = f", extends {args.since} ({earlier.size} batches)" if earlier is not None else ""
    print(f"OK {args.checkpoint}: {cp.size} batches of {len(cp.chains)} gateways all held{since}")
    return 0
