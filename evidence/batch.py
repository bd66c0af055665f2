"""Batches: records sealed under one signed header.

Wire and storage form (UTF-8/ASCII text, every line ends with ``\\n``)::

    line 1      header: canonical JSON (keys in this order)
                {"format":"puhui-batch/1","gateway":ID,"key_id":KID,"seq":N,
                 "prev":HEX64,"created_ms":MS,"count":C,"root":HEX64}
    line 2      signature: {"alg":"ECDSA-P256-SHA256","sig":BASE64(DER)}
    lines 3..   the C records, each exactly as encoded (the Merkle leaves)

The signature is over the exact bytes of line 1 (without its newline). ``prev`` is the
SHA-256 of the previous batch's line-1 bytes (64 zeros for ``seq`` 1). ``root`` is the
RFC 6962 root over the record lines' exact bytes. Verification never re-serialises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evidence.errors import BadSignature, CountMismatch, KeyMismatch, MalformedBatch, RootMismatch
from evidence.keys import SIGNATURE_ALGORITHM, GatewayKey, PublicKey, key_id, verify_signature
from evidence.merkle import (
    InclusionProof,
    inclusion_proof,
    leaf_hash,
    leaf_hashes,
    merkle_root,
    verify_inclusion,
)

FORMAT = "puhui-batch/1"
# Gateway ids appear in MQTT topics (evidence.wire): keep them topic-safe.
GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
GENESIS_PREV = "0" * 64
_HEADER_KEYS = ("format", "gateway", "key_id", "seq", "prev", "created_ms", "count", "root")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The signed part of a batch."""

    gateway: str
    key_id: str
    seq: int
    prev: str
    created_ms: int
    count: int
    root: str
    format: str = FORMAT

    def to_bytes(self) -> bytes:
        obj = {k: getattr(self, k) for k in _HEADER_KEYS}
        return _ENCODER.encode(obj).encode("ascii")

    @property
    def label(self) -> str:
        """How errors name this batch: ``gateway#seq``."""
        return f"batch {self.gateway}#{self.seq}"


def header_hash(header_bytes: bytes) -> str:
    """Hex SHA-256 of a header's exact bytes: what the next batch's ``prev`` holds."""
    return hashlib.sha256(header_bytes).hexdigest()


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """A batch as it travels and is stored: exact header bytes, signature, record bytes."""

    header: BatchHeader
    header_bytes: bytes
    signature: bytes
    records: tuple[bytes, ...]

    @property
    def header_sha256(self) -> str:
        return header_hash(self.header_bytes)

    def to_bytes(self) -> bytes:
        return b"\n".join((self.header_bytes, signature_line(self.signature), *self.records)) + b"\n"


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    """A batch whose signature, count and Merkle root have been checked."""

    sealed: SealedBatch
    leaf_hashes: tuple[bytes, ...]

    @property
    def header(self) -> BatchHeader:
        return self.sealed.header

    def proof(self, index: int) -> InclusionProof:
        return inclusion_proof(self.leaf_hashes, index)


def seal_batch(
    records: Sequence[bytes],
    *,
    key: GatewayKey,
    gateway: str,
    seq: int,
    prev: str,
    created_ms: int,
) -> SealedBatch:
    """Build and sign a batch over already-encoded records."""
    if seq < 1:
        raise ValueError(f"sequence numbers start at 1, got {seq}")
    if b"\n" in b"".join(records):  # one scan in C, not a call per record
        raise MalformedBatch(f"batch {gateway}#{seq}: a record contains a newline")
    root = merkle_root(leaf_hashes(records))
    header = BatchHeader(gateway, key.key_id, seq, prev, created_ms, len(records), root.hex())
    header_bytes = header.to_bytes()
    return SealedBatch(header, header_bytes, key.sign(header_bytes), tuple(records))


def parse_header(header_bytes: bytes) -> BatchHeader:
    """Parse and validate a header line. Raises :class:`MalformedBatch`."""
    try:
        obj = json.loads(header_bytes)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: deep nesting
        raise MalformedBatch(f"batch header is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or tuple(obj) != _HEADER_KEYS:
        got = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise MalformedBatch(f"batch header keys must be {list(_HEADER_KEYS)}, got {got}")
    label = f"batch {obj.get('gateway')!r}#{obj.get('seq')!r}"
    _check(obj, label)
    return BatchHeader(**obj)


def _check(obj: dict[str, Any], label: str) -> None:
    if obj["format"] != FORMAT:
        raise MalformedBatch(f"{label}: format {obj['format']!r} is not {FORMAT!r}")
    for k in ("gateway", "key_id", "prev", "root"):
        if not isinstance(obj[k], str) or not obj[k]:
            raise MalformedBatch(f"{label}: header.{k} must be a non-empty string")
    for k in ("seq", "created_ms", "count"):
        if not isinstance(obj[k], int) or isinstance(obj[k], bool) or obj[k] < 0:
            raise MalformedBatch(f"{label}: header.{k} must be a non-negative integer")
    if obj["seq"] < 1:
        raise MalformedBatch(f"{label}: header.seq must be >= 1")
    if not GATEWAY_ID.match(obj["gateway"]):
        raise MalformedBatch(f"{label}: header.gateway must match {GATEWAY_ID.pattern}")
    for k in ("prev", "root"):
        if len(obj[k]) != 64 or not _is_hex(obj[k]):
            raise MalformedBatch(f"{label}: header.{k} must be 64 lowercase hex digits")


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def signature_line(signature: bytes) -> bytes:
    """The canonical signature line for a DER signature."""
    sig = base64.b64encode(signature).decode("ascii")
    return _ENCODER.encode({"alg": SIGNATURE_ALGORITHM, "sig": sig}).encode("ascii")


def parse_signature_line(line: bytes, label: str) -> bytes:
    """Decode the signature line; it must be byte-for-byte canonical.

    Base64 leaves unused bits in its last character and JSON allows other spellings of the
    same object, so a lenient parser would accept altered bytes as the same signature.
    """
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict) or set(obj) != {"alg", "sig"}:
            raise ValueError("expected exactly the keys alg and sig")
        if obj["alg"] != SIGNATURE_ALGORITHM:
            raise ValueError(f"alg {obj['alg']!r} is not {SIGNATURE_ALGORITHM!r}")
        signature = base64.b64decode(obj["sig"], validate=True)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedBatch(f"{label}: signature line: {exc}") from exc
    if signature_line(signature) != line:
        raise MalformedBatch(f"{label}: signature line is not in canonical form")
    return signature


def parse_batch(data: bytes) -> SealedBatch:
    """Split a batch into its exact parts and validate the framing (not the signature)."""
    lines = data.split(b"\n")
    if len(lines) < 3 or lines[-1] != b"":
        raise MalformedBatch(
            "batch must be a header line, a signature line and records, each ending in a newline"
        )
    header = parse_header(lines[0])
    signature = parse_signature_line(lines[1], header.label)
    return SealedBatch(header, lines[0], signature, tuple(lines[2:-1]))


def verify_batch(batch: SealedBatch | bytes, key: PublicKey) -> VerifiedBatch:
    """Check key id, signature, record count and Merkle root; raise on the first failure."""
    sealed = parse_batch(batch) if isinstance(batch, bytes) else batch
    h = sealed.header
    kid = key_id(key)
    if h.key_id != kid:
        raise KeyMismatch(f"{h.label}: header names key {h.key_id}, offered key is {kid}")
    try:
        verify_signature(key, sealed.signature, sealed.header_bytes)
    except BadSignature as exc:
        raise BadSignature(f"{h.label}: {exc}") from exc
    if len(sealed.records) != h.count:
        raise CountMismatch(f"{h.label}: header counts {h.count} records, batch has {len(sealed.records)}")
    leaves = tuple(leaf_hashes(sealed.records))
    if merkle_root(leaves).hex() != h.root:
        raise RootMismatch(f"{h.label}: records do not hash to the signed Merkle root")
    return VerifiedBatch(sealed, leaves)


def verify_record(
    record: bytes,
    proof: InclusionProof,
    header_bytes: bytes,
    signature: bytes,
    key: PublicKey,
) -> BatchHeader:
    """Verify one record on its own: signed header, then the proof to its root."""
    header = parse_header(header_bytes)
    if header.key_id != key_id(key):
        raise KeyMismatch(f"{header.label}: header names key {header.key_id}, offered key is {key_id(key)}")
    verify_signature(key, signature, header_bytes)
    if proof.size != header.count:
        raise CountMismatch(f"{header.label}: proof is for {proof.size} leaves, header counts {header.count}")
    verify_inclusion(leaf_hash(record), proof, bytes.fromhex(header.root))
    return header
