"""Platform receipts (``puhui-receipt/1``): what a registry did with a statement, signed by it.

A platform that registers reductions answers each statement it acts on with a receipt:
``issuance`` (签发: credits issued against the statement), ``transfer`` (划转: moved to
another account) or ``retirement`` (注销: used for an offset; final). The aggregator pins
the platform's public key and refuses a receipt it cannot verify.

A receipt is two lines, each ending in ``\\n``::

    line 1  body: canonical JSON (sorted keys, no spaces, ASCII)
    line 2  {"alg":"ECDSA-P256-SHA256","key_id":KID,"sig":BASE64(DER)} over line 1

Body fields: ``format``, ``kind``, ``receipt_id`` (the platform's own, unique per platform),
``platform`` (its name), ``statement`` (the statement id, 64 hex), ``account`` (the
pseudonymous account credited, or for a transfer the receiving one; never a name),
``tco2e`` (the quantity acted on), ``created_ms``, ``registry_ref`` (the registry's
reference, e.g. a serial range).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from evidence.errors import MalformedMessage
from evidence.keys import SIGNATURE_ALGORITHM, GatewayKey, PublicKey, key_id, verify_signature
from evidence.signed import canonical, signature_line

FORMAT = "puhui-receipt/1"
ReceiptKind = Literal["issuance", "transfer", "retirement"]
KINDS: tuple[ReceiptKind, ...] = ("issuance", "transfer", "retirement")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_FIELDS = {
    "format", "kind", "receipt_id", "platform", "statement", "account", "tco2e", "created_ms", "registry_ref",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Receipt:
    body_bytes: bytes
    kind: ReceiptKind
    receipt_id: str
    platform: str
    statement: str
    account: str
    tco2e: float
    created_ms: int
    registry_ref: str
    key_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        return self.body_bytes + b"\n" + signature_line(self.key_id, self.signature) + b"\n"

    @property
    def label(self) -> str:
        return f"receipt {self.platform}/{self.receipt_id} ({self.kind} of statement {self.statement[:16]}…)"


def sign_receipt(
    key: GatewayKey,
    *,
    kind: ReceiptKind,
    receipt_id: str,
    platform: str,
    statement: str,
    account: str,
    tco2e: float,
    created_ms: int,
    registry_ref: str = "",
) -> Receipt:
    """What a platform does (and the tests, and ``puhui platform receipt``)."""
    body = {
        "account": account, "created_ms": created_ms, "format": FORMAT, "kind": kind, "platform": platform,
        "receipt_id": receipt_id, "registry_ref": registry_ref, "statement": statement, "tco2e": tco2e,
    }  # fmt: skip
    data = canonical(body)
    return parse_receipt(data + b"\n" + signature_line(key.key_id, key.sign(data)) + b"\n")


def parse_receipt(data: bytes) -> Receipt:
    """Split and validate a receipt document (its signature: :func:`verify_receipt`)."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise MalformedMessage("a receipt is a body line and a signature line, each ending in a newline")
    try:
        body, sig = json.loads(lines[0]), json.loads(lines[1])
        if not isinstance(body, dict) or not isinstance(sig, dict):
            raise ValueError("both lines must be JSON objects")
        receipt = _receipt(body, sig, lines[0])
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
        raise MalformedMessage(f"receipt is not valid: {exc}") from exc
    if sig.get("alg") != SIGNATURE_ALGORITHM:
        raise MalformedMessage(f"receipt signature algorithm is not {SIGNATURE_ALGORITHM}")
    if canonical(body) != lines[0] or signature_line(receipt.key_id, receipt.signature) != lines[1]:
        raise MalformedMessage("receipt is not in canonical form")
    return receipt


def _receipt(body: dict[str, Any], sig: dict[str, Any], body_bytes: bytes) -> Receipt:
    if set(body) != _FIELDS:
        raise ValueError(f"fields must be exactly {', '.join(sorted(_FIELDS))}")
    if body["format"] != FORMAT:
        raise ValueError(f"format is not {FORMAT!r}")
    if body["kind"] not in KINDS:
        raise ValueError(f"kind {body['kind']!r} is not one of {', '.join(KINDS)}")
    if not isinstance(body["statement"], str) or not _HEX64.match(body["statement"]):
        raise ValueError("statement must be a statement id (64 lower-case hex digits)")
    for name in ("receipt_id", "platform", "account"):
        if not isinstance(body[name], str) or not _REF.match(body[name]):
            raise ValueError(f"{name} must match {_REF.pattern}")
    if not isinstance(body["registry_ref"], str) or len(body["registry_ref"]) > 256:
        raise ValueError("registry_ref must be a string of at most 256 characters")
    tco2e = body["tco2e"]
    if isinstance(tco2e, bool) or not isinstance(tco2e, int | float) or not 0 <= tco2e < 1e12:
        raise ValueError("tco2e must be a number, 0 or more")
    if isinstance(body["created_ms"], bool) or not isinstance(body["created_ms"], int):
        raise ValueError("created_ms must be an integer")
    return Receipt(
        body_bytes, cast(ReceiptKind, body["kind"]), body["receipt_id"], body["platform"], body["statement"],
        body["account"], float(tco2e), body["created_ms"], body["registry_ref"], str(sig["key_id"]),
        base64.b64decode(sig["sig"], validate=True),
    )  # fmt: skip


def verify_receipt(data: bytes, pinned: dict[str, PublicKey]) -> Receipt:
    """Parse a receipt and check its signature with the pinned key of the platform it names
    (``pinned``: platform name -> public key)."""
    receipt = parse_receipt(data)
    key = pinned.get(receipt.platform)
    if key is None:
        known = ", ".join(sorted(pinned)) or "none"
        raise MalformedMessage(
            f"{receipt.label}: platform {receipt.platform!r} is not pinned (pinned: {known})"
        )
    if key_id(key) != receipt.key_id:
        raise MalformedMessage(
            f"{receipt.label}: signed by key {receipt.key_id}, "
            f"the pinned key of {receipt.platform} is {key_id(key)}"
        )
    verify_signature(key, receipt.signature, receipt.body_bytes)
    return receipt
