"""RFC 6962 / RFC 9162 Merkle trees over SHA-256.

- leaf hash = SHA-256(0x00 || leaf bytes); node hash = SHA-256(0x01 || left || right);
- the root of an empty tree is SHA-256 of the empty string;
- the tree splits at the largest power of two below n (computed here level by level:
  an unpaired last node is carried up unchanged, which yields the same tree);
- an inclusion proof is the audit path of sibling hashes from the leaf up; it is checked
  with the algorithm of RFC 9162 section 2.1.3.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from evidence.errors import InvalidProof

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf (a record's exact bytes)."""
    return _sha256(b"\x00" + data).digest()


def leaf_hashes(leaves: Iterable[bytes]) -> list[bytes]:
    """:func:`leaf_hash` of each leaf, in order (no Python call per leaf)."""
    sha = _sha256
    return [sha(b"\x00" + d).digest() for d in leaves]


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    sha = _sha256
    pairs = iter(level)
    nxt = [
        sha(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs, strict=False)
    ]  # an odd last is carried
    if len(level) % 2:
        nxt.append(level[-1])
    return nxt


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root of the tree over the given leaf hashes (in order)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level: Sequence[bytes] = leaf_hashes
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_root_of(leaves: Sequence[bytes]) -> bytes:
    """Root of the tree over the given leaf bytes."""
    return merkle_root(leaf_hashes(leaves))


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Audit path proving that leaf ``index`` is in a tree of ``size`` leaves."""

    index: int
    size: int
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "path": [h.hex() for h in self.path]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> InclusionProof:
        try:
            return cls(int(obj["index"]), int(obj["size"]), tuple(bytes.fromhex(h) for h in obj["path"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidProof(f"inclusion proof is malformed: {exc}") from exc


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> InclusionProof:
    """The audit path for leaf ``index`` among ``leaf_hashes``."""
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise IndexError(f"leaf index {index} outside a tree of {size} leaves")
    path: list[bytes] = []
    level: Sequence[bytes] = leaf_hashes
    i = index
    while len(level) > 1:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        level = _next_level(level)
        i //= 2
    return InclusionProof(index, size, tuple(path))


def root_from_proof(leaf: bytes, proof: InclusionProof) -> bytes:
    """Recompute the root from a leaf hash and its audit path (RFC 9162 2.1.3.2)."""
    if not 0 <= proof.index < proof.size:
        raise InvalidProof(f"leaf index {proof.index} outside a tree of {proof.size} leaves")
    fn, sn = proof.index, proof.size - 1
    r = leaf
    for p in proof.path:
        if sn == 0:
            raise InvalidProof("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> None:
    """Raise :class:`InvalidProof` unless ``leaf`` (a leaf hash) is in the tree with ``root``."""
    if root_from_proof(leaf, proof) != root:
        raise InvalidProof(
            f"inclusion proof for leaf {proof.index} of {proof.size} does not lead to the signed root"
        )
