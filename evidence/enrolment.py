"""Enrolment documents: a gateway introduces itself, its key and its meters.

Wire and storage form (ASCII text, two lines, each ending with ``\\n``)::

    line 1   body: canonical JSON, keys in this order
             {"format":"puhui-enrolment/1","gateway":ID,"site":SITE,"region":REGION|null,
              "key_id":KID,"public_key":BASE64(DER SPKI),
              "meters":[{"id":..,"scenario":..,"rated_power_kw":..,"meter_class":..
                         [,"calibrated_until":"YYYY-MM-DD"]},...],
              "created_ms":MS}
    line 2   signature: {"alg":"ECDSA-P256-SHA256","sig":BASE64(DER)}

The body is signed by the very key it announces (proof of possession): whoever produced the
document holds the private key. Whether the gateway *should* be enrolled is the operator's
decision (``puhui aggregator gateways add DOC``); the document only makes that decision
about an authentic, intact statement. Like batch headers, the body must be byte-for-byte
canonical: the parser re-encodes what it read and compares, so no two spellings of one
document exist. ``calibrated_until`` (the last day of the meter's calibration validity) is
written only when the gateway knows it, so documents without it keep their exact bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm

from evidence.batch import GATEWAY_ID, parse_signature_line, signature_line
from evidence.errors import BadSignature, KeyFileError, KeyMismatch, MalformedBatch, MalformedEnrolment
from evidence.keys import GatewayKey, PublicKey, key_id, load_public_key, public_key_b64, verify_signature

ENROLMENT_FORMAT = "puhui-enrolment/1"
SCENARIOS: tuple[str, ...] = ("pv", "ev_charging", "clean_heating")
Scenario = Literal["pv", "ev_charging", "clean_heating"]
_BODY_KEYS = ("format", "gateway", "site", "region", "key_id", "public_key", "meters", "created_ms")
_METER_KEYS = ("id", "scenario", "rated_power_kw", "meter_class")
_CALIBRATION_KEY = "calibrated_until"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True, slots=True)
class EnrolledMeter:
    """A meter as the gateway declares it: id, what it meters, nameplate, accuracy class and,
    when known, the last day of its calibration validity."""

    id: str
    scenario: Scenario
    rated_power_kw: float
    meter_class: str
    calibrated_until: dt.date | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "scenario": self.scenario,
            "rated_power_kw": float(self.rated_power_kw),
            "meter_class": self.meter_class,
        }
        if self.calibrated_until is not None:
            out[_CALIBRATION_KEY] = self.calibrated_until.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class EnrolmentDocument:
    """What a gateway states at enrolment; ``body`` and ``signature`` are the exact bytes."""

    gateway: str
    site: str
    region: str | None
    public_key: str  # base64 of the DER SubjectPublicKeyInfo
    key_id: str
    meters: tuple[EnrolledMeter, ...]
    created_ms: int
    body: bytes = b""
    signature: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ENROLMENT_FORMAT,
            "gateway": self.gateway,
            "site": self.site,
            "region": self.region,
            "key_id": self.key_id,
            "public_key": self.public_key,
            "meters": [m.to_json() for m in self.meters],
            "created_ms": self.created_ms,
        }

    def verifying_key(self) -> PublicKey:
        """The public key the document announces."""
        return load_public_key(self.public_key)

    def to_bytes(self) -> bytes:
        """The document as it travels and is stored: body line and signature line."""
        return self.body + b"\n" + signature_line(self.signature) + b"\n"


def make_enrolment(
    key: GatewayKey,
    *,
    gateway: str,
    site: str,
    meters: Sequence[EnrolledMeter],
    created_ms: int,
    region: str | None = None,
) -> EnrolmentDocument:
    """Build the enrolment document for ``gateway`` and sign it with the gateway's own key."""
    doc = EnrolmentDocument(
        gateway=gateway,
        site=site,
        region=region,
        public_key=public_key_b64(key.public_key),
        key_id=key.key_id,
        meters=tuple(meters),
        created_ms=created_ms,
    )
    _validate(doc.to_json(), f"enrolment of {gateway!r}")
    body = _ENCODER.encode(doc.to_json()).encode("ascii")
    return _from_json(json.loads(body), body, key.sign(body))


def parse_enrolment(data: bytes) -> EnrolmentDocument:
    """Parse a document and verify its self-signature (proof of possession).

    Raises :class:`MalformedEnrolment` for framing, JSON or field problems,
    :class:`KeyMismatch` when ``key_id`` is not the announced key's id, and
    :class:`BadSignature` when the announced key did not sign the body.
    """
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise MalformedEnrolment("enrolment document must be a body line and a signature line")
    body, sig_line = lines[0], lines[1]
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedEnrolment(f"enrolment body is not JSON: {exc}") from exc
    where = f"enrolment of {obj.get('gateway')!r}" if isinstance(obj, dict) else "enrolment"
    _validate(obj, where)
    if _ENCODER.encode(obj).encode("ascii") != body:
        raise MalformedEnrolment(f"{where}: body is not in canonical form")
    try:
        signature = parse_signature_line(sig_line, where)
    except MalformedBatch as exc:  # from the helper shared with batches: say what it is here
        raise MalformedEnrolment(str(exc)) from exc
    doc = _from_json(obj, body, signature)
    try:
        key = doc.verifying_key()
    except (KeyFileError, UnsupportedAlgorithm) as exc:
        # UnsupportedAlgorithm: keys.load_public_key lets it through for DER naming an
        # unknown curve (reported upstream); here it is just a malformed document.
        raise MalformedEnrolment(f"{where}.public_key: {exc}") from exc
    if key_id(key) != doc.key_id:
        raise KeyMismatch(f"{where}: key_id {doc.key_id} is not the id of the key ({key_id(key)})")
    try:
        verify_signature(key, signature, body)
    except BadSignature as exc:
        raise BadSignature(f"{where}: not signed by the key it announces: {exc}") from exc
    return doc


def _validate(obj: Any, where: str) -> None:
    if not isinstance(obj, dict) or tuple(obj) != _BODY_KEYS:
        got = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise MalformedEnrolment(f"{where}: keys must be {list(_BODY_KEYS)}, got {got}")
    if obj["format"] != ENROLMENT_FORMAT:
        raise MalformedEnrolment(f"{where}: format {obj['format']!r} is not {ENROLMENT_FORMAT!r}")
    if not isinstance(obj["gateway"], str) or not GATEWAY_ID.match(obj["gateway"]):
        raise MalformedEnrolment(f"{where}.gateway: must match {GATEWAY_ID.pattern}")
    for k in ("site", "key_id", "public_key"):
        if not isinstance(obj[k], str) or not obj[k]:
            raise MalformedEnrolment(f"{where}.{k}: must be a non-empty string")
    if obj["region"] is not None and (not isinstance(obj["region"], str) or not obj["region"]):
        raise MalformedEnrolment(f"{where}.region: must be null or a non-empty string")
    created = obj["created_ms"]
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise MalformedEnrolment(f"{where}.created_ms: must be a non-negative integer")
    meters = obj["meters"]
    if not isinstance(meters, list) or not meters:
        raise MalformedEnrolment(f"{where}.meters: must be a non-empty list")
    seen: set[str] = set()
    for i, meter in enumerate(meters):
        _validate_meter(meter, f"{where}.meters[{i}]")
        if meter["id"] in seen:
            raise MalformedEnrolment(f"{where}.meters[{i}].id: {meter['id']!r} appears twice")
        seen.add(meter["id"])


def _validate_meter(meter: Any, where: str) -> None:
    if not isinstance(meter, dict) or tuple(meter) not in (_METER_KEYS, (*_METER_KEYS, _CALIBRATION_KEY)):
        got = list(meter) if isinstance(meter, dict) else type(meter).__name__
        raise MalformedEnrolment(
            f"{where}: keys must be {list(_METER_KEYS)} (and optionally {_CALIBRATION_KEY!r}), got {got}"
        )
    if _CALIBRATION_KEY in meter:
        _calibration_date(meter[_CALIBRATION_KEY], f"{where}.{_CALIBRATION_KEY}")
    for k in ("id", "meter_class"):
        if not isinstance(meter[k], str) or not meter[k]:
            raise MalformedEnrolment(f"{where}.{k}: must be a non-empty string")
    if meter["scenario"] not in SCENARIOS:
        raise MalformedEnrolment(f"{where}.scenario: {meter['scenario']!r} is not one of {list(SCENARIOS)}")
    power = meter["rated_power_kw"]
    # A float, always written with a fraction or exponent (5.0, not 5): one spelling only.
    if type(power) is not float or not math.isfinite(power) or power <= 0:
        raise MalformedEnrolment(
            f"{where}.rated_power_kw: must be a finite float > 0 (e.g. 5.0), got {power!r}"
        )


def _calibration_date(value: Any, where: str) -> dt.date:
    if not isinstance(value, str) or not _DATE.match(value):
        raise MalformedEnrolment(f"{where}: must be a date as YYYY-MM-DD, got {value!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise MalformedEnrolment(f"{where}: {value!r} is not a calendar date") from exc


def _from_json(obj: dict[str, Any], body: bytes, signature: bytes) -> EnrolmentDocument:
    meters = tuple(
        EnrolledMeter(
            m["id"],
            m["scenario"],
            float(m["rated_power_kw"]),
            m["meter_class"],
            _calibration_date(m[_CALIBRATION_KEY], "calibrated_until") if _CALIBRATION_KEY in m else None,
        )
        for m in obj["meters"]
    )
    return EnrolmentDocument(
        gateway=obj["gateway"],
        site=obj["site"],
        region=obj["region"],
        public_key=obj["public_key"],
        key_id=obj["key_id"],
        meters=meters,
        created_ms=obj["created_ms"],
        body=body,
        signature=signature,
    )
