"""Interval records on the aggregator's hot path: decoded and validated in C by msgspec.

:func:`evidence.records.decode_record` is the reference decoder and stays the judge of what a
record is. Ingest decodes tens of thousands of records a second, so the common case goes
through :data:`_DECODER` instead: a msgspec decoder into :class:`IntervalDoc`, a frozen
struct that is not tracked by the garbage collector (about 1 µs a record, against 8 µs for
``json.loads`` plus checks in Python). It accepts a subset of what ``decode_record``
accepts; anything it refuses (another record type, a NaN token, a
lone surrogate, a malformed value) goes to ``decode_record``, which either accepts it
too or says exactly what is wrong. A property test holds the two in agreement.

:class:`IntervalDoc` is made from the declaration of :class:`evidence.records.IntervalRecord`
(:func:`doc_struct`): the same attribute names and types, so the plausibility checks and the
line protocol builder take either (:data:`Interval`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import msgspec

from evidence.batch import SealedBatch
from evidence.errors import MalformedRecord
from evidence.record_fields import WireField, wire_fields
from evidence.records import (
    DropRecord,
    IntervalRecord,
    KeyRotationRecord,
    SessionRecord,
    Stats,
    decode_record,
)

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


@functools.cache
def doc_struct(cls: type[Any], tag: str | None = None) -> type[msgspec.Struct]:
    """The msgspec struct of the record dataclass ``cls``: frozen, not tracked by the garbage
    collector, its keys exactly ``type`` (= ``tag``, when given) and ``cls``'s wire fields,
    every one required (with ``forbid_unknown_fields``, the key set is exactly the record's)."""
    head: list[tuple[str, Any]] = [] if tag is None else [("type", Literal[tag])]
    fields = [*head, *((f.name, _msgspec_type(f)) for f in wire_fields(cls))]
    name = cls.__name__.removesuffix("Record") + "Doc"  # IntervalRecord -> IntervalDoc
    return msgspec.defstruct(name, fields, frozen=True, gc=False, forbid_unknown_fields=True, module=__name__)


def _msgspec_type(f: WireField) -> Any:
    t: Any
    if f.form == "object":
        t = doc_struct(f.type)
    elif f.form == "count":
        t = NonNegative
    else:  # str, int, float, a Literal, a tuple of a Literal: msgspec checks them as declared
        t = f.type
    return Optional[t] if f.nullable else t  # noqa: UP045 (a runtime type, not an annotation)


if TYPE_CHECKING:
    # mypy reads a doc as the record it is derived from: the same attribute names and types.
    IntervalDoc = IntervalRecord
    StatsDoc = Stats
else:
    IntervalDoc = doc_struct(IntervalRecord, tag="interval")
    StatsDoc = doc_struct(Stats)

Interval = IntervalDoc | IntervalRecord
"""What the plausibility checks and the line builder read: attribute access only."""

_DECODER = msgspec.json.Decoder(IntervalDoc)


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
    """A batch's interval records (with their leaf index), drop and key-rotation records
    (session records: :func:`decode_all_records`).

    Raises :class:`MalformedRecord` naming the batch and the record's index.
    """
    intervals, drops, rotations, _ = decode_all_records(sealed)
    return intervals, drops, rotations


def decode_all_records(
    sealed: SealedBatch,
) -> tuple[
    list[tuple[int, Interval]], list[DropRecord], list[KeyRotationRecord], list[tuple[int, SessionRecord]]
]:
    """:func:`decode_records` and the batch's OCPP session records (with their leaf index)."""
    sessions: list[tuple[int, SessionRecord]] = []
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
        elif isinstance(record, SessionRecord):
            sessions.append((index, record))
        else:
            intervals.append((index, record))
    return intervals, drops, rotations, sessions
