"""Checkpoints: the aggregator's signed word on how much evidence it holds (``puhui-checkpoint/1``).

Hash chains prove the order of a gateway's batches, not that none was removed from the end.
An aggregator therefore keeps an append-only **log** of every batch it stored, in the order it
stored them, as an RFC 9162 Merkle tree (one leaf per batch, :func:`log_leaf`), and signs
**checkpoints** of it: the tree's size and root, with every gateway's chain head (highest
sequence number and that batch's header hash) at that size. See docs/evidence-format.md.

- A store cut back after a checkpoint no longer yields its root, and the checkpoint names
  the chain heads it must still reach: truncation is seen, and whose chain lost what.
- Two checkpoints are joined by a **consistency proof** (RFC 9162 section 2.1.4): the later
  tree extends the earlier one, so nothing the earlier one held was removed or changed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evidence.errors import InvalidProof, MalformedMessage
from evidence.keys import SIGNATURE_ALGORITHM, GatewayKey, PublicKey, key_id, verify_signature
from evidence.merkle import merkle_root, node_hash
from evidence.signed import canonical as _canonical
from evidence.signed import signature_line as _signature_line

FORMAT = "puhui-checkpoint/1"
_HEX64 = frozenset("0123456789abcdef")


def log_leaf(gateway: str, seq: int, header_sha256: str) -> bytes:
    """The log's leaf for one stored batch: its gateway, sequence number and header hash."""
    return _canonical({"gateway": gateway, "header_sha256": header_sha256, "seq": seq})


# -- consistency proofs (RFC 9162 section 2.1.4) -------------------------------------------------


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def consistency_proof(leaf_hashes: Sequence[bytes], first_size: int) -> list[bytes]:
    """The proof that the tree of the first ``first_size`` leaves is a prefix of the whole."""
    if not 0 < first_size <= len(leaf_hashes):
        raise ValueError(f"first size {first_size} outside 1..{len(leaf_hashes)}")
    return _subproof(first_size, leaf_hashes, True)


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [merkle_root(leaves)]
    k = _largest_power_of_two_below(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), merkle_root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), merkle_root(leaves[:k])]


def verify_consistency(
    first_size: int, second_size: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise :class:`InvalidProof` unless the tree (``second_size``, ``second_root``) extends the
    tree (``first_size``, ``first_root``) (RFC 9162 section 2.1.4.2)."""
    if not 0 < first_size <= second_size:
        raise InvalidProof(f"sizes {first_size} -> {second_size}: the log cannot shrink")
    if first_size == second_size:
        if proof or first_root != second_root:
            raise InvalidProof(f"two different roots for the same size {first_size}")
        return
    path = list(proof)
    if first_size & (first_size - 1) == 0:  # an exact power of two: the first root is a node
        path.insert(0, first_root)
    if not path:
        raise InvalidProof("empty consistency proof")
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidProof("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise InvalidProof(f"the log of {second_size} batches does not extend the log of {first_size}")


# -- checkpoint documents -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A gateway's chain as a checkpoint holds it: highest seq and that batch's header hash."""

    seq: int
    header_sha256: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed checkpoint: body bytes as signed, its fields, and the signature."""

    body: bytes
    issuer: str  # key id of the aggregator key that signed it
    created_ms: int
    size: int
    root: bytes
    chains: Mapping[str, ChainHead]
    signature: bytes

    def to_bytes(self) -> bytes:
        return self.body + b"\n" + _signature_line(self.issuer, self.signature) + b"\n"


def sign_checkpoint(
    key: GatewayKey, *, size: int, root: bytes, chains: Mapping[str, ChainHead], created_ms: int
) -> Checkpoint:
    """Sign the log's state: ``size`` leaves with ``root``, and each gateway's chain head."""
    body = _canonical(
        {
            "chains": {g: {"header_sha256": h.header_sha256, "seq": h.seq} for g, h in chains.items()},
            "created_ms": created_ms,
            "format": FORMAT,
            "issuer": key.key_id,
            "root": root.hex(),
            "size": size,
        }
    )
    return parse_checkpoint(body + b"\n" + _signature_line(key.key_id, key.sign(body)) + b"\n")


def parse_checkpoint(data: bytes) -> Checkpoint:
    """Split and validate a checkpoint document (its signature: :func:`verify_checkpoint`)."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise MalformedMessage("a checkpoint is a body line and a signature line, each ending in a newline")
    try:
        body, sig = json.loads(lines[0]), json.loads(lines[1])
        signature = base64.b64decode(sig["sig"], validate=True)
        chains = {
            str(g): ChainHead(int(c["seq"]), str(c["header_sha256"])) for g, c in body["chains"].items()
        }
        checkpoint = Checkpoint(
            lines[0], str(body["issuer"]), int(body["created_ms"]), int(body["size"]),
            bytes.fromhex(body["root"]), chains, signature,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, RecursionError) as exc:
        raise MalformedMessage(f"checkpoint is not valid: {exc}") from exc
    _check_form(body, sig, checkpoint, lines[0], lines[1])
    return checkpoint


def _check_form(body: Any, sig: Any, cp: Checkpoint, body_line: bytes, sig_line: bytes) -> None:
    if body.get("format") != FORMAT or sig.get("alg") != SIGNATURE_ALGORITHM:
        raise MalformedMessage(f"not a {FORMAT} document")
    if _canonical(body) != body_line or _signature_line(cp.issuer, cp.signature) != sig_line:
        raise MalformedMessage("checkpoint is not in canonical form")
    if sig.get("key_id") != cp.issuer:
        raise MalformedMessage("the signature line names another key than the body's issuer")
    if cp.size < 0 or len(cp.root) != 32:
        raise MalformedMessage(f"checkpoint size {cp.size} / root of {len(cp.root)} bytes")
    for gateway, head in cp.chains.items():
        if head.seq < 1 or len(head.header_sha256) != 64 or not set(head.header_sha256) <= _HEX64:
            raise MalformedMessage(f"checkpoint chain head of {gateway!r} is not a seq and a sha256")


def verify_checkpoint(data: bytes, issuer_key: PublicKey) -> Checkpoint:
    """Parse a checkpoint and check its signature with the aggregator's pinned key."""
    checkpoint = parse_checkpoint(data)
    if checkpoint.issuer != key_id(issuer_key):
        raise InvalidProof(
            f"checkpoint signed by key {checkpoint.issuer}, the trusted key is {key_id(issuer_key)}"
        )
    verify_signature(issuer_key, checkpoint.signature, checkpoint.body)
    return checkpoint


def chain_heads(leaves: Sequence[tuple[str, int, str]]) -> dict[str, ChainHead]:
    """Each gateway's highest-seq batch among ``(gateway, seq, header_sha256)`` leaves."""
    heads: dict[str, ChainHead] = {}
    for gateway, seq, header in leaves:
        if gateway not in heads or seq > heads[gateway].seq:
            heads[gateway] = ChainHead(seq, header)
    return dict(sorted(heads.items()))
