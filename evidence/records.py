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
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from evidence.errors import MalformedRecord

Kind = Literal["counter", "gauge"]

# Quality flags an interval record may carry (format version 1). Flags explain why an
# interval is not a plain full-coverage reading; the aggregator and methodologies decide
# what each flag means for crediting.
FLAGS: frozenset[str] = frozenset(
    {
        "gap",  # fewer samples than expected, no counter reading at a bound, or the delta
        # spans earlier intervals (counter_start older than the previous interval)
        "reset",  # counter went down: meter replaced or reset; delta excludes the jump
        "rollover",  # counter wrapped at its register width; delta corrected for the wrap
        "session",  # a per-session counter restarted at 0 (a new charging session); the
        # delta counts the new session from 0, the old one's tail after its last reading is lost
        "late",  # samples arrived after the interval had first been closed
        "out_of_order",  # samples arrived with timestamps older than ones already seen
        "clock_jump",  # source timestamps jumped beyond the skew limit; samples rejected
        "invalid_value",  # NaN, not-implemented markers or absurd values were rejected
        "estimated",  # value derived, not measured (e.g. heat = electricity x COP)
        "first",  # first interval of a meter: no earlier reading bounds its start
    }
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
        return {"unit": self.unit, "min": self.min, "avg": self.avg, "max": self.max}


@dataclass(frozen=True, slots=True)
class IntervalRecord:
    """One metered quantity of one meter over the clock-aligned interval [start, end).

    For a counter, ``counter_start`` is the last reading at or before ``start`` (the
    previous interval's ``counter_end``) and ``counter_end`` the last reading before
    ``end``; ``delta`` is the energy between them, corrected for rollover, excluding a
    reset jump. Readings are never interpolated: the ``*_time`` fields say when each was
    taken (POSIX milliseconds). ``samples`` / ``expected`` is the coverage.
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
    samples: int = 0
    expected: int = 0
    flags: tuple[str, ...] = ()

    type = "interval"

    @property
    def coverage(self) -> float:
        """Samples seen / samples expected, in [0, 1]."""
        return min(1.0, self.samples / self.expected) if self.expected else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "interval",
            "meter": self.meter,
            "quantity": self.quantity,
            "unit": self.unit,
            "start": self.start,
            "end": self.end,
            "kind": self.kind,
            "counter_start": self.counter_start,
            "counter_start_time_ms": self.counter_start_time_ms,
            "counter_end": self.counter_end,
            "counter_end_time_ms": self.counter_end_time_ms,
            "delta": self.delta,
            "stats": None if self.stats is None else self.stats.to_json(),
            "samples": self.samples,
            "expected": self.expected,
            "flags": sorted(self.flags),
        }


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


Record = IntervalRecord | DropRecord | KeyRotationRecord


def encode_record(record: Record) -> bytes:
    """The record's canonical bytes: the Merkle leaf. Raises on NaN or infinity."""
    try:
        if isinstance(record, IntervalRecord):
            return _encode_interval(record)
        return _ENCODER.encode(record.to_json()).encode("ascii")
    except ValueError as exc:  # allow_nan=False, or _num
        raise MalformedRecord(f"{_describe(record)}: value is NaN or infinite") from exc


_INTERVAL_TEMPLATE = (
    '{"type":"interval","meter":%s,"quantity":%s,"unit":%s,"start":%d,"end":%d,"kind":%s,'
    '"counter_start":%s,"counter_start_time_ms":%s,"counter_end":%s,"counter_end_time_ms":%s,'
    '"delta":%s,"stats":%s,"samples":%d,"expected":%d,"flags":[%s]}'
)
_STATS_TEMPLATE = '{"unit":%s,"min":%s,"avg":%s,"max":%s}'
_float_repr = float.__repr__


def _num(x: float | None) -> str:
    if x is None:
        return "null"
    if not math.isfinite(x):
        raise ValueError("not finite")
    return _float_repr(float(x))


def _int(x: int | None) -> str:
    return "null" if x is None else str(int(x))


def _encode_interval(r: IntervalRecord) -> bytes:
    # The hot path of sealing. A fixed template gives the bytes of the compact JSON encoder
    # on to_json() (a test holds them equal) at about half the cost. Float fields are
    # always written in float form ("0.0", never "0").
    fast = _encode_interval_fast(r)
    if fast is not None:
        return fast
    es = encode_basestring_ascii
    st = r.stats
    stats = (
        "null" if st is None else _STATS_TEMPLATE % (es(st.unit), _num(st.min), _num(st.avg), _num(st.max))
    )
    text = _INTERVAL_TEMPLATE % (
        es(r.meter), es(r.quantity), es(r.unit), r.start, r.end, es(r.kind),
        _num(r.counter_start), _int(r.counter_start_time_ms),
        _num(r.counter_end), _int(r.counter_end_time_ms), _num(r.delta), stats,
        r.samples, r.expected, ",".join([es(f) for f in sorted(r.flags)]),
    )  # fmt: skip
    return text.encode("ascii")


_FAST_TEMPLATE = (
    _INTERVAL_TEMPLATE.replace('"counter_start":%s', '"counter_start":%r')
    .replace('"counter_end":%s', '"counter_end":%r')
    .replace('"delta":%s', '"delta":%r')
    .replace('"stats":%s', '"stats":{"unit":%s,"min":%r,"avg":%r,"max":%r}')
)


def _encode_interval_fast(r: IntervalRecord) -> bytes | None:
    """The common case (every number present, floats are floats): one %-format, no calls
    per field. Returns None to send anything else down the general path."""
    st = r.stats
    a, b, d = r.counter_start, r.counter_end, r.delta
    ta, tb = r.counter_start_time_ms, r.counter_end_time_ms
    if (
        st is None or type(a) is not float or type(b) is not float or type(d) is not float
        or type(ta) is not int or type(tb) is not int or type(st.min) is not float
        or type(st.avg) is not float or type(st.max) is not float
        or not math.isfinite(a + b + d + st.min + st.avg + st.max)
    ):  # fmt: skip
        return None
    es = encode_basestring_ascii
    flags = ",".join([es(f) for f in sorted(r.flags)]) if r.flags else ""
    return (
        _FAST_TEMPLATE
        % (
            es(r.meter),
            es(r.quantity),
            es(r.unit),
            r.start,
            r.end,
            es(r.kind),
            a,
            ta,
            b,
            tb,
            d,
            es(st.unit),
            st.min,
            st.avg,
            st.max,
            r.samples,
            r.expected,
            flags,
        )
    ).encode("ascii")


def _describe(record: Record) -> str:
    if isinstance(record, IntervalRecord):
        return f"record {record.meter}/{record.quantity}@{record.start}"
    return f"{record.type} record"


def decode_record(data: bytes) -> Record:
    """Parse and validate one record's bytes. Raises :class:`MalformedRecord`."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
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

    def exact_keys(self, keys: tuple[str, ...]) -> None:
        extra = set(self.obj) - set(keys)
        missing = set(keys) - set(self.obj)
        if extra or missing:
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

    def opt_integer(self, key: str) -> int | None:
        return None if self.obj.get(key) is None else self.integer(key)

    def num(self, key: str) -> float | None:
        v = self.obj.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
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


_INTERVAL_KEYS = tuple(IntervalRecord("m", "q", "u", 0, 1).to_json())
_STATS_KEYS = ("unit", "min", "avg", "max")


def _decode_stats(f: _Fields) -> Stats | None:
    raw = f.obj.get("stats")
    if raw is None:
        return None
    s = f.sub("stats", raw)
    s.exact_keys(_STATS_KEYS)
    lo, avg, hi = s.num("min"), s.num("avg"), s.num("max")
    if lo is None or avg is None or hi is None:
        raise MalformedRecord(f"{s.where}: min, avg and max must be numbers")
    return Stats(s.text("unit"), lo, avg, hi)


def _decode_interval(f: _Fields) -> IntervalRecord:
    f.exact_keys(_INTERVAL_KEYS)
    kind = f.text("kind")
    if kind not in ("counter", "gauge"):
        raise f._fail("kind", "'counter' or 'gauge'")
    flags = f.array("flags")
    unknown = [x for x in flags if x not in FLAGS]
    if unknown:
        raise MalformedRecord(f"{f.where}.flags: unknown flags {unknown}; known: {sorted(FLAGS)}")
    rec = IntervalRecord(
        meter=f.text("meter"),
        quantity=f.text("quantity"),
        unit=f.text("unit"),
        start=f.integer("start"),
        end=f.integer("end"),
        kind="counter" if kind == "counter" else "gauge",
        counter_start=f.num("counter_start"),
        counter_start_time_ms=f.opt_integer("counter_start_time_ms"),
        counter_end=f.num("counter_end"),
        counter_end_time_ms=f.opt_integer("counter_end_time_ms"),
        delta=f.num("delta"),
        stats=_decode_stats(f),
        samples=f.integer("samples"),
        expected=f.integer("expected"),
        flags=tuple(flags),
    )
    if rec.end <= rec.start:
        raise MalformedRecord(f"{f.where}: end {rec.end} is not after start {rec.start}")
    if rec.samples < 0 or rec.expected < 0:
        raise MalformedRecord(f"{f.where}: samples and expected must be >= 0")
    if rec.kind == "gauge" and rec.delta is not None:
        raise MalformedRecord(f"{f.where}.delta: a gauge has no delta")
    return rec


def _decode_drop(f: _Fields) -> DropRecord:
    f.exact_keys(("type", "reason", "policy", "batches", "intervals", "detail"))
    batches = []
    for i, raw in enumerate(f.array("batches")):
        b = f.sub("batches", raw, i)
        b.exact_keys(("seq", "header_sha256"))
        batches.append(DroppedBatch(b.integer("seq"), b.text("header_sha256")))
    intervals = []
    for i, raw in enumerate(f.array("intervals")):
        r = f.sub("intervals", raw, i)
        r.exact_keys(("meter", "quantity", "start", "end"))
        ref = IntervalRef(r.text("meter"), r.text("quantity"), r.integer("start"), r.integer("end"))
        intervals.append(ref)
    return DropRecord(f.text("reason"), f.text("policy"), tuple(batches), tuple(intervals), f.text("detail"))


def _decode_rotation(f: _Fields) -> KeyRotationRecord:
    f.exact_keys(("type", "new_key_id", "new_public_key", "effective_seq"))
    return KeyRotationRecord(f.text("new_key_id"), f.text("new_public_key"), f.integer("effective_seq"))


_DECODERS: dict[str, Callable[[_Fields], Record]] = {
    "interval": _decode_interval,
    "drop": _decode_drop,
    "key_rotation": _decode_rotation,
}
