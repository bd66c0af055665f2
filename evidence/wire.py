"""Messages between a gateway and the aggregator, and their MQTT topics.

::

    gateway    -> aggregator   puhui/v1/<gateway>/batch    a batch (see evidence.batch), QoS 1
    aggregator -> gateway      puhui/v1/<gateway>/ack      acknowledgement after durable commit
    aggregator -> gateway      puhui/v1/<gateway>/reject   rejection with a reason code

Aggregators subscribe with the shared subscription ``$share/<group>/puhui/v1/+/batch`` so
several processes share the load. Acknowledgements and rejections are *signed by the
aggregator's key* (body line + signature line, like a batch header) so that a forged ack
cannot make a gateway discard data it still holds. A gateway deletes a batch from its
outbox only on a verified ack for that exact (seq, header_sha256); a rejection is logged
and the batch is kept and retried later.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import asdict, dataclass
from typing import Any

from evidence.batch import GATEWAY_ID
from evidence.errors import BadSignature, MalformedMessage
from evidence.keys import SIGNATURE_ALGORITHM, GatewayKey, PublicKey, key_id, verify_signature

TOPIC_ROOT = "puhui/v1"
SHARE_GROUP = "puhui-aggregators"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def check_gateway_id(gateway: str) -> str:
    """Gateway ids appear in topics: letters, digits, '.', '_' and '-', at most 64."""
    if not GATEWAY_ID.match(gateway):
        raise ValueError(
            f"gateway id {gateway!r} must match {GATEWAY_ID.pattern} (it is used in MQTT topics)"
        )
    return gateway


def batch_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{check_gateway_id(gateway)}/batch"


def ack_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{check_gateway_id(gateway)}/ack"


def reject_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{check_gateway_id(gateway)}/reject"


def batch_subscription(group: str | None = SHARE_GROUP) -> str:
    """The aggregators' shared subscription to every gateway's batches; with no group, the
    plain subscription (a broker without shared subscriptions, one aggregator)."""
    plain = f"{TOPIC_ROOT}/+/batch"
    return plain if group is None else f"$share/{group}/{plain}"


def gateway_from_topic(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != TOPIC_ROOT or not GATEWAY_ID.match(parts[2]):
        raise MalformedMessage(f"topic {topic!r} is not {TOPIC_ROOT}/<gateway>/<kind>")
    return parts[2]


class RejectReason(enum.Enum):
    """Why the aggregator refused a batch. ``retry`` says whether resending can help."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    KEY_MISMATCH = "key_mismatch"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    NOT_ENROLLED = "not_enrolled"
    MERKLE_MISMATCH = "merkle_mismatch"
    FORK = "fork"
    TOO_LARGE = "too_large"
    INTERNAL = "internal_error"

    @property
    def retry(self) -> bool:
        # Enrolment and server trouble can be fixed on the other side; the gateway keeps the
        # batch and retries every reason anyway, but with longer backoff for the others.
        return self in (RejectReason.NOT_ENROLLED, RejectReason.UNKNOWN_KEY, RejectReason.INTERNAL)


@dataclass(frozen=True, slots=True)
class Ack:
    """The aggregator has durably stored (or already had) this exact batch."""

    gateway: str
    seq: int
    header_sha256: str
    status: str  # "stored" | "duplicate"
    at_ms: int
    type: str = "ack"


@dataclass(frozen=True, slots=True)
class Reject:
    """The aggregator refused this batch; nothing of it was stored as accepted."""

    gateway: str
    seq: int | None
    header_sha256: str | None
    reason: str  # a RejectReason value
    detail: str
    at_ms: int
    type: str = "reject"


Reply = Ack | Reject


def encode_reply(reply: Reply, key: GatewayKey) -> bytes:
    """Body line plus the signature line, signed by the aggregator's key."""
    body = _ENCODER.encode({**asdict(reply), "key_id": key.key_id}).encode("ascii")
    sig = base64.b64encode(key.sign(body)).decode("ascii")
    return body + b"\n" + _ENCODER.encode({"alg": SIGNATURE_ALGORITHM, "sig": sig}).encode() + b"\n"


def decode_reply(data: bytes, key: PublicKey | None) -> Reply:
    """Parse a reply; with ``key``, refuse it unless the aggregator's signature verifies."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise MalformedMessage("reply must be a body line and a signature line")
    obj = _load_object(lines[0], "reply body")
    if key is not None:
        sig = _load_object(lines[1], "reply signature")
        if obj.get("key_id") != key_id(key) or sig.get("alg") != SIGNATURE_ALGORITHM:
            raise BadSignature(f"reply signed by key {obj.get('key_id')!r}, expected {key_id(key)}")
        try:
            signature = base64.b64decode(str(sig.get("sig")), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedMessage(f"reply signature is not base64: {exc}") from exc
        verify_signature(key, signature, lines[0])
    obj.pop("key_id", None)
    kind = obj.get("type")
    try:
        if kind == "ack":
            return Ack(**obj)
        if kind == "reject":
            RejectReason(obj.get("reason"))
            return Reject(**obj)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"{kind} message: {exc}") from exc
    raise MalformedMessage(f"reply type {kind!r} is not 'ack' or 'reject'")


def _load_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"{what} is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what} is not a JSON object")
    return obj
