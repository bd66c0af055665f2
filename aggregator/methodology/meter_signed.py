"""Meter-signed evidence in a computation: OCPP session records sealed by gateways (issue 24).

A gateway seals each OCPP charging session as a ``session`` record (docs/ocpp.md). One that is
``meter_signed`` (its Begin and End readings are OCMF values that verified with the meter's
pinned key) and not flagged ``signature_failed`` is credited with its signed energy
(register_stop - register_start) for its connector's meter; the gateway-signed intervals of
that meter credited over the session's span are displaced: the stronger evidence wins, no kWh
counts twice. Every other session leaves its span's intervals as they are. How a kWh's level
is chosen: docs/ev-sessions.md, "Which level a kWh gets".
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from aggregator.methodology.errors import ComputationError
from aggregator.methodology.scenario import TO_MWH
from aggregator.view import BatchRef, ChainSession
from evidence.errors import EvidenceError
from evidence.records import SessionRecord, decode_record

if TYPE_CHECKING:
    from aggregator.methodology.evaluation import Evaluation
    from aggregator.methodology.series import SeriesArrays
    from aggregator.methodology.subject import Period, Subject

CREDITED, REFUSED = "credited", "assurance_refused"
NOT_SIGNED = "not_meter_signed"  # a gateway_signed record: the intervals over its span stand
SIGNATURE_FAILED = "signature_failed"  # flagged: never credited as meter-signed
NO_ENERGY = "no_signed_energy"  # a bound missing or the register went down
ACROSS_PERIOD = "across_period_bound"  # starts before or stops after the period: intervals stand
OVERLAPS = "overlaps_credited_session"  # its span is credited already by another session record
CREDITED_EARLIER = "credited_earlier"  # by a statement this one supplements: displaces, earns nothing
EARLIER_INTERVALS = "intervals_credited_earlier"  # its span's intervals were, by a supplemented statement
SESSION_LEDGER = "ocpp_session"  # the statement ledger's quantity for a credited session record
NOT_LOOKED_UP = (
    "meter-signed evidence was not looked up: this evidence source does not index OCPP session "
    "records (chain sessions); every kWh here is credited from intervals or imported sessions"
)


@runtime_checkable
class ChainSessionLookup(Protocol):
    """A source that finds chain sessions (aggregator.store.protocols.ChainSessionStore; an
    evidence package's batches in ``puhui verify``)."""

    def chain_sessions(
        self, *, gateway: str | None = None, charger: str | None = None, transaction_id: str | None = None
    ) -> list[tuple[BatchRef, int, bytes]]: ...


@runtime_checkable
class ChainSessionsOverlapping(Protocol):
    """A store that finds them by time too (SQLite, PostgreSQL): a period's only."""

    def chain_sessions_overlapping(
        self, gateway: str, start_ms: int, end_ms: int
    ) -> list[tuple[BatchRef, int, bytes]]: ...


@dataclass(frozen=True, slots=True)
class ChainLookup:
    """The chain sessions a computation considers: ``sessions`` None when the evidence source
    could not look them up (the statement says so)."""

    sessions: tuple[ChainSession, ...] | None


def read_chain_sessions(source: object, subject: Subject, period: Period) -> ChainLookup:
    """The chain sessions of the subject's meters that overlap the period, as the source has them."""
    if isinstance(source, ChainSessionsOverlapping):
        found = source.chain_sessions_overlapping(subject.gateway, period.start * 1000, period.end * 1000)
    elif isinstance(source, ChainSessionLookup):
        found = source.chain_sessions(gateway=subject.gateway)
    else:
        return ChainLookup(None)
    meters = set(subject.meters)
    out = []
    for ref, index, raw in found:
        try:
            record = decode_record(raw)
        except EvidenceError as exc:
            raise ComputationError(f"{ref.gateway}#{ref.seq} record {index}: {exc}") from exc
        if not isinstance(record, SessionRecord):
            raise ComputationError(
                f"{ref.gateway}#{ref.seq} record {index} is a {record.type} record, not a session"
            )
        start = record.start_time_ms if record.start_time_ms is not None else record.stop_time_ms
        if record.meter in meters and start < period.end * 1000 and record.stop_time_ms > period.start * 1000:
            out.append(ChainSession(ref, index, record, sha256(raw).hexdigest()))
    return ChainLookup(tuple(out))


def ledger_span(r: SessionRecord) -> tuple[int, int]:
    """A session record's span in the statement ledger: whole seconds, rounded outwards."""
    start = r.start_time_ms if r.start_time_ms is not None else r.stop_time_ms
    return start // 1000, -(-r.stop_time_ms // 1000)


def signed_wh(r: SessionRecord) -> float | None:
    """The session's energy from its bounding register readings, if both are there and in order."""
    if r.register_start_wh is None or r.register_stop_wh is None or r.register_stop_wh < r.register_start_wh:
        return None
    return r.register_stop_wh - r.register_start_wh


@dataclass(frozen=True, slots=True)
class ChainSessionUse:
    """One chain session the computation considered, and what became of it."""

    session: ChainSession
    unit: int
    status: str
    displaced: int = 0  # interval slots of its meter whose gateway-signed energy it replaced

    def to_json(self) -> dict[str, Any]:
        s, r = self.session, self.session.record
        return {
            "gateway": s.batch.gateway, "seq": s.batch.seq, "index": s.index, "sha256": s.sha256,
            "charger": r.charger, "connector": r.connector, "meter": r.meter,
            "transaction_id": r.transaction_id, "start_ms": r.start_time_ms, "stop_ms": r.stop_time_ms,
            "energy_wh": signed_wh(r), "assurance": r.assurance, "flags": list(r.flags),
            "level": "meter_signed" if self.status == CREDITED else "gateway_signed",
            "status": self.status, "intervals_displaced": self.displaced,
        }  # fmt: skip


@dataclass(slots=True)
class MeterSignedPart:
    """What the meter-signed sessions credit, per unit (MWh; at -MPE and +MPE), and the
    gateway-signed interval activity they displace (likewise)."""

    uses: list[ChainSessionUse] = field(default_factory=list)
    activity: tuple[np.ndarray, np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0), np.zeros(0))
    displaced: tuple[np.ndarray, np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0), np.zeros(0))
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # meter -> credited [a, b) s
    offered: float = 0.0  # MWh offered at meter_signed (credited or refused)


def place_chain_sessions(
    chain: Sequence[ChainSession],
    series: SeriesArrays,
    subject: Subject,
    period: Period,
    result: Evaluation,
    interval_s: int,
    refused: bool,
    mpe: Mapping[str, float],
    accuracy: np.ndarray | None,
    earlier: Collection[tuple[str, int, int]] = (),
    earlier_slots: np.ndarray | None = None,
) -> MeterSignedPart:
    """Decide each chain session; for the credited ones, the interval slots they displace.
    ``earlier``: ledger spans ``(meter, start, stop)`` of session records credited by a
    statement this one supplements: they displace intervals again and credit nothing;
    ``earlier_slots`` (series row x slot): intervals those statements credited: a session
    over any of them credits nothing (that energy was credited), the intervals stand."""
    n = len(subject.units)
    unit_of = {m: i for i, u in enumerate(subject.units) for m in u.meters}
    rows_of: dict[str, list[int]] = {}
    for row, key in enumerate(series.keys):
        rows_of.setdefault(key.meter, []).append(row)
    part = MeterSignedPart(
        activity=(np.zeros(n), np.zeros(n), np.zeros(n)), displaced=(np.zeros(n), np.zeros(n), np.zeros(n))
    )
    n_rows, n_slots = series.status.shape
    taken = np.zeros((n_rows, n_slots), bool)
    order = sorted(
        chain, key=lambda s: (s.record.meter or "", s.record.start_time_ms or 0, s.batch.seq, s.index)
    )
    for s in order:
        r = s.record
        if r.meter not in unit_of:
            continue
        unit, wh = unit_of[r.meter], signed_wh(r)
        status = _status(r, wh, period, part.spans.get(r.meter, ()), refused)
        if status == CREDITED:
            status = _against_earlier(r, rows_of.get(r.meter, []), earlier, earlier_slots, period, interval_s)
        displaced = 0
        if status in (CREDITED, REFUSED) and wh is not None:
            part.offered += wh * TO_MWH["Wh"]
        if status in (CREDITED, CREDITED_EARLIER) and wh is not None and r.start_time_ms is not None:
            a, b = r.start_time_ms / 1000, r.stop_time_ms / 1000
            part.spans.setdefault(r.meter, []).append((a, b))
            if status == CREDITED:
                _add(part.activity, unit, wh * TO_MWH["Wh"], mpe.get(r.meter, 0.0))
            for row in rows_of.get(r.meter, []):
                mask = _slots(result.runs[row], a, b, period.start, interval_s, n_slots) & ~taken[row]
                taken[row] |= mask
                err = 0.0 if accuracy is None or result.bounds is None else float(accuracy[row])
                _add(part.displaced, unit, float(series.values[row][mask].sum()), err)
                displaced += int(mask.sum())
        part.uses.append(ChainSessionUse(s, unit, status, displaced))
    return part


def _against_earlier(
    r: SessionRecord,
    rows: Sequence[int],
    earlier: Collection[tuple[str, int, int]],
    earlier_slots: np.ndarray | None,
    period: Period,
    interval_s: int,
) -> str:
    """CREDITED, unless a statement this one supplements credited the record or its time."""
    if (r.meter, *ledger_span(r)) in earlier:
        return CREDITED_EARLIER
    if earlier_slots is not None and r.start_time_ms is not None:
        a, b = r.start_time_ms / 1000, r.stop_time_ms / 1000
        span = _slots([(period.start, period.end)], a, b, period.start, interval_s, earlier_slots.shape[1])
        if any(earlier_slots[row][span].any() for row in rows):
            return EARLIER_INTERVALS
    return CREDITED


def _status(
    r: SessionRecord, wh: float | None, period: Period, spans: Sequence[tuple[float, float]], refused: bool
) -> str:
    if "signature_failed" in r.flags:
        return SIGNATURE_FAILED
    if r.assurance != "meter_signed":
        return NOT_SIGNED
    if wh is None or r.start_time_ms is None:
        return NO_ENERGY
    if r.start_time_ms < period.start * 1000 or r.stop_time_ms > period.end * 1000:
        return ACROSS_PERIOD
    a, b = r.start_time_ms / 1000, r.stop_time_ms / 1000
    if any(x < b and a < y for x, y in spans):
        return OVERLAPS
    return REFUSED if refused else CREDITED


def _add(acc: tuple[np.ndarray, np.ndarray, np.ndarray], unit: int, mwh: float, err: float) -> None:
    acc[0][unit] += mwh
    acc[1][unit] += mwh * (1.0 - err)
    acc[2][unit] += mwh * (1.0 + err)


def _slots(
    runs: Sequence[tuple[int, int]], a: float, b: float, start: int, interval_s: int, n: int
) -> np.ndarray:
    """Slots of credited ``runs`` that overlap ``[a, b)`` seconds."""
    mask = np.zeros(n, bool)
    lo, hi = int((a - start) // interval_s), -int(-(b - start) // interval_s)
    for x, y in runs:
        sx, sy = max(lo, (x - start) // interval_s, 0), min(hi, (y - start) // interval_s, n)
        if sx < sy:
            mask[sx:sy] = True
    return mask


def chain_sessions_json(uses: Sequence[ChainSessionUse] | None) -> dict[str, Any]:
    """The statement's ``evidence.chain_sessions``: every chain session considered, or why none were."""
    if uses is None:
        return {"looked_up": False, "why": NOT_LOOKED_UP}
    counts: dict[str, int] = {}
    for u in uses:
        counts[u.status] = counts.get(u.status, 0) + 1
    return {
        "looked_up": True,
        "by_status": dict(sorted(counts.items())),
        "items": [u.to_json() for u in uses],
    }
