"""Canonical JSON and the signature line shared by the aggregator's two-line signed documents
(checkpoints, key lists): ``BODY\\n{"alg":..,"key_id":..,"sig":..}\\n``."""

from __future__ import annotations

import base64
import json

from evidence.keys import SIGNATURE_ALGORITHM


def canonical(obj: object) -> bytes:
    """Sorted keys, no spaces, ASCII: one spelling per document."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signature_line(kid: str, signature: bytes) -> bytes:
    """The second line: algorithm, signing key id and the base64 DER signature."""
    return canonical({"alg": SIGNATURE_ALGORITHM, "key_id": kid, "sig": base64.b64encode(signature).decode()})
