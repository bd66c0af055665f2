"""OCMF (Open Charge Metering Format, S.A.F.E. e.V.): parse, verify, build and sign.

A record is ``OCMF|{payload}|{signature}``; the signature covers the payload section's exact
characters (UTF-8), so the parser keeps them as received and never re-serialises before
verifying. Readings keep their written decimals (``RV`` as :class:`~decimal.Decimal`).
Public keys are DER SubjectPublicKeyInfo (hex, base64 or PEM), pinned per charger at
enrolment: a key appended as a fourth section is kept but never used to verify.

Why not ``pyocmf`` (0.6.0): it rejects the specification's own algorithm name
``ECDSA-brainpool256r1-SHA256`` (curve name mismatch with OpenSSL's ``brainpoolP256r1``), cannot
load a brainpool384r1 key, raises a bare ``TypeError`` on a reading that is not an object
and cannot sign. docs/ocpp.md has the details; tests cross-check this module with it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.ocpp.errors import OcmfAlgorithmError, OcmfFormatError, OcmfKeyError

HEADER = "OCMF"
SEPARATOR = "|"
MAX_RECORD_CHARS = 65_536  # a record with a few hundred readings; anything longer is refused
DEFAULT_ALGORITHM = "ECDSA-secp256r1-SHA256"
MAX_EXPONENT = 15  # a reading beyond 10^15 (or below 10^-15) of its unit is not a meter's
IMPORT_REGISTERS = frozenset({("1", "8", "0"), ("B0", "8", "0")})  # OBIS C.D.E of total import energy

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256k1": ec.SECP256K1,
    "secp192r1": ec.SECP192R1,
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
    "brainpool256r1": ec.BrainpoolP256R1,  # the specification's spelling
    "brainpoolP256r1": ec.BrainpoolP256R1,  # OpenSSL's, used by some meters
    "brainpool384r1": ec.BrainpoolP384R1,
    "brainpoolP384r1": ec.BrainpoolP384R1,
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"SHA256": hashes.SHA256, "SHA512": hashes.SHA512}
TIME_STATUS = frozenset("UISR")  # unknown, informative, synchronised, relative
METER_STATUS = frozenset("NGTDRMXIOSEF")
READING_REASONS = frozenset("BCXELRAPST")
UNITS = {"kWh": Decimal(1000), "Wh": Decimal(1), "mOhm": None, "uOhm": None}  # Wh per unit (energy)
CURRENT_TYPES = frozenset({"AC", "DC"})
INHERITED = ("TM", "TX", "RI", "RU", "RT", "EF", "ST")
_TM = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})[,.](\d{3})([+-])(\d{2}):?(\d{2}) ([A-Z])", re.ASCII
)
_PAGINATION = re.compile(r"[TF](0|[1-9][0-9]*)", re.ASCII)
_OBIS = re.compile(r"([0-9A-F]{1,2})-([0-9A-F]{1,2}):([0-9A-F]{1,2})\.([0-9A-F]{1,2})\.([0-9A-F]{1,2})"
                   r"(?:\*([0-9A-F]{1,2}))?", re.ASCII | re.I)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Algorithm:
    """A signature algorithm (SA): ECDSA on ``curve`` over the ``digest`` of the payload."""

    name: str
    curve: type[ec.EllipticCurve]
    digest: type[hashes.HashAlgorithm]


def algorithm(name: str) -> Algorithm:
    """The algorithm an SA names, e.g. ``ECDSA-secp256r1-SHA256``; OcmfAlgorithmError if unknown."""
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "ECDSA" or parts[1] not in _CURVES or parts[2] not in _HASHES:
        known = ", ".join(sorted(_CURVES))
        raise OcmfAlgorithmError(
            f"OCMF SA: {name!r} is not supported (ECDSA-<curve>-SHA256|SHA512, curves: {known})"
        )
    return Algorithm(name, _CURVES[parts[1]], _HASHES[parts[2]])


@dataclass(frozen=True, slots=True)
class OcmfReading:
    """One reading (RD entry), inherited fields filled in from the previous ones."""

    time: float  # POSIX seconds, from TM
    time_status: str  # TM's last letter: U, I, S or R
    transaction: str | None  # TX: B(egin), C(harging), E(nd), ... None for fiscal readings
    value: Decimal | None  # RV exactly as written (2935.600 keeps its three decimals)
    obis: str | None  # RI
    unit: str | None  # RU
    current_type: str | None  # RT
    error_flags: str  # EF: "" or letters E (energy), t (time)
    status: str  # ST: G is a good meter
    cumulated_loss: Decimal | None = None  # CL

    @property
    def is_import_register(self) -> bool:
        """RI is a total import energy register (OBIS 1.8.0 or the OCMF extension B0.8.0)."""
        m = _OBIS.fullmatch(self.obis or "")
        return m is not None and tuple(_obis_part(p) for p in m.groups()[2:5]) in IMPORT_REGISTERS

    @property
    def wh(self) -> float | None:
        """The value in Wh for an energy reading (RU kWh or Wh), else None."""
        scale = UNITS.get(self.unit or "")
        return None if scale is None or self.value is None else float(self.value * scale)

    @property
    def usable(self) -> bool:
        """Status good, no error flag on energy, a synchronised or relative time."""
        return self.status == "G" and "E" not in self.error_flags and self.time_status in ("S", "R")


@dataclass(frozen=True, slots=True)
class OcmfRecord:
    """A parsed record. ``payload_text`` is the exact signed text; ``raw`` the whole record."""

    raw: str
    payload_text: str
    payload: Mapping[str, Any]
    algorithm: Algorithm
    signature: bytes  # DER
    readings: tuple[OcmfReading, ...]
    embedded_key: str | None = None  # a fourth section, if any: never used to verify

    @property
    def pagination(self) -> str | None:
        return self.payload.get("PG")

    @property
    def meter_serial(self) -> str | None:
        return self.payload.get("MS")


# -- parsing ------------------------------------------------------------------------------------------


def parse(text: str) -> OcmfRecord:
    """Parse an OCMF record (plain text); :class:`OcmfFormatError` names the field at fault."""
    if not isinstance(text, str):
        raise OcmfFormatError("(record)", f"expected text, got {type(text).__name__}")
    if len(text) > MAX_RECORD_CHARS:
        raise OcmfFormatError("(record)", f"{len(text)} characters, more than {MAX_RECORD_CHARS}")
    sections = text.strip().split(SEPARATOR)
    if sections[0] != HEADER:
        raise OcmfFormatError("(header)", f"a record starts with 'OCMF|', got {text[:12]!r}")
    if len(sections) not in (3, 4):
        raise OcmfFormatError(
            "(record)", f"expected OCMF|{{payload}}|{{signature}}, got {len(sections)} '|'-separated sections"
        )
    payload_text, signature_text = sections[1], sections[2]
    payload = _json_object(payload_text, "payload")
    sig = _json_object(signature_text, "signature")
    algo, der = _signature(sig)
    readings = _readings(payload)
    _check_payload(payload)
    embedded = "".join(sections[3].split()) if len(sections) == 4 else ""
    return OcmfRecord(text, payload_text, payload, algo, der, readings, embedded or None)


def unwrap(carried: str) -> str:
    """The OCMF text from what OCPP carries: plain ``OCMF|...``, or its hex or base64 encoding."""
    text = carried.strip() if isinstance(carried, str) else ""
    if text.startswith(HEADER + SEPARATOR):
        return text
    for decode in (bytes.fromhex, lambda s: base64.b64decode(s, validate=True)):
        try:
            decoded = decode(text).decode("utf-8")
        except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
            continue
        if decoded.startswith(HEADER + SEPARATOR):
            return decoded
    raise OcmfFormatError("(record)", f"neither 'OCMF|...' nor its hex or base64 encoding: {text[:24]!r}")


def _json_object(text: str, section: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_float=Decimal, object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant)  # fmt: skip
    except RecursionError:
        raise OcmfFormatError(section, "nested too deeply") from None
    except (ValueError, decimal.InvalidOperation) as exc:  # JSONDecodeError, too many digits, dup keys
        raise OcmfFormatError(section, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise OcmfFormatError(section, f"expected a JSON object, got {type(value).__name__}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # two parsers could read different values from the same signed text
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _signature(sig: Mapping[str, Any]) -> tuple[Algorithm, bytes]:
    name = _opt_str(sig, "SA", "SA") or DEFAULT_ALGORITHM
    algo = algorithm(name)
    encoding = _opt_str(sig, "SE", "SE") or "hex"
    mime = _opt_str(sig, "SM", "SM") or "application/x-der"
    if mime != "application/x-der":
        raise OcmfFormatError("SM", f"{mime!r} is not application/x-der")
    data = sig.get("SD")
    if not isinstance(data, str) or not data:
        raise OcmfFormatError("SD", "missing or not a non-empty string")
    return algo, _decode(data, encoding)  # not DER (the specification's example): verify() says False


def _decode(data: str, encoding: str) -> bytes:
    try:
        if encoding == "hex":
            return bytes.fromhex(data)
        if encoding == "base64":
            return base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        raise OcmfFormatError("SD", f"not {encoding}") from None
    raise OcmfFormatError("SE", f"{encoding!r} is not hex or base64")


def _check_payload(p: Mapping[str, Any]) -> None:
    for key in ("GI", "GS", "GV", "MV", "MM", "MS", "MF", "IL", "IT", "ID", "TT", "CF", "CT", "CI"):
        _opt_str(p, key, key)
    fv = p.get("FV")
    if fv is not None and (isinstance(fv, bool) or not isinstance(fv, str | int | Decimal)):
        raise OcmfFormatError("FV", "expected a version string")
    pg = _opt_str(p, "PG", "PG")
    if pg is not None and not _PAGINATION.fullmatch(pg):
        raise OcmfFormatError("PG", f"{pg!r} is not T<n> or F<n>")
    if "IS" in p and not isinstance(p["IS"], bool):
        raise OcmfFormatError("IS", "expected true or false")
    flags = p.get("IF", [])
    if not isinstance(flags, list) or len(flags) > 4 or not all(isinstance(f, str) for f in flags):
        raise OcmfFormatError("IF", "expected a list of at most 4 strings")


def _readings(p: Mapping[str, Any]) -> tuple[OcmfReading, ...]:
    rd = p.get("RD")
    if not isinstance(rd, list) or not rd:
        raise OcmfFormatError("RD", "expected a non-empty list of readings")
    out: list[OcmfReading] = []
    last: dict[str, Any] = {}
    for i, item in enumerate(rd):
        if not isinstance(item, dict):
            raise OcmfFormatError(f"RD[{i}]", f"expected an object, got {type(item).__name__}")
        merged = {**{k: v for k, v in last.items() if k not in item}, **item}
        out.append(_reading(merged, f"RD[{i}]"))
        last.update({k: merged[k] for k in INHERITED if k in merged})
    return tuple(out)


def _reading(r: Mapping[str, Any], where: str) -> OcmfReading:
    tm = _opt_str(r, "TM", f"{where}.TM")
    if tm is None:
        raise OcmfFormatError(f"{where}.TM", "missing")
    t, status = parse_time(tm, f"{where}.TM")
    tx = _opt_enum(r, "TX", where, READING_REASONS)
    st = _opt_enum(r, "ST", where, METER_STATUS)
    if st is None:
        raise OcmfFormatError(f"{where}.ST", "missing")
    unit = _opt_str(r, "RU", f"{where}.RU")
    if unit is not None and unit not in UNITS:
        raise OcmfFormatError(f"{where}.RU", f"{unit!r} is not one of {', '.join(UNITS)}")
    rt = _opt_str(r, "RT", f"{where}.RT")
    if rt is not None and rt not in CURRENT_TYPES:
        raise OcmfFormatError(f"{where}.RT", f"{rt!r} is not AC or DC")
    ef = _opt_str(r, "EF", f"{where}.EF") or ""
    if set(ef) - {"E", "t"}:
        raise OcmfFormatError(f"{where}.EF", f"{ef!r}: only the letters E and t are defined")
    value = _opt_number(r, "RV", where)
    if value is not None and unit is None:
        raise OcmfFormatError(f"{where}.RU", "a reading value (RV) needs its unit")
    obis = _opt_str(r, "RI", f"{where}.RI")
    return OcmfReading(t, status, tx, value, obis, unit, rt, ef, st, _opt_number(r, "CL", where))


def _opt_str(m: Mapping[str, Any], key: str, where: str) -> str | None:
    v = m.get(key)
    if v is not None and not isinstance(v, str):
        raise OcmfFormatError(where, f"expected a string, got {type(v).__name__}")
    return v


def _opt_enum(m: Mapping[str, Any], key: str, where: str, allowed: frozenset[str]) -> str | None:
    v = _opt_str(m, key, f"{where}.{key}")
    if v is not None and v not in allowed:
        raise OcmfFormatError(f"{where}.{key}", f"{v!r} is not one of {' '.join(sorted(allowed))}")
    return v


def _opt_number(m: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    v = m.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | Decimal):
        raise OcmfFormatError(f"{where}.{key}", f"expected a number, got {type(v).__name__}")
    d = Decimal(v)
    if not -MAX_EXPONENT <= d.adjusted() <= MAX_EXPONENT:
        raise OcmfFormatError(f"{where}.{key}", f"{v} is out of range (|exponent| > {MAX_EXPONENT})")
    return d


def parse_time(text: str, where: str = "TM") -> tuple[float, str]:
    """``2018-07-24T13:22:04,000+0200 S`` -> (POSIX seconds, time status letter)."""
    m = _TM.fullmatch(text)
    if m is None:
        raise OcmfFormatError(where, f"{text!r} is not YYYY-MM-DDThh:mm:ss,fff+hhmm <status>")
    y, mo, d, h, mi, s, ms, sign, zh, zm, status = m.groups()
    if status not in TIME_STATUS:
        raise OcmfFormatError(where, f"time status {status!r} is not one of U I S R")
    offset = (1 if sign == "+" else -1) * datetime.timedelta(hours=int(zh), minutes=int(zm))
    try:
        tz = datetime.timezone(offset)
        when = datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(ms) * 1000, tz)
    except ValueError as exc:
        raise OcmfFormatError(where, f"{text!r}: {exc}") from None
    return when.timestamp(), status


def format_time(t: float, status: str = "S", utc_offset_min: int = 0) -> str:
    """POSIX seconds -> ``2025-03-10T08:15:00,000+0800 S`` (milliseconds, the given offset)."""
    tz = datetime.timezone(datetime.timedelta(minutes=utc_offset_min))
    when = datetime.datetime.fromtimestamp(round(t, 3), tz)
    sign = "+" if utc_offset_min >= 0 else "-"
    hh, mm = divmod(abs(utc_offset_min), 60)
    return f"{when:%Y-%m-%dT%H:%M:%S},{when.microsecond // 1000:03d}{sign}{hh:02d}{mm:02d} {status}"


def _obis_part(p: str) -> str:
    """``01`` -> ``1``, ``08`` -> ``8``, ``00`` -> ``0``; ``B0`` stays (a hex OCMF extension code)."""
    p = p.upper()
    return p if p.startswith("B") else (p.lstrip("0") or "0")


# -- keys and verification ----------------------------------------------------------------------------


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A meter's public key: DER SubjectPublicKeyInfo as hex or base64, or PEM."""
    data = text.strip()
    try:
        if data.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(data.encode())
        else:
            key = serialization.load_der_public_key(_key_bytes(data))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise OcmfKeyError(f"public key {data[:16]!r}...: not a DER/PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise OcmfKeyError(f"public key {data[:16]!r}...: not an elliptic-curve key")
    return key


def _key_bytes(data: str) -> bytes:
    try:
        return bytes.fromhex(data)
    except ValueError:
        pass
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ValueError("neither hex nor base64") from None


def public_key_text(key: ec.EllipticCurvePublicKey, encoding: Literal["hex", "base64"] = "hex") -> str:
    """The DER SubjectPublicKeyInfo of ``key`` as hex (the OCMF default) or base64."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der.hex() if encoding == "hex" else base64.b64encode(der).decode("ascii")


def verify(record: OcmfRecord, key: ec.EllipticCurvePublicKey) -> bool:
    """True if ``record``'s signature is ``key``'s over the exact payload text.

    Raises :class:`OcmfKeyError` if the key is not on the curve the record's SA names.
    """
    if not isinstance(key.curve, record.algorithm.curve):
        raise OcmfKeyError(
            f"OCMF SA: {record.algorithm.name} needs a {record.algorithm.curve.name} key, "
            f"the pinned key is {key.curve.name}"
        )
    try:
        key.verify(record.signature, record.payload_text.encode("utf-8"),
                   ec.ECDSA(record.algorithm.digest()))  # fmt: skip
    except InvalidSignature:
        return False
    return True


# -- building and signing -----------------------------------------------------------------------------


def dump_payload(payload: Mapping[str, Any]) -> str:
    """Compact JSON with Decimals written as they are (``Decimal("2935.600")`` -> ``2935.600``)."""
    return _dump(payload)


def _dump(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dump(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise OcmfFormatError("(payload)", f"{v} is not a finite number")
        return format(v, "f")
    if isinstance(v, float):
        raise OcmfFormatError("(payload)", f"{v!r}: give readings as Decimal, a float loses its decimals")
    return json.dumps(v, ensure_ascii=False)


def sign(
    payload_text: str,
    private_key: ec.EllipticCurvePrivateKey,
    algorithm_name: str = DEFAULT_ALGORITHM,
    encoding: Literal["hex", "base64"] = "hex",
) -> str:
    """The record ``OCMF|payload_text|{"SA":...,"SD":...}`` signed with ``private_key``."""
    algo = algorithm(algorithm_name)
    if not isinstance(private_key.curve, algo.curve):
        raise OcmfKeyError(
            f"OCMF SA: {algo.name} needs a {algo.curve.name} key, got {private_key.curve.name}"
        )
    der = private_key.sign(payload_text.encode("utf-8"), ec.ECDSA(algo.digest()))
    sd = der.hex() if encoding == "hex" else base64.b64encode(der).decode("ascii")
    signature = (
        {"SA": algo.name, "SE": encoding, "SD": sd} if encoding != "hex" else {"SA": algo.name, "SD": sd}
    )
    return SEPARATOR.join((HEADER, payload_text, _dump(signature)))


def build(
    payload: Mapping[str, Any],
    private_key: ec.EllipticCurvePrivateKey,
    algorithm_name: str = DEFAULT_ALGORITHM,
) -> str:
    """Serialise ``payload`` (:func:`dump_payload`), sign it, and check the result parses."""
    record = sign(dump_payload(payload), private_key, algorithm_name)
    parse(record)  # never hand out a record our own parser refuses
    return record


@dataclass(frozen=True, slots=True)
class ExportReading:
    """A register reading to export: time, value in Wh, and how it ends or starts a session."""

    time: float
    wh: Decimal
    transaction: str  # B, C, E, ...
    status: str = "G"
    time_status: str = "S"


def session_payload(
    readings: Sequence[ExportReading],
    *,
    pagination: int,
    gateway_id: str,
    gateway_version: str,
    meter_serial: str,
    charge_point: str | None = None,
    utc_offset_min: int = 0,
) -> dict[str, Any]:
    """An OCMF payload for a session's readings as the gateway saw them (kWh, 3 decimals).

    Signed with the gateway's key this is *gateway-signed*: the transparency software checks it,
    but it attests what the gateway read, not what the meter signed (docs/ocpp.md).
    """
    rd = [
        {
            "TM": format_time(r.time, r.time_status, utc_offset_min),
            "TX": r.transaction,
            "RV": (r.wh / 1000).quantize(Decimal("0.001")),
            "RI": "01-00:01.08.00*FF",
            "RU": "kWh",
            "ST": r.status,
        }
        for r in readings
    ]
    payload: dict[str, Any] = {"FV": "1.0", "GI": "puhui gateway", "GS": gateway_id, "GV": gateway_version}
    payload.update(PG=f"T{pagination}", MS=meter_serial, IS=False, IT="NONE")
    if charge_point is not None:
        payload.update(CT="CBIDC", CI=charge_point)
    payload["RD"] = rd
    return payload
