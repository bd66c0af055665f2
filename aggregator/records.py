"""Interval records on the aggregator's hot path: decoded and validated in C by msgspec.

:func:`evidence.records.decode_record` is the reference decoder and stays the judge of what a
record is. Ingest decodes tens of thousands of records a second, so the common case goes
through :data:`_DECODER` instead: a msgspec decoder into :class:`IntervalDoc`, a frozen
struct that is not tracked by the garbage collector (about 1 µs a record, against 8 µs for
``json.loads`` plus checks in Python). It accepts a subset of what ``decode_record``
accepts; anything it refuses (another record type, a NaN token, a
lone surrogate, a malformed value) goes to ``decode_record``, which either accepts it
too or says exactly what is wrong. A property test holds the two in agreement.

:class:`IntervalDoc` has the attribute names of :class:`evidence.records.IntervalRecord`,
so the plausibility checks and the line protocol builder take either (:data:`Interval`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from evidence.batch import SealedBatch
from evidence.errors import MalformedRecord
from evidence.records import FLAGS, DropRecord, IntervalRecord, KeyRotationRecord, decode_record

Flag = Literal[
    "gap", "reset", "rollover", "session", "late", "out_of_order", "clock_jump", "invalid_value",
    "estimated", "first",
]  # fmt: skip
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class StatsDoc(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """The ``stats`` object of an interval record."""

    unit: str
    min: float
    avg: float
    max: float


class IntervalDoc(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """An interval record as msgspec decodes it: every key required, types checked.

    Every field is required (no defaults), so with ``forbid_unknown_fields`` the key set is
    exactly the record's.
    """

    type: Literal["interval"]
    meter: str
    quantity: str
    unit: str
    start: int
    end: int
    kind: Literal["counter", "gauge"]
    counter_start: float | None
    counter_start_time_ms: int | None
    counter_end: float | None
    counter_end_time_ms: int | None
    delta: float | None
    stats: StatsDoc | None
    samples: NonNegative
    expected: NonNegative
    flags: tuple[Flag, ...]


Interval = IntervalDoc | IntervalRecord
"""What the plausibility checks and the line builder read: attribute access only."""

_DECODER = msgspec.json.Decoder(IntervalDoc)
assert set(Flag.__args__) == FLAGS, "the msgspec Flag literal must list evidence.records.FLAGS"  # type: ignore[attr-defined]


def decode_interval(raw: bytes) -> IntervalDoc | None:
    """The record as an :class:`IntervalDoc` when the fast path accepts it, else None.

    None means "ask :func:`evidence.records.decode_record`", not "invalid".
    """
    try:
        doc = _DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if doc.end <= doc.start or (doc.kind == "gauge" and doc.delta is not None):
        return None  # decode_record refuses it and says why
    return doc


def decode_records(
    sealed: SealedBatch,
) -> tuple[list[tuple[int, Interval]], list[DropRecord], list[KeyRotationRecord]]:
    """A batch's interval records (with their leaf index), drop and key-rotation records.

    Raises :class:`MalformedRecord` naming the batch and the record's index.
    """
    intervals: list[tuple[int, Interval]] = []
    drops: list[DropRecord] = []
    rotations: list[KeyRotationRecord] = []
    fast = decode_interval
    for index, raw in enumerate(sealed.records):
        doc = fast(raw)
        if doc is not None:
            intervals.append((index, doc))
            continue
        try:
            record = decode_record(raw)
        except MalformedRecord as exc:
            raise MalformedRecord(f"{sealed.header.label}: record {index}: {exc}") from exc
        if isinstance(record, DropRecord):
            drops.append(record)
        elif isinstance(record, KeyRotationRecord):
            rotations.append(record)
        else:
            intervals.append((index, record))
    return intervals, drops, rotations
