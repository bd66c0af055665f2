"""Evidence records: what a gateway attests, one canonical JSON object per record.

A record is encoded **once**, by :func:`encode_record`, into compact JSON (no spaces, ASCII
only, keys in the documented order, floats in Python's shortest round-trip form, no NaN).
Those exact bytes are the Merkle leaf; nobody re-serialises a record before verifying it.
:func:`decode_record` parses and validates the bytes back into an object.

Record types (``"type"`` key):

- ``interval``: one meter quantity over one clock-aligned interval ``[start, end)``.
  ``kind="counter"`` for cumulative registers (energy, heat, volume): the counter readings
  that bound the interval and their delta. ``kind="gauge"`` for instantaneous values
  (temperatures, flow): statistics only.
- ``drop``: the gateway had to drop sealed data (outbox cap reached) and says exactly what.
- ``key_rotation``: the gateway announces its next key, signed by the current one.
- ``session``: one charging session an OCPP charger reported (start and stop, register
  readings, the signed meter values exactly as carried, the assurance level).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Literal, get_args

from evidence.assurance import Assurance
from evidence.errors import MalformedRecord
from evidence.record_fields import (
    Count,
    WireField,
    compile_batch_encoder,
    compile_encoder,
    to_builtins,
    wire_fields,
)

Kind = Literal["counter", "gauge"]

Flag = Literal[
    "gap", "reset", "rollover", "session", "late", "out_of_order", "clock_jump", "invalid_value",
    "estimated", "first",
]  # fmt: skip
"""A quality flag an interval record may carry (format version 1); :data:`FLAG_MEANINGS` says
what each means. Flags explain why an interval is not a plain full-coverage reading; the
aggregator and methodologies decide what each flag means for crediting."""

FLAGS: frozenset[Flag] = frozenset(get_args(Flag))

FLAG_MEANINGS: dict[Flag, str] = {
    "gap": "fewer samples than expected, no counter reading at a bound, or the delta spans "
    "earlier intervals (counter_start older than the previous interval)",
    "reset": "counter went down: meter replaced or reset; delta excludes the jump",
    "rollover": "counter wrapped at its register width; delta corrected for the wrap",
    "session": "a per-session counter restarted at 0 (a new charging session); the delta counts "
    "the new session from 0, the old one's tail after its last reading is lost",
    "late": "samples arrived after the interval had first been closed",
    "out_of_order": "samples arrived with timestamps older than ones already seen",
    "clock_jump": "source timestamps jumped beyond the skew limit; samples rejected",
    "invalid_value": "NaN, not-implemented markers or absurd values were rejected",
    "estimated": "value derived, not measured (e.g. heat = electricity x COP)",
    "first": "first interval of a meter: no earlier reading bounds its start",
}
if FLAG_MEANINGS.keys() != FLAGS:
    raise TypeError(
        f"FLAG_MEANINGS must explain exactly the flags of Flag: {sorted(FLAGS ^ FLAG_MEANINGS.keys())}"
    )

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Stats:
    """Minimum, mean and maximum of a rate (power) or a gauge over an interval."""

    unit: str
    min: float
    avg: float
    max: float

    def to_json(self) -> dict[str, Any]:
        return to_builtins(self, STATS_FIELDS)


@dataclass(frozen=True, slots=True)
class IntervalRecord:
    """One metered quantity of one meter over the clock-aligned interval [start, end).

    For a counter, ``counter_start`` is the last reading at or before ``start`` (the
    previous interval's ``counter_end``) and ``counter_end`` the last reading before
    ``end``; ``delta`` is the energy between them, corrected for rollover, excluding a
    reset jump. Readings are never interpolated: the ``*_time`` fields say when each was
    taken (POSIX milliseconds). ``samples`` / ``expected`` is the coverage.

    This declaration is the record's only field list: the keys after ``type``, in this
    order, with these types (:data:`INTERVAL_FIELDS`). The encoder, the decoders (this
    module's and the aggregator's msgspec one) and the JSON form are derived from it.
    """

    meter: str
    quantity: str
    unit: str
    start: int
    end: int
    kind: Kind = "counter"
    counter_start: float | None = None
    counter_start_time_ms: int | None = None
    counter_end: float | None = None
    counter_end_time_ms: int | None = None
    delta: float | None = None
    stats: Stats | None = None
    samples: Count = 0
    expected: Count = 0
    flags: tuple[Flag, ...] = ()

    type = "interval"

    @property
    def coverage(self) -> float:
        """Samples seen / samples expected, in [0, 1]."""
        return min(1.0, self.samples / self.expected) if self.expected else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"type": "interval", **to_builtins(self, INTERVAL_FIELDS)}


STATS_FIELDS = wire_fields(Stats)
INTERVAL_FIELDS = wire_fields(IntervalRecord)
"""The interval record's keys after ``type``, read from :class:`IntervalRecord`."""
_encode_interval = compile_encoder("interval", INTERVAL_FIELDS)


@dataclass(frozen=True, slots=True)
class IntervalRef:
    """Names the intervals of one meter quantity lying within ``[start, end)``, without
    their values: one interval, or a run of consecutive ones (see :func:`coalesce_refs`)."""

    meter: str
    quantity: str
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return {"meter": self.meter, "quantity": self.quantity, "start": self.start, "end": self.end}

    def covers(self, meter: str, quantity: str, start: int, end: int) -> bool:
        """Whether the interval ``[start, end)`` of ``meter``/``quantity`` is named here."""
        return meter == self.meter and quantity == self.quantity and self.start <= start and end <= self.end


def coalesce_refs(refs: Iterable[IntervalRef]) -> tuple[IntervalRef, ...]:
    """The same intervals as fewer refs: per meter quantity, intervals that follow each other
    exactly (one's end is the next one's start) become one run ``[first start, last end)``.

    A drop record names what was dropped this way, so it grows with the number of series and
    holes, not with the number of intervals (a month of 15-minute intervals of one series is
    one ref, not 2,880). Runs never bridge a hole: an interval kept (or never made) between two
    dropped ones splits the run. Duplicates collapse; the result is sorted.
    """
    out: list[IntervalRef] = []
    for r in sorted(set(refs), key=lambda r: (r.meter, r.quantity, r.start, r.end)):
        last = out[-1] if out else None
        if last is not None and (last.meter, last.quantity) == (r.meter, r.quantity) and r.start <= last.end:
            if r.end > last.end:
                out[-1] = IntervalRef(r.meter, r.quantity, last.start, r.end)
            continue
        out.append(r)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DroppedBatch:
    """A sealed batch the gateway discarded, by sequence number and header hash."""

    seq: int
    header_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "header_sha256": self.header_sha256}


@dataclass(frozen=True, slots=True)
class DropRecord:
    """The gateway dropped data it could not keep, and says exactly what."""

    reason: str  # e.g. "outbox_cap"
    policy: str  # e.g. "drop_oldest", "drop_newest"
    batches: tuple[DroppedBatch, ...]
    intervals: tuple[IntervalRef, ...]
    detail: str = ""

    type = "drop"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "drop",
            "reason": self.reason,
            "policy": self.policy,
            "batches": [b.to_json() for b in self.batches],
            "intervals": [i.to_json() for i in self.intervals],
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class KeyRotationRecord:
    """Announces the gateway's next key; valid from batch ``effective_seq`` on."""

    new_key_id: str
    new_public_key: str  # base64 of the DER SubjectPublicKeyInfo
    effective_seq: int

    type = "key_rotation"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "key_rotation",
            "new_key_id": self.new_key_id,
            "new_public_key": self.new_public_key,
            "effective_seq": self.effective_seq,
        }


SessionFlag = Literal[
    "start_unseen", "stop_unseen", "gateway_restart", "signature_failed", "register_mismatch",
    "register_decreased",
]  # fmt: skip
"""A quality flag a session record may carry; :data:`SESSION_FLAG_MEANINGS` says what each means."""

SESSION_FLAGS: frozenset[SessionFlag] = frozenset(get_args(SessionFlag))

SESSION_FLAG_MEANINGS: dict[SessionFlag, str] = {
    "start_unseen": "the gateway did not see the session start: no register_start, no energy",
    "stop_unseen": "the session's stop was never seen (closed by a later start on the connector)",
    "gateway_restart": "the gateway restarted while the session was open (the start was restored "
    "from its durable state)",
    "signature_failed": "a signed meter value of the session did not verify with the pinned key "
    "(or none was pinned, or it was malformed)",
    "register_mismatch": "a plain register reading differs by more than 1 Wh from the "
    "meter-signed reading of the same bound",
    "register_decreased": "register_stop is below register_start: no energy",
}
if SESSION_FLAG_MEANINGS.keys() != SESSION_FLAGS:
    raise TypeError("SESSION_FLAG_MEANINGS must explain exactly the flags of SessionFlag")

SignatureStatus = Literal["verified", "signature_failed", "no_pinned_key", "key_mismatch", "malformed"]
SIGNATURE_STATUSES: frozenset[str] = frozenset(get_args(SignatureStatus))


@dataclass(frozen=True, slots=True)
class CarriedValue:
    """A signed meter value of a session exactly as the charger carried it (OCMF, its base64
    or hex, or a JSON wrapper), the context it came with and what checking it gave."""

    context: str | None  # Transaction.Begin, Sample.Clock, Transaction.End, ...
    carried: str
    status: SignatureStatus

    def to_json(self) -> dict[str, Any]:
        return {"context": self.context, "carried": self.carried, "status": self.status}


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One charging session of one connector (OCPP), as the gateway read it.

    ``register_start_wh`` / ``register_stop_wh`` are the register readings that bound the
    session (the meter-signed ones where both verified, else the charger's plain
    meterStart/meterStop or Begin/End values); ``energy_wh`` their difference (None when a
    bound is missing or the register went down). ``signed_values`` keeps every signed value
    of the session as carried; ``meter_key`` is the meter key pinned at enrolment (DER hex)
    they were checked with. ``assurance`` is ``meter_signed`` only if both bounds are
    meter-signed readings that verified with that key, else ``gateway_signed``.
    """

    charger: str
    connector: int | None
    meter: str | None
    transaction_id: str
    protocol: str  # ocpp1.6 | ocpp2.0.1
    start_time_ms: int | None
    stop_time_ms: int
    register_start_wh: float | None
    register_stop_wh: float | None
    energy_wh: float | None
    stop_reason: str | None
    signed_values: tuple[CarriedValue, ...]
    meter_key: str | None
    assurance: Assurance
    flags: tuple[SessionFlag, ...] = ()

    type = "session"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "session",
            "charger": self.charger,
            "connector": self.connector,
            "meter": self.meter,
            "transaction_id": self.transaction_id,
            "protocol": self.protocol,
            "start_time_ms": self.start_time_ms,
            "stop_time_ms": self.stop_time_ms,
            "register_start_wh": self.register_start_wh,
            "register_stop_wh": self.register_stop_wh,
            "energy_wh": self.energy_wh,
            "stop_reason": self.stop_reason,
            "signed_values": [v.to_json() for v in self.signed_values],
            "meter_key": self.meter_key,
            "assurance": self.assurance,
            "flags": sorted(self.flags),
        }


SESSION_KEYS = frozenset(SessionRecord("", None, None, "", "", None, 0, None, None, None, None, (), None,
                                       "gateway_signed").to_json())  # fmt: skip

Record = IntervalRecord | DropRecord | KeyRotationRecord | SessionRecord


def encode_record(record: Record) -> bytes:
    """The record's canonical bytes: the Merkle leaf. Raises on NaN or infinity."""
    try:
        if isinstance(record, IntervalRecord):
            return _encode_interval(record)
        return _ENCODER.encode(record.to_json()).encode("ascii")
    except ValueError as exc:  # allow_nan=False, or _num
        raise MalformedRecord(f"{_describe(record)}: value is NaN or infinite") from exc


def encode_records(records: Sequence[Record]) -> list[bytes]:
    """``[encode_record(r) for r in records]``: the same bytes, at about half the cost for
    interval records (see :func:`evidence.record_fields.compile_batch_encoder`)."""
    return _encode_many(records)


_encode_many = compile_batch_encoder("interval", IntervalRecord, INTERVAL_FIELDS, encode_record)


def _describe(record: Record) -> str:
    if isinstance(record, IntervalRecord):
        return f"record {record.meter}/{record.quantity}@{record.start}"
    if isinstance(record, SessionRecord):
        return f"session record {record.charger}/{record.transaction_id}"
    return f"{record.type} record"


def decode_record(data: bytes) -> Record:
    """Parse and validate one record's bytes. Raises :class:`MalformedRecord`."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedRecord(f"record is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedRecord("record is not a JSON object")
    kind = obj.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise MalformedRecord(f"record type {kind!r} is not one of {sorted(_DECODERS)}")
    return decoder(_Fields(obj, str(kind)))


class _Fields:
    """Typed access to a decoded JSON object; errors name the field."""

    def __init__(self, obj: dict[str, Any], where: str) -> None:
        self.obj = obj
        self.where = where

    def _fail(self, key: str, expected: str) -> MalformedRecord:
        return MalformedRecord(f"{self.where}.{key}: expected {expected}, got {self.obj.get(key)!r}")

    def exact_keys(self, keys: AbstractSet[str]) -> None:
        if self.obj.keys() != keys:
            extra, missing = self.obj.keys() - keys, keys - self.obj.keys()
            raise MalformedRecord(
                f"{self.where}: unknown keys {sorted(extra)}, missing keys {sorted(missing)}"
            )

    def text(self, key: str) -> str:
        v = self.obj.get(key)
        if not isinstance(v, str):
            raise self._fail(key, "a string")
        return v

    def integer(self, key: str) -> int:
        v = self.obj.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self._fail(key, "an integer")
        return v

    def opt_text(self, key: str) -> str | None:
        v = self.obj.get(key)
        if v is not None and not isinstance(v, str):
            raise self._fail(key, "a string or null")
        return v

    def opt_integer(self, key: str) -> int | None:
        v = self.obj.get(key)
        if v is None:
            return None
        return self.integer(key)

    def opt_number(self, key: str) -> float | None:
        v = self.obj.get(key)
        if v is None:
            return None
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise self._fail(key, "a finite number or null")
        return float(v)

    def array(self, key: str) -> list[Any]:
        v = self.obj.get(key)
        if not isinstance(v, list):
            raise self._fail(key, "a list")
        return v

    def sub(self, key: str, value: Any, index: int | None = None) -> _Fields:
        where = f"{self.where}.{key}" + ("" if index is None else f"[{index}]")
        if not isinstance(value, dict):
            raise MalformedRecord(f"{where}: expected an object, got {value!r}")
        return _Fields(value, where)


_Read = Callable[[_Fields], Any]


def _object_reader(cls: Callable[..., Any], specs: tuple[WireField, ...], tag: tuple[str, ...] = ()) -> _Read:
    """Reads an object whose keys are exactly ``tag`` and ``specs``' into ``cls``, each value
    checked against its declared form."""
    keys = frozenset((*tag, *(s.name for s in specs)))
    readers = tuple(_reader(s) for s in specs)  # in declaration order: cls's positional order

    def read(f: _Fields) -> Any:
        f.exact_keys(keys)
        return cls(*[read_field(f) for read_field in readers])

    return read


def _reader(spec: WireField) -> _Read:
    """Reads ``spec``'s key from an object, checked against its declared form (one call a
    field: the reference decoder is also the store's and the sealer's)."""
    key, nullable, choices = spec.name, spec.nullable, spec.choices

    def read_text(f: _Fields) -> Any:
        v = f.obj.get(key)
        if isinstance(v, str) or (v is None and nullable):
            return v
        raise f._fail(key, "a string")

    def read_integer(f: _Fields) -> Any:
        v = f.obj.get(key)
        if (isinstance(v, int) and not isinstance(v, bool) and (least is None or v >= least)) or (
            v is None and nullable
        ):
            return v
        raise f._fail(key, "an integer" if least is None else "an integer >= 0")

    def read_number(f: _Fields) -> Any:
        v = f.obj.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
        if v is None and nullable:
            return None
        raise f._fail(key, "a finite number or null" if nullable else "a finite number")

    def read_choice(f: _Fields) -> Any:
        v = f.obj.get(key)
        if v in choices or (v is None and nullable):
            return v
        raise f._fail(key, " or ".join(map(repr, choices)))

    def read_choice_list(f: _Fields) -> Any:
        if f.obj.get(key) is None and nullable:
            return None
        items = f.array(key)
        unknown = [x for x in items if x not in choices]
        if unknown:
            raise MalformedRecord(f"{f.where}.{key}: unknown {key} {unknown}; known: {sorted(choices)}")
        return tuple(items)

    def read_object(f: _Fields) -> Any:
        v = f.obj.get(key)
        return None if v is None and nullable else read_members(f.sub(key, v))

    least = 0 if spec.form == "count" else None
    if spec.form == "object":
        read_members = _object_reader(spec.type, spec.members)
    return {
        "text": read_text,
        "integer": read_integer,
        "count": read_integer,
        "number": read_number,
        "choice": read_choice,
        "choice_list": read_choice_list,
        "object": read_object,
    }[spec.form]


_read_interval = _object_reader(IntervalRecord, INTERVAL_FIELDS, tag=("type",))


def _decode_interval(f: _Fields) -> IntervalRecord:
    rec: IntervalRecord = _read_interval(f)
    if rec.end <= rec.start:
        raise MalformedRecord(f"{f.where}: end {rec.end} is not after start {rec.start}")
    if rec.kind == "gauge" and rec.delta is not None:
        raise MalformedRecord(f"{f.where}.delta: a gauge has no delta")
    return rec


def _decode_drop(f: _Fields) -> DropRecord:
    f.exact_keys({"type", "reason", "policy", "batches", "intervals", "detail"})
    batches = []
    for i, raw in enumerate(f.array("batches")):
        b = f.sub("batches", raw, i)
        b.exact_keys({"seq", "header_sha256"})
        batches.append(DroppedBatch(b.integer("seq"), b.text("header_sha256")))
    intervals = []
    for i, raw in enumerate(f.array("intervals")):
        r = f.sub("intervals", raw, i)
        r.exact_keys({"meter", "quantity", "start", "end"})
        ref = IntervalRef(r.text("meter"), r.text("quantity"), r.integer("start"), r.integer("end"))
        intervals.append(ref)
    return DropRecord(f.text("reason"), f.text("policy"), tuple(batches), tuple(intervals), f.text("detail"))


def _decode_rotation(f: _Fields) -> KeyRotationRecord:
    f.exact_keys({"type", "new_key_id", "new_public_key", "effective_seq"})
    return KeyRotationRecord(f.text("new_key_id"), f.text("new_public_key"), f.integer("effective_seq"))


def _decode_session(f: _Fields) -> SessionRecord:
    f.exact_keys(SESSION_KEYS)
    values = []
    for i, raw in enumerate(f.array("signed_values")):
        v = f.sub("signed_values", raw, i)
        v.exact_keys({"context", "carried", "status"})
        status = v.text("status")
        if status not in SIGNATURE_STATUSES:
            raise MalformedRecord(f"{v.where}.status: {status!r} is not one of {sorted(SIGNATURE_STATUSES)}")
        values.append(CarriedValue(v.opt_text("context"), v.text("carried"), status))  # type: ignore[arg-type]
    assurance = f.text("assurance")
    if assurance not in ("meter_signed", "gateway_signed"):
        raise MalformedRecord(f"session.assurance: {assurance!r} is not meter_signed or gateway_signed")
    flags = f.array("flags")
    unknown = [x for x in flags if x not in SESSION_FLAGS]
    if unknown or flags != sorted(set(flags)):
        known = sorted(SESSION_FLAGS)
        raise MalformedRecord(f"session.flags: unknown or unsorted flags {flags}; known: {known}")
    rec = SessionRecord(
        f.text("charger"), f.opt_integer("connector"), f.opt_text("meter"), f.text("transaction_id"),
        f.text("protocol"), f.opt_integer("start_time_ms"), f.integer("stop_time_ms"),
        f.opt_number("register_start_wh"), f.opt_number("register_stop_wh"), f.opt_number("energy_wh"),
        f.opt_text("stop_reason"), tuple(values), f.opt_text("meter_key"),
        assurance,  # type: ignore[arg-type]
        tuple(flags),
    )  # fmt: skip
    if rec.assurance == "meter_signed" and not any(v.status == "verified" for v in rec.signed_values):
        raise MalformedRecord(f"{f.where}.assurance: meter_signed without a verified signed value")
    return rec


_DECODERS: dict[str, Callable[[_Fields], Record]] = {
    "interval": _decode_interval,
    "drop": _decode_drop,
    "key_rotation": _decode_rotation,
    "session": _decode_session,
}
