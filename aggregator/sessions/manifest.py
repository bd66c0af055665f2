"""The network's signed import manifest (``puhui-session-manifest/1``, docs/ev-sessions.md).

Two lines, each ending in ``\\n``, as a statement::

    line 1  body: canonical JSON {"format", "network", "file_sha256", "records", "period":
            {"start", "end"} (ISO 8601 with offset), "created" (ISO 8601 with offset)}
    line 2  {"alg":"ECDSA-P256-SHA256","key_id":KID,"sig":BASE64(DER)} over the bytes of line 1

The network signs with the key pinned when it was enrolled at the aggregator; the manifest
names the sha256 of the exact file bytes, how many records the file holds and the period
they lie in. :func:`verify_manifest` refuses anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggregator.sessions.errors import ManifestRefused
from aggregator.sessions.records import canonical
from evidence.errors import EvidenceError
from evidence.keys import SIGNATURE_ALGORITHM, GatewayKey, PublicKey, key_id, verify_signature

FORMAT = "puhui-session-manifest/1"
MAX_MANIFEST_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Manifest:
    """A verified manifest: what the network attests about one file."""

    network: str
    file_sha256: str
    records: int
    start_ms: int
    end_ms: int
    key_id: str
    data: bytes  # the manifest's exact bytes, kept with the import


def manifest_body(
    network: str, file_bytes: bytes, records: int, start: datetime, end: datetime, created: datetime
) -> dict[str, Any]:
    """The body a network signs for ``file_bytes`` (times must carry an offset)."""
    return {
        "format": FORMAT,
        "network": network,
        "file_sha256": hashlib.sha256(file_bytes).hexdigest(),
        "records": records,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "created": created.isoformat(),
    }


def sign_manifest(body: dict[str, Any], key: GatewayKey) -> bytes:
    """The two-line manifest document (the stand-in platform and tests sign with this)."""
    line = canonical(body)
    sig = base64.b64encode(key.sign(line)).decode("ascii")
    return line + b"\n" + canonical({"alg": SIGNATURE_ALGORITHM, "key_id": key.key_id, "sig": sig}) + b"\n"


def verify_manifest(data: bytes, *, network: str, pinned: PublicKey, file_bytes: bytes) -> Manifest:
    """The manifest if it is canonical, signed by ``pinned`` and names exactly ``file_bytes``;
    otherwise :class:`ManifestRefused` saying why."""
    if not data:
        raise ManifestRefused(
            f"network {network}: no manifest: an import needs the network's signed manifest"
        )
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestRefused(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise ManifestRefused("manifest: a body line and a signature line, each ending in a newline")
    try:
        body, sig = json.loads(lines[0]), json.loads(lines[1])
        signature = base64.b64decode(sig["sig"], validate=True)
        kid = str(sig["key_id"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ManifestRefused(f"manifest: not a manifest: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ManifestRefused(f"manifest: format is not {FORMAT!r}")
    if canonical(body) != lines[0] or sig.get("alg") != SIGNATURE_ALGORITHM:
        raise ManifestRefused("manifest: not in canonical form")
    pinned_id = key_id(pinned)
    if kid != pinned_id:
        raise ManifestRefused(f"manifest: signed with key {kid}, network {network} is pinned to {pinned_id}")
    try:
        verify_signature(pinned, signature, lines[0])
    except EvidenceError as exc:
        raise ManifestRefused(f"manifest: {exc} (network {network}'s pinned key)") from exc
    return _check_body(body, network, file_bytes, kid, data)


def _check_body(body: dict[str, Any], network: str, file_bytes: bytes, kid: str, data: bytes) -> Manifest:
    try:
        named, digest, records = body["network"], body["file_sha256"], body["records"]
        start, end = _time(body["period"]["start"]), _time(body["period"]["end"])
        _time(body["created"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestRefused(f"manifest: missing or malformed field {exc}") from exc
    if named != network:
        raise ManifestRefused(f"manifest: network is {named!r}, the import is for {network!r}")
    actual = hashlib.sha256(file_bytes).hexdigest()
    if digest != actual:
        raise ManifestRefused(f"manifest: file_sha256 {digest} does not match the file's sha256 {actual}")
    if not isinstance(records, int) or isinstance(records, bool) or records < 0:
        raise ManifestRefused(f"manifest: records {records!r} is not a count")
    if end < start:
        raise ManifestRefused("manifest: period.end is before period.start")
    return Manifest(network, digest, records, start, end, kid, data)


def _time(text: Any) -> int:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if moment.utcoffset() is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return round(moment.timestamp() * 1000)
