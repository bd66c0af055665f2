"""What the evidence store keeps and hands out: plain rows, the same for every backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aggregator.view import MeterInfo

INFLUX_PENDING, INFLUX_WRITTEN, INFLUX_FAILED = 0, 1, 2  # a stored batch's InfluxDB outbox state
IntervalKey = tuple[int, int]  # (batch row id, leaf index): an interval's place in arrival order


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """A gateway key: valid for batches from ``valid_from_seq`` on, until revoked or rotated."""

    gateway: str
    key_id: str
    public_key_der: bytes
    valid_from_seq: int
    source: str  # "enrolment" | "rotation@<seq>"
    added_ms: int
    revoked_from_ms: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayEntry:
    """An enrolled gateway with its meters and every key it ever had."""

    gateway: str
    site: str
    region: str | None
    enrolled_ms: int
    meters: tuple[MeterInfo, ...]
    keys: tuple[KeyEntry, ...]
    document: bytes = b""


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """Where an interval record sits in its batch, and its plausibility issues."""

    index: int
    meter: str
    quantity: str
    start: int
    end: int
    issues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChainSessionRow:
    """Where an OCPP ``session`` record sits in its batch (a chain session: read and sealed by
    a gateway, not imported), and what it is looked up by."""

    index: int
    charger: str
    connector: int | None
    meter: str | None
    transaction_id: str
    start_time_ms: int | None
    stop_time_ms: int
    energy_wh: float | None
    assurance: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AcceptedBatch:
    """Everything stored, in one transaction, for a verified batch the chain accepted."""

    gateway: str
    seq: int
    header_sha256: str
    prev: str
    key_id: str
    root: str
    created_ms: int
    received_ms: int
    count: int
    verdict: str  # append | gap | reorder
    data: bytes  # the exact signed batch bytes
    intervals: Sequence[IntervalRow] = ()
    missing: Sequence[int] = ()  # sequence numbers this batch showed missing (gap)
    counters: Mapping[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    new_key: KeyEntry | None = None  # announced by a key_rotation record
    dropped_seqs: Sequence[int] = ()  # batches a drop record says the gateway discarded
    chain_sessions: Sequence[ChainSessionRow] = ()  # OCPP session records (stores that keep them)


class Held:
    """A ``store_group`` answer: the batch was not stored, its predecessor is not stored yet
    (another aggregator may be storing it); the caller tries again later."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HELD"


HELD = Held()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused batch, kept with its bytes for the record."""

    gateway: str | None
    seq: int | None
    header_sha256: str | None
    reason: str
    detail: str
    received_ms: int
    data: bytes
    repeats: int = 1  # the same bytes refused for the same reason this many times
    last_ms: int | None = None  # when last refused
    size: int | None = None  # bytes of the whole payload (``data`` may be a prefix of it)
    data_sha256: str | None = None  # of the whole payload (default: of ``data``)


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A stored batch whose points are not in InfluxDB yet."""

    id: int
    gateway: str
    seq: int
    verdict: str
    data: bytes
    issues: Mapping[int, tuple[str, ...]]  # leaf index -> issues (only implausible ones)


@dataclass(frozen=True, slots=True)
class Gap:
    gateway: str
    seq: int
    detected_ms: int
    filled_ms: int | None
    explained_by_seq: int | None
