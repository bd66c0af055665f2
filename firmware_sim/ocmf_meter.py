"""The signing side of a calibration-law meter: OCMF records signed with the meter's own key.

Deliberately separate from the gateway's reader (``drivers/ocpp/ocmf.py``, which the
simulator may not import): tests check that one against this one and against ``pyocmf``.
A record is ``OCMF|{payload}|{"SA":...,"SD":...}``, the signature over the payload text's
UTF-8 bytes (DER, hex). A dishonest meter (``tamper``) alters a reading after signing.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

CURVES: dict[str, ec.EllipticCurve] = {
    "secp256r1": ec.SECP256R1(),
    "secp384r1": ec.SECP384R1(),
    "brainpool256r1": ec.BrainpoolP256R1(),
    "brainpool384r1": ec.BrainpoolP384R1(),
}
DIGESTS: dict[str, hashes.HashAlgorithm] = {"SHA256": hashes.SHA256(), "SHA512": hashes.SHA512()}
IMPORT_OBIS = "01-00:01.08.00*FF"
LOCAL_OFFSET_MIN = 480  # the meters show China time (+0800) in TM


def ocmf_time(t: float, offset_min: int = LOCAL_OFFSET_MIN) -> str:
    """``2025-03-10T08:15:00,000+0800 S``: synchronised time, milliseconds, local offset."""
    tz = datetime.timezone(datetime.timedelta(minutes=offset_min))
    when = datetime.datetime.fromtimestamp(t, tz)
    hh, mm = divmod(offset_min, 60)
    return f"{when:%Y-%m-%dT%H:%M:%S},{when.microsecond // 1000:03d}+{hh:02d}{mm:02d} S"


def _text(value: Any) -> str:
    """JSON with Decimals written as they are (the reading's decimals are part of it)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return format(value, "f")
    return json.dumps(value)


@dataclass
class OcmfMeter:
    """One meter's signing component: a key, a serial, a transaction pagination counter."""

    serial: str
    algorithm: str = "ECDSA-secp256r1-SHA256"  # ECDSA-<curve>-<SHA256|SHA512>
    tamper_wh: int = 0  # added to end readings after signing (a dishonest charger)
    key: ec.EllipticCurvePrivateKey = field(init=False, repr=False)
    pages: int = 0

    def __post_init__(self) -> None:
        _, curve, _ = self.algorithm.split("-")
        self.key = ec.generate_private_key(CURVES[curve])

    def public_key_hex(self) -> str:
        """DER SubjectPublicKeyInfo, hex: what the operator pins for this meter at enrolment."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return der.hex()

    def sign_reading(self, t: float, wh: int, transaction: str, id_tag: str, charge_point: str) -> str:
        """A signed record of one register reading (TX ``B``, ``C`` or ``E``) in kWh, 3 decimals."""
        self.pages += 1
        reading = {
            "TM": ocmf_time(t),
            "TX": transaction,
            "RV": Decimal(wh).scaleb(-3),
            "RI": IMPORT_OBIS,
            "RU": "kWh",
            "RT": "AC",
            "EF": "",
            "ST": "G",
        }
        payload = {
            "FV": "1.0",
            "GI": "puhui-sim OCMF",
            "GS": self.serial,
            "GV": "1.0",
            "PG": f"T{self.pages}",
            "MV": "Simulated Meters",
            "MM": "SIM-OCMF-1",
            "MS": self.serial,
            "MF": "1.0",
            "IS": True,
            "IL": "VERIFIED",
            "IF": ["RFID_PLAIN"],
            "IT": "LOCAL",
            "ID": id_tag,
            "CT": "CBIDC",
            "CI": charge_point,
            "RD": [reading],
        }
        text = _text(payload)
        _, _, digest = self.algorithm.split("-")
        signature = self.key.sign(text.encode("utf-8"), ec.ECDSA(DIGESTS[digest])).hex()
        if self.tamper_wh and transaction == "E":
            text = text.replace(_text(reading["RV"]), _text(Decimal(wh + self.tamper_wh).scaleb(-3)), 1)
        return f"OCMF|{text}|" + _text({"SA": self.algorithm, "SD": signature})
