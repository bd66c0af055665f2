"""The session file schema (JSON and CSV, docs/ev-sessions.md) and the normalised record.

A file is parsed into one :class:`SessionRecord` or one :class:`Refusal` per record: a
malformed record is refused naming its session id (or its place) and the field, and the
others are still read. Only a file that is not a session file at all raises
:class:`SessionFileError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggregator.sessions.errors import SessionFileError

FORMAT = "puhui-ev-sessions/1"
FIELDS = (
    "network", "session_id", "charger", "connector", "start", "stop",
    "start_reading", "stop_reading", "energy", "unit",
)  # fmt: skip
OPTIONAL = ("nameplate_kw",)
UNITS = {"Wh": 1.0, "kWh": 1000.0}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False, sort_keys=True)


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces, ASCII)."""
    return _ENCODER.encode(obj).encode("ascii")


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session as imported, normalised: times in POSIX milliseconds, energy in Wh."""

    network: str
    session_id: str
    charger: str
    connector: str
    start_ms: int
    stop_ms: int
    start_wh: float
    stop_wh: float
    energy_wh: float
    nameplate_kw: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "network": self.network, "session_id": self.session_id, "charger": self.charger,
            "connector": self.connector, "start_ms": self.start_ms, "stop_ms": self.stop_ms,
            "start_wh": self.start_wh, "stop_wh": self.stop_wh, "energy_wh": self.energy_wh,
        }  # fmt: skip
        if self.nameplate_kw is not None:
            out["nameplate_kw"] = self.nameplate_kw
        return out

    def content(self) -> bytes:
        """The canonical bytes of the normalised record: what "the same content" means."""
        return canonical(self.to_json())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content()).hexdigest()

    @property
    def connector_key(self) -> tuple[str, str, str]:
        return (self.network, self.charger, self.connector)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SessionRecord:
        return cls(
            str(obj["network"]), str(obj["session_id"]), str(obj["charger"]), str(obj["connector"]),
            int(obj["start_ms"]), int(obj["stop_ms"]), float(obj["start_wh"]), float(obj["stop_wh"]),
            float(obj["energy_wh"]), None if obj.get("nameplate_kw") is None else float(obj["nameplate_kw"]),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Refusal:
    """A record that is not taken: its session id (or ``#N``, its place), the field, why."""

    session_id: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"session {self.session_id}: {self.field}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"session_id": self.session_id, "field": self.field, "reason": self.reason}


Parsed = SessionRecord | Refusal


class _Bad(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def parse_file(data: bytes, name: str = "<sessions>") -> list[Parsed]:
    """The records of a JSON or CSV session file (JSON when it starts with ``{``)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SessionFileError(f"{name}: not UTF-8 text (byte {exc.start})") from exc
    if text.lstrip().startswith("{"):
        return _parse_json(text, name)
    return _parse_csv(text, name)


def _parse_json(text: str, name: str) -> list[Parsed]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SessionFileError(f"{name}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SessionFileError(f'{name}: format: a JSON session file says "format": "{FORMAT}"')
    extra = sorted(set(doc) - {"format", "sessions"})
    if extra:
        raise SessionFileError(f"{name}: {extra[0]}: unknown key (a session file has format and sessions)")
    rows = doc.get("sessions")
    if not isinstance(rows, list):
        raise SessionFileError(f"{name}: sessions: must be a list of session records")
    return [_record(row, i) for i, row in enumerate(rows)]


def _parse_csv(text: str, name: str) -> list[Parsed]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SessionFileError(f"{name}: empty file (a CSV session file starts with its header)") from None
    except csv.Error as exc:
        raise SessionFileError(f"{name}: line 1: {exc}") from exc
    header = [h.strip() for h in header]
    missing = [f for f in FIELDS if f not in header]
    unknown = [h for h in header if h not in FIELDS and h not in OPTIONAL]
    if missing or unknown or len(set(header)) != len(header):
        raise SessionFileError(
            f"{name}: line 1: the header must name the columns {', '.join(FIELDS)} "
            f"(and optionally {', '.join(OPTIONAL)}), each once: missing {missing}, unknown {unknown}"
        )
    out: list[Parsed] = []
    try:
        for row in reader:
            if not row or row == [""]:
                continue
            index = len(out)
            if len(row) != len(header):
                sid = row[header.index("session_id")] if len(row) > header.index("session_id") else ""
                why = f"{len(row)} cells, the header has {len(header)}"
                out.append(Refusal(sid or f"#{index}", "row", why))
                continue
            cells: dict[str, Any] = {h: v.strip() for h, v in zip(header, row, strict=True)}
            if cells.get("nameplate_kw") == "":
                cells.pop("nameplate_kw")
            out.append(_record(cells, index, from_csv=True))
    except csv.Error as exc:
        raise SessionFileError(f"{name}: line {reader.line_num}: {exc}") from exc
    return out


def _record(row: Any, index: int, *, from_csv: bool = False) -> Parsed:
    sid = row.get("session_id") if isinstance(row, dict) else None
    label = sid if isinstance(sid, str) and sid else f"#{index}"
    if not isinstance(row, dict):
        return Refusal(label, "record", "a session record is a JSON object")
    try:
        extra = sorted(set(row) - set(FIELDS) - set(OPTIONAL))
        if extra:
            raise _Bad(extra[0], "unknown field")
        for f in FIELDS:
            if f not in row:
                raise _Bad(f, "required, missing")
        names = {f: _name(row, f) for f in ("network", "session_id", "charger")}
        connector = row["connector"]
        if isinstance(connector, int) and not isinstance(connector, bool):
            connector = str(connector)
        if not isinstance(connector, str) or not NAME.match(connector):
            raise _Bad("connector", f"{connector!r} is not a connector id (a name or a number)")
        unit = row["unit"]
        if unit not in UNITS:
            raise _Bad("unit", f"{unit!r} is not Wh or kWh")
        scale = UNITS[unit]
        nameplate = None
        if row.get("nameplate_kw") is not None:
            nameplate = _number(row, "nameplate_kw", from_csv)
            if nameplate <= 0:
                raise _Bad("nameplate_kw", f"{nameplate!r} is not a positive power")
        return SessionRecord(
            names["network"], names["session_id"], names["charger"], connector,
            _time(row, "start"), _time(row, "stop"),
            _number(row, "start_reading", from_csv) * scale, _number(row, "stop_reading", from_csv) * scale,
            _number(row, "energy", from_csv) * scale, nameplate,
        )  # fmt: skip
    except _Bad as bad:
        return Refusal(label, bad.field, bad.reason)


def _name(row: dict[str, Any], field: str) -> str:
    v = row[field]
    if not isinstance(v, str) or not NAME.match(v):
        raise _Bad(field, f"{v!r} is not a name (1-128 of A-Z a-z 0-9 . _ : / -, first a letter or digit)")
    return v


def _number(row: dict[str, Any], field: str, from_csv: bool) -> float:
    v = row[field]
    if from_csv and isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise _Bad(field, f"{row[field]!r} is not a number") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _Bad(field, f"{v!r} is not a finite number")
    if v < 0:
        raise _Bad(field, f"{v!r} is negative")
    return float(v)


def _time(row: dict[str, Any], field: str) -> int:
    v = row[field]
    if not isinstance(v, str):
        raise _Bad(field, f"{v!r} is not an ISO 8601 time with an offset")
    try:
        moment = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise _Bad(field, f"{v!r} is not an ISO 8601 time with an offset") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _Bad(field, f"{v!r} has no UTC offset (write e.g. 2026-03-02T08:15:00+08:00)")
    return round(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class NetworkEntry:
    """A charging network enrolled at the aggregator: its manifest key is pinned here."""

    network: str
    public_key_pem: str
    key_id: str
    region: str | None
    added_ms: int


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session taken by an import: the record, its digest, the file it came from."""

    record: SessionRecord
    sha256: str  # of the record's canonical content
    source_sha256: str  # of the exact file bytes it was imported from
    import_id: int


@dataclass(slots=True)
class ImportReport:
    """What one import did: counts and a reason per refused record."""

    network: str
    source_sha256: str
    records: int
    accepted: list[str]
    duplicate: list[str]
    refused: list[Refusal]
    import_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "source_sha256": self.source_sha256,
            "import_id": self.import_id,
            "records": self.records,
            "accepted": len(self.accepted),
            "duplicate": len(self.duplicate),
            "refused": len(self.refused),
            "refusals": [r.to_json() for r in self.refused],
        }
