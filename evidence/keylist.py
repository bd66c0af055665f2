"""The aggregator's signed list of keys and revocations (``puhui-keys/1``).

Outside verifiers (a platform, a verification body) pin one aggregator key, once, and learn
every other key from this document:

- **Aggregator keys**, oldest first, each with the period it signs in (``valid_from_ms`` up
  to ``retired_ms``) and, from the second on, an **endorsement**: its predecessor's signature
  over ``{"format":"puhui-key-endorsement/1","key_id":..,"public_key":..,"valid_from_ms":..}``.
  A verifier walks the endorsements forward from the key it pinned; a key it cannot reach
  that way is not trusted, whoever signed the list.
- **Gateway keys**: every key of every enrolled gateway, the sequence number it signs from
  and its revocation time, as the aggregator's registry holds them.

The list is signed by the newest aggregator key (two lines, like statements and
checkpoints). :func:`verify_keylist` checks it against a pinned key and answers "which
aggregator key was valid at time t" and "which key did gateway G have for seq n".
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evidence.errors import BadSignature, InvalidProof, MalformedMessage
from evidence.keys import (
    SIGNATURE_ALGORITHM,
    GatewayKey,
    PublicKey,
    key_id,
    load_public_key,
    public_key_b64,
    verify_signature,
)
from evidence.signed import canonical as _canonical
from evidence.signed import signature_line as _signature_line

FORMAT = "puhui-keys/1"
ENDORSEMENT = "puhui-key-endorsement/1"


@dataclass(frozen=True, slots=True)
class AggregatorKey:
    key_id: str
    public_key: str  # base64 DER SubjectPublicKeyInfo
    valid_from_ms: int
    retired_ms: int | None = None  # a successor signs from then on
    revoked_from_ms: int | None = None  # nothing it signed from then on is trusted
    endorsement: str | None = None  # base64 signature of the predecessor (None: the first key)

    def signs_at(self, ms: int) -> bool:
        ends = [t for t in (self.retired_ms, self.revoked_from_ms) if t is not None]
        return self.valid_from_ms <= ms and all(ms < t for t in ends)


@dataclass(frozen=True, slots=True)
class GatewayKeyEntry:
    gateway: str
    key_id: str
    public_key: str  # base64 DER
    valid_from_seq: int
    source: str  # "enrolment" | "rotation@<seq>"
    revoked_from_ms: int | None = None


def endorsement_body(key_id_: str, public_key: str, valid_from_ms: int) -> bytes:
    """What a predecessor signs to hand over to ``key_id_``."""
    return _canonical(
        {"format": ENDORSEMENT, "key_id": key_id_, "public_key": public_key, "valid_from_ms": valid_from_ms}
    )


def endorse(predecessor: GatewayKey, successor: PublicKey, valid_from_ms: int) -> AggregatorKey:
    """The successor's entry, signed over by its predecessor."""
    b64 = public_key_b64(successor)
    signature = predecessor.sign(endorsement_body(key_id(successor), b64, valid_from_ms))
    return AggregatorKey(
        key_id(successor), b64, valid_from_ms, endorsement=base64.b64encode(signature).decode()
    )


@dataclass(frozen=True, slots=True)
class KeyList:
    body: bytes
    issuer: str
    created_ms: int
    aggregator_keys: tuple[AggregatorKey, ...]
    gateway_keys: tuple[GatewayKeyEntry, ...]
    signature: bytes

    def to_bytes(self) -> bytes:
        return self.body + b"\n" + _signature_line(self.issuer, self.signature) + b"\n"

    def aggregator_key_at(self, ms: int, kid: str) -> PublicKey | None:
        """Aggregator key ``kid`` if it signed legitimately at ``ms``: from its start until its
        successor's start, its retirement or its revocation, whichever comes first."""
        keys = self.aggregator_keys
        for i, k in enumerate(keys):
            successor = keys[i + 1].valid_from_ms if i + 1 < len(keys) else None
            if k.key_id == kid and k.signs_at(ms) and (successor is None or ms < successor):
                return load_public_key(k.public_key)
        return None

    def gateway_key(self, gateway: str, kid: str) -> GatewayKeyEntry | None:
        return next((g for g in self.gateway_keys if g.gateway == gateway and g.key_id == kid), None)


def sign_keylist(
    key: GatewayKey,
    *,
    aggregator_keys: Sequence[AggregatorKey],
    gateway_keys: Sequence[GatewayKeyEntry],
    created_ms: int,
) -> KeyList:
    """Sign the list with ``key``, the newest aggregator key."""
    body = _canonical(
        {
            "aggregator_keys": [_fields(k) for k in aggregator_keys],
            "created_ms": created_ms,
            "format": FORMAT,
            "gateway_keys": [
                _fields(g) for g in sorted(gateway_keys, key=lambda g: (g.gateway, g.valid_from_seq))
            ],
            "issuer": key.key_id,
        }
    )
    return parse_keylist(body + b"\n" + _signature_line(key.key_id, key.sign(body)) + b"\n")


def _fields(entry: AggregatorKey | GatewayKeyEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in entry.__slots__}


def parse_keylist(data: bytes) -> KeyList:
    """Split and validate a key list document (its trust: :func:`verify_keylist`)."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise MalformedMessage("a key list is a body line and a signature line, each ending in a newline")
    try:
        body, sig = json.loads(lines[0]), json.loads(lines[1])
        keys = tuple(AggregatorKey(**k) for k in body["aggregator_keys"])
        gateways = tuple(GatewayKeyEntry(**g) for g in body["gateway_keys"])
        keylist = KeyList(lines[0], str(body["issuer"]), int(body["created_ms"]), keys, gateways,
                          base64.b64decode(sig["sig"], validate=True))  # fmt: skip
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
        raise MalformedMessage(f"key list is not valid: {exc}") from exc
    if (
        body.get("format") != FORMAT
        or sig.get("key_id") != keylist.issuer
        or sig.get("alg") != SIGNATURE_ALGORITHM
    ):
        raise MalformedMessage(f"not a {FORMAT} document signed by its issuer")
    if _canonical(body) != lines[0] or _signature_line(keylist.issuer, keylist.signature) != lines[1]:
        raise MalformedMessage("key list is not in canonical form")
    return keylist


def verify_keylist(data: bytes, pinned: PublicKey) -> KeyList:
    """Parse a key list and trust it from ``pinned`` on: every aggregator key after the pinned
    one must be endorsed by its predecessor; the list must be signed by one of those keys.
    Keys before the pinned one are dropped (the verifier never trusted them)."""
    keylist = parse_keylist(data)
    pinned_id = key_id(pinned)
    start = next((i for i, k in enumerate(keylist.aggregator_keys) if k.key_id == pinned_id), None)
    if start is None:
        raise InvalidProof(f"the key list does not hold the pinned aggregator key {pinned_id}")
    trusted = list(keylist.aggregator_keys[start:])
    for before, after in itertools.pairwise(trusted):
        _check_endorsement(before, after)
    signer = next((k for k in trusted if k.key_id == keylist.issuer), None)
    if signer is None:
        raise InvalidProof(
            f"the key list is signed by {keylist.issuer}, which no endorsement from {pinned_id} reaches"
        )
    verify_signature(load_public_key(signer.public_key), keylist.signature, keylist.body)
    return KeyList(keylist.body, keylist.issuer, keylist.created_ms, tuple(trusted), keylist.gateway_keys,
                   keylist.signature)  # fmt: skip


def _check_endorsement(before: AggregatorKey, after: AggregatorKey) -> None:
    body = endorsement_body(after.key_id, after.public_key, after.valid_from_ms)
    try:
        signature = base64.b64decode(after.endorsement or "", validate=True)
        verify_signature(load_public_key(before.public_key), signature, body)
    except (binascii.Error, ValueError, BadSignature) as exc:
        raise InvalidProof(
            f"aggregator key {after.key_id} is not endorsed by its predecessor {before.key_id}"
        ) from exc
    if key_id(load_public_key(after.public_key)) != after.key_id:
        raise InvalidProof(f"aggregator key {after.key_id}: the public key has another id")
