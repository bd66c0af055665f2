"""The interval builder: samples in, one :class:`IntervalRecord` per series and interval out.

Semantics (also in docs/gateway-config.md, "Intervals"):

- **Intervals** are ``[start, end)`` in clock seconds, aligned to the interval length from
  the POSIX epoch (UTC). A sample belongs to the interval containing its timestamp; one
  taken exactly at a boundary opens the next interval, except for counters with a
  ``boundary_s`` tolerance (> 0). Then a *polled* reading goes by its poll slot
  (``Sample.slot``): the reading requested for a boundary slot is the *closing* reading of
  the interval that just ended (and so the opening reading of the next), whatever the
  latency of its answer (a few milliseconds to seconds: a shared RS-485 bus, a busy CPU),
  if that interval is still open (the answer came within ``grace_s``). A reading without a
  slot (MQTT), or answered after the interval was emitted, goes by its time: taken less
  than ``boundary_s`` after a boundary, it closes the interval that ended. Without the
  tolerance every delta covers ``[start - poll, end - poll)``. Routing by slot, not by a
  time window, means a latency that wanders around the window cannot split intervals into
  one with a sample too many and the next with one too few. The reading keeps its own time
  in ``counter_end_time_ms``: nothing is interpolated.
- **Counters.** ``counter_end`` is the last accepted reading before ``end``;
  ``counter_start`` is the previous interval's ``counter_end`` (the last accepted reading
  before ``start``), carried across intervals, with their times in ms. ``delta =
  counter_end - counter_start`` plus the corrections below; never interpolated, never
  negative. Over consecutive intervals the deltas add up to last reading - first reading
  (less the reset jumps), so no energy is lost or invented at boundaries.
- **first**: no accepted reading before the interval: ``counter_start`` is the interval's
  own first reading (its time says so) and flag ``first``.
- **Decreases.** Up to ``reset_tolerance``: jitter; the reading counts as a sample but does
  not move the bound. Larger, on a ``per_session`` counter: a new session started at 0;
  the new reading counts in full (``session``). Larger, with a ``modulus`` and a plausible
  wrap (wrapped increase <= ``max_rate`` x elapsed, or <= 1 % of the modulus without a
  rate): ``rollover``, increase = new + modulus - old. Otherwise ``reset`` (meter replaced):
  the new reading is the new baseline: energy after it counts; whatever accrued between
  the last old reading and the first new one (including the new counter's value) is NOT
  counted, since it is unknown.
- **Implausible rises** (more than ``max_rate`` x elapsed + tolerance): the reading is
  rejected (``invalid_value``). If the next reading continues plausibly from the rejected
  one, the jump was real (a used meter fitted): it becomes a ``reset`` with the jump
  excluded.
- **invalid_value**: NaN, infinities, not-implemented markers, negative counters, gauges
  outside ``valid_range``, and rejected rises. Not counted as samples.
- **out_of_order**: a sample older than (or as old as, with another value) the last one
  accepted for its series. Counters ignore it for the bounds; gauges use it for the stats
  of its interval if that is still open. It counts as a sample. Exact duplicates (same time
  and value) are dropped and counted in :attr:`IntervalBuilder.counts`.
- **late**: intervals stay open ``grace_s`` after their end. A sample for an interval
  already emitted is counted, logged and NOT merged; the series' next emitted record
  carries ``late``. For counters nothing is lost: the next reading's delta includes it.
- **clock_jump**: a sample more than ``max_future_s`` ahead of the clock is rejected and
  the interval containing "now" is flagged.
- **Coverage**: ``samples`` = accepted samples in the interval; ``expected`` =
  interval length / poll period (from the builder's start time for the first, partial
  interval), at least 1. **gap**: samples < expected, or no counter reading in the
  interval, or ``counter_start`` older than the previous interval (the delta spans a gap).
  An interval with no data is still emitted (samples=0, counters null, ``gap``), never
  skipped.
- **Power stats**: a counter series may name a gauge quantity of the same meter
  (``stats_quantity``, usually ``power``); its min / arithmetic sample mean / max over the
  interval's samples become the record's :class:`Stats`. Gauges get their own stats the
  same way. (Sample mean, not time-weighted: polling is periodic.)

Emission is driven by the injected clock: :meth:`IntervalBuilder.close_due` returns, in
time order per series, every interval whose ``end + grace_s <= now``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from common.clock import Clock
from drivers.contract import Invalid, Sample
from evidence.records import Flag, IntervalRecord, Stats
from gateway.errors import IntervalError

log = logging.getLogger(__name__)
SNAPSHOT_VERSION = 1
ROLLOVER_FRACTION = 0.01  # without a rate limit, a wrap is plausible below 1 % of the modulus


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One metered quantity of one meter, as the interval builder treats it."""

    meter: str
    quantity: str
    unit: str
    kind: Literal["counter", "gauge"]
    poll_period: float  # seconds between expected samples
    modulus: float | None = None  # counters: value at which the register wraps (quantity units)
    reset_tolerance: float = 0.0  # counters: decreases up to this are jitter
    max_rate: float | None = None  # counters: largest plausible rise, quantity units per second
    per_session: bool = False  # counters: restarts at 0 with each charging session
    stats_quantity: str | None = None  # counters: gauge quantity (same meter) for Stats
    stats_unit: str = ""
    valid_range: tuple[float, float] | None = None  # gauges: values outside are invalid


@dataclass
class BuilderCounts:
    """What the builder saw and did not merge; exported as gateway metrics."""

    samples: int = 0
    unrouted: int = 0
    duplicates: int = 0
    invalid: int = 0
    late: int = 0
    future: int = 0
    out_of_order: int = 0


@dataclass(slots=True)
class _Acc:
    """An open interval of one series."""

    samples: int = 0
    flags: set[Flag] = field(default_factory=set)
    first: tuple[float, float] | None = None
    end: tuple[float, float] | None = None
    adjust: float = 0.0
    late: int = 0
    n: int = 0
    lo: float = math.inf
    hi: float = -math.inf
    total: float = 0.0

    def stat(self, value: float) -> None:
        self.n += 1
        self.total += value
        if value < self.lo:
            self.lo = value
        if value > self.hi:
            self.hi = value


class _Series:
    __slots__ = ("bound", "carry", "last_t", "last_v", "next_start", "open", "origin", "pending", "spec")

    def __init__(self, spec: SeriesSpec, origin: float, first_start: int) -> None:
        self.spec = spec
        self.origin = origin
        self.next_start = first_start  # the next interval to emit
        self.open: dict[int, _Acc] = {}
        self.bound: tuple[float, float] | None = None  # last accepted counter reading
        self.carry: tuple[float, float] | None = None  # counter_end of the last emitted interval
        self.pending: tuple[float, float] | None = None  # rejected rise awaiting confirmation
        self.last_t = -math.inf
        self.last_v = math.nan

    def acc(self, start: int) -> _Acc:
        acc = self.open.get(start)
        if acc is None:
            acc = self.open[start] = _Acc()
        return acc


class IntervalBuilder:
    """Aggregates samples of many series into clock-aligned interval records."""

    def __init__(
        self,
        series: Iterable[SeriesSpec],
        *,
        clock: Clock,
        interval_s: int = 900,
        grace_s: float = 30.0,
        max_future_s: float = 60.0,
        boundary_s: float = 0.0,
    ) -> None:
        if not 60 <= interval_s <= 3600 or 3600 % interval_s:
            raise IntervalError(f"interval must be 1-60 minutes dividing an hour, got {interval_s} s")
        self.clock, self.interval_s, self.grace_s = clock, interval_s, grace_s
        self.max_future_s = max_future_s
        if not 0 <= boundary_s < interval_s / 2:
            raise IntervalError(f"boundary tolerance must be in [0, {interval_s / 2}) s, got {boundary_s}")
        self.boundary_s = boundary_s
        self.counts = BuilderCounts()
        origin = clock.now()
        first = self._start_of(origin)
        self._series: dict[tuple[str, str], _Series] = {}
        self._stats_route: dict[tuple[str, str], list[_Series]] = {}
        for spec in series:
            self._register(_Series(spec, origin, first))
        self._next_due = first + interval_s + grace_s

    def _register(self, s: _Series) -> None:
        spec = s.spec
        key = (spec.meter, spec.quantity)
        if key in self._series:
            raise IntervalError(f"series {spec.meter}/{spec.quantity} is given twice")
        if spec.poll_period <= 0:
            raise IntervalError(f"series {spec.meter}/{spec.quantity}: poll period must be > 0")
        self._series[key] = s
        if spec.kind == "counter" and spec.stats_quantity:
            self._stats_route.setdefault((spec.meter, spec.stats_quantity), []).append(s)

    def _start_of(self, t: float) -> int:
        return int(t // self.interval_s) * self.interval_s

    # -- input ---------------------------------------------------------------------------

    def add(self, sample: Sample) -> None:
        """Take one sample (any order, any lateness); never raises for bad data."""
        self.counts.samples += 1
        key = (sample.meter, sample.quantity)
        series = self._series.get(key)
        stats_targets = self._stats_route.get(key)
        if series is None and stats_targets is None:
            self.counts.unrouted += 1
            return
        if sample.time > self.clock.now() + self.max_future_s:
            self._reject_future(sample, series, stats_targets)
            return
        start = self._start_of(sample.time)
        if series is not None:
            if series.spec.kind == "counter" and self.boundary_s:
                self._route(series, sample, self._counter_start(series, sample))
            else:
                self._route(series, sample, start)
        for target in stats_targets or ():
            self._route_stats(target, sample, start)

    def _counter_start(self, series: _Series, sample: Sample) -> int:
        """The interval a counter reading belongs to, with the boundary tolerance on.

        A polled reading goes by the slot it was requested for: the boundary slot's reading
        closes the interval that ended, however late its answer came, as long as that
        interval is still open (its answer came within ``grace_s``). Otherwise, and for
        readings without a slot, by its time: less than ``boundary_s`` after a boundary.
        """
        if sample.slot is not None:
            start = self._start_of(sample.slot - self.boundary_s)
            if start >= series.next_start:
                return start
        return self._start_of(sample.time - self.boundary_s)

    def add_many(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self.add(sample)

    def _reject_future(self, sample: Sample, series: _Series | None, targets: list[_Series] | None) -> None:
        self.counts.future += 1
        log.warning("%s/%s: sample at %.3f is ahead of the clock; rejected", sample.meter,
                    sample.quantity, sample.time)  # fmt: skip
        now_start = self._start_of(self.clock.now())
        for s in ([series] if series else []) + (targets or []):
            s.acc(max(now_start, s.next_start)).flags.add("clock_jump")

    def _route(self, s: _Series, sample: Sample, start: int) -> None:
        if start < s.next_start:
            self.counts.late += 1
            s.acc(s.next_start).late += 1
            return
        acc = s.acc(start)
        value = self._valid(s.spec, sample.value)
        if value is None:
            self.counts.invalid += 1
            acc.flags.add("invalid_value")
            return
        t = sample.time
        if t <= s.last_t:
            if t == s.last_t and value == s.last_v:
                self.counts.duplicates += 1
                return
            self.counts.out_of_order += 1
            acc.flags.add("out_of_order")
            acc.samples += 1
            if s.spec.kind == "gauge":
                acc.stat(value)
            return
        if s.spec.kind == "gauge":
            s.last_t, s.last_v = t, value
            acc.samples += 1
            acc.stat(value)
            return
        self._counter(s, acc, value, t)

    def _route_stats(self, s: _Series, sample: Sample, start: int) -> None:
        if start < s.next_start:
            return  # a late power sample; the counter's own lateness is what is flagged
        value = sample.value
        if isinstance(value, Invalid) or not math.isfinite(value):
            s.acc(start).flags.add("invalid_value")
            return
        s.acc(start).stat(value)

    @staticmethod
    def _valid(spec: SeriesSpec, value: float | Invalid) -> float | None:
        if isinstance(value, Invalid) or not math.isfinite(value):
            return None
        if spec.kind == "counter":
            return value if value >= 0 else None
        rng = spec.valid_range
        if rng is not None and not rng[0] <= value <= rng[1]:
            return None
        return value

    # -- counters ------------------------------------------------------------------------

    def _counter(self, s: _Series, acc: _Acc, v: float, t: float) -> None:
        s.last_t, s.last_v = t, v
        acc.samples += 1
        bound = s.bound
        if bound is None:
            s.bound = acc.first = acc.end = (v, t)
            return
        spec = s.spec
        rise = v - bound[0]
        if rise >= 0:
            if spec.max_rate is not None and rise > spec.max_rate * (t - bound[1]) + spec.reset_tolerance:
                self._implausible_rise(s, acc, v, t)
                return
        elif -rise <= spec.reset_tolerance:
            acc.end = bound  # jitter: the bound stays where it was
            return
        else:
            acc.adjust += self._decrease_adjust(s, acc, v, t)
        s.pending = None
        s.bound = acc.end = (v, t)

    def _decrease_adjust(self, s: _Series, acc: _Acc, v: float, t: float) -> float:
        """Correction added to ``end - start`` for a drop from the bound to ``v``."""
        spec, (old, old_t) = s.spec, s.bound or (v, t)
        if spec.per_session:
            acc.flags.add("session")
            return old  # the new session counts from 0
        if spec.modulus is not None:
            wrapped = v + spec.modulus - old
            limit = spec.max_rate * (t - old_t) if spec.max_rate is not None else None
            if 0 <= wrapped <= (limit if limit is not None else spec.modulus * ROLLOVER_FRACTION):
                acc.flags.add("rollover")
                return spec.modulus
        acc.flags.add("reset")
        return old - v  # the new reading is the new baseline: nothing counted for the drop

    def _implausible_rise(self, s: _Series, acc: _Acc, v: float, t: float) -> None:
        spec, pending, bound = s.spec, s.pending, s.bound
        assert bound is not None and spec.max_rate is not None
        limit = None if pending is None else spec.max_rate * (t - pending[1]) + spec.reset_tolerance
        if pending is not None and limit is not None and 0 <= v - pending[0] <= limit:
            acc.adjust -= pending[0] - bound[0]  # confirmed jump: excluded like a reset
            acc.flags.add("reset")
            s.pending = None
            s.bound = acc.end = (v, t)
            return
        s.pending = (v, t)
        acc.samples -= 1
        acc.flags.add("invalid_value")
        self.counts.invalid += 1

    # -- output --------------------------------------------------------------------------

    def close_due(self, now: float | None = None) -> list[IntervalRecord]:
        """Records of every interval whose ``end + grace_s <= now`` (default: the clock)."""
        now = self.clock.now() if now is None else now
        if now < self._next_due:
            return []
        out: list[IntervalRecord] = []
        last_end = self._start_of(now - self.grace_s)
        for s in self._series.values():
            while s.next_start + self.interval_s <= last_end:
                out.append(self._emit(s, s.next_start))
                s.next_start += self.interval_s
        self._next_due = last_end + self.interval_s + self.grace_s
        return out

    def _expected(self, s: _Series, start: int, end: int) -> int:
        """Samples the poll schedule puts in ``[start, end)``: length / period, and for the
        first, partial interval the slots after the builder's start. A counter with the
        boundary tolerance closes with the boundary slot's reading, so it counts the slots in
        ``(origin, end]``; otherwise those in ``(origin, end)``."""
        period = s.spec.poll_period
        if s.origin <= start:
            return max(1, int((end - start) // period))
        if s.spec.kind == "counter" and self.boundary_s:
            return max(1, math.floor(end / period) - math.floor(s.origin / period))
        return max(1, int((end - s.origin) // period))

    def _emit(self, s: _Series, start: int) -> IntervalRecord:
        acc = s.open.pop(start, None) or _Acc()
        spec, end = s.spec, start + self.interval_s
        expected = self._expected(s, start, end)
        flags = acc.flags
        if acc.samples < expected:
            flags.add("gap")
        if acc.late:
            flags.add("late")
            log.warning("%s/%s: %d samples arrived after their interval closed; not merged before %d",
                        spec.meter, spec.quantity, acc.late, start)  # fmt: skip
        stats = Stats(spec.stats_unit or spec.unit, acc.lo, acc.total / acc.n, acc.hi) if acc.n else None
        base = IntervalRecord(spec.meter, spec.quantity, spec.unit, start, end, kind=spec.kind,
                              stats=stats, samples=acc.samples, expected=expected)  # fmt: skip
        if spec.kind == "gauge":
            return _with(base, flags)
        return self._counter_record(s, acc, base, flags)

    def _counter_record(
        self, s: _Series, acc: _Acc, base: IntervalRecord, flags: set[Flag]
    ) -> IntervalRecord:
        begin = s.carry
        if begin is None and acc.first is not None:
            begin = acc.first
            flags.add("first")
        elif begin is not None and begin[1] < base.start - self.interval_s:
            flags.add("gap")  # the start bound is older than the previous interval
        end = acc.end
        if end is None:
            flags.add("gap")
        else:
            s.carry = end
        delta = None
        if begin is not None and end is not None:
            delta = max(0.0, end[0] - begin[0] + acc.adjust)
        return _with(
            base,
            flags,
            counter_start=None if begin is None else begin[0],
            counter_start_time_ms=None if begin is None else _ms(begin[1]),
            counter_end=None if end is None else end[0],
            counter_end_time_ms=None if end is None else _ms(end[1]),
            delta=delta,
        )

    def series(self) -> list[SeriesSpec]:
        """The series this builder aggregates."""
        return [s.spec for s in self._series.values()]

    # -- persistence across restarts -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The builder's state as plain JSON data, to persist with the records it emitted.

        Per series: the next interval to emit, the counter bound (last accepted reading),
        the carry (``counter_end`` of the last emitted interval), the pending rejected
        rise, the last sample seen and the open intervals' accumulators. Restored into a
        builder of the same series, the next interval's ``counter_start`` is the last
        reading before the stop, so the energy across a restart is counted; intervals
        missed while stopped are still emitted (``gap``), none twice.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "interval_s": self.interval_s,
            "series": [_series_state(s) for s in self._series.values()],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`snapshot` data; call right after construction.

        Series the snapshot does not know start fresh; series the builder no longer has are
        ignored (logged). If the interval length changed, only the counter readings carry
        over (the next interval's delta spans the change and is flagged ``gap``).
        Raises :class:`IntervalError` on data that is not a snapshot.
        """
        if not isinstance(state, Mapping) or state.get("version") != SNAPSHOT_VERSION:
            raise IntervalError(f"not an interval builder snapshot (version {SNAPSHOT_VERSION})")
        same_length = state.get("interval_s") == self.interval_s
        if not same_length:
            log.warning("interval length changed from %s s to %s s: restoring counter readings only",
                        state.get("interval_s"), self.interval_s)  # fmt: skip
        try:
            for item in state["series"]:
                series = self._series.get((item["meter"], item["quantity"]))
                if series is None:
                    log.warning("snapshot series %s/%s is not configured any more; ignored",
                                item["meter"], item["quantity"])  # fmt: skip
                    continue
                _restore_series(series, item, whole=same_length)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntervalError(f"interval builder snapshot is malformed: {exc!r}") from exc
        starts = [s.next_start for s in self._series.values()]
        if starts:
            self._next_due = min(starts) + self.interval_s + self.grace_s


def _ms(t: float) -> int:
    return round(t * 1000)


def _with(
    base: IntervalRecord,
    flags: set[Flag],
    *,
    counter_start: float | None = None,
    counter_start_time_ms: int | None = None,
    counter_end: float | None = None,
    counter_end_time_ms: int | None = None,
    delta: float | None = None,
) -> IntervalRecord:
    return replace(
        base,
        flags=tuple(sorted(flags)),
        counter_start=counter_start,
        counter_start_time_ms=counter_start_time_ms,
        counter_end=counter_end,
        counter_end_time_ms=counter_end_time_ms,
        delta=delta,
    )


def energy_rate_limit(rated_power_kw: float, unit: str, factor: float = 3.0) -> float | None:
    """Largest plausible rise of an energy counter per second: ``factor`` x rated power,
    in the counter's unit (Wh, kWh or MWh); None for other units."""
    per_kwh = {"Wh": 1000.0, "kWh": 1.0, "MWh": 0.001}.get(unit)
    if per_kwh is None or rated_power_kw <= 0:
        return None
    return factor * rated_power_kw * per_kwh / 3600.0


# -- snapshot encoding: JSON has no infinities or NaN, so "none yet" is null ----------------


def _pair(p: tuple[float, float] | None) -> list[float] | None:
    return None if p is None else [p[0], p[1]]


def _unpair(raw: Any) -> tuple[float, float] | None:
    return None if raw is None else (float(raw[0]), float(raw[1]))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _acc_state(start: int, a: _Acc) -> dict[str, Any]:
    return {
        "start": start, "samples": a.samples, "flags": sorted(a.flags), "first": _pair(a.first),
        "end": _pair(a.end), "adjust": a.adjust, "late": a.late, "n": a.n, "lo": _finite(a.lo),
        "hi": _finite(a.hi), "total": a.total,
    }  # fmt: skip


def _restore_acc(raw: Mapping[str, Any]) -> _Acc:
    lo, hi = raw["lo"], raw["hi"]
    return _Acc(
        samples=int(raw["samples"]), flags=set(raw["flags"]), first=_unpair(raw["first"]),
        end=_unpair(raw["end"]), adjust=float(raw["adjust"]), late=int(raw["late"]), n=int(raw["n"]),
        lo=math.inf if lo is None else float(lo), hi=-math.inf if hi is None else float(hi),
        total=float(raw["total"]),
    )  # fmt: skip


def _series_state(s: _Series) -> dict[str, Any]:
    return {
        "meter": s.spec.meter,
        "quantity": s.spec.quantity,
        "next_start": s.next_start,
        "origin": s.origin,
        "bound": _pair(s.bound),
        "carry": _pair(s.carry),
        "pending": _pair(s.pending),
        "last_t": _finite(s.last_t),
        "last_v": _finite(s.last_v),
        "open": [_acc_state(start, a) for start, a in sorted(s.open.items())],
    }


def _restore_series(s: _Series, raw: Mapping[str, Any], *, whole: bool) -> None:
    s.bound, s.carry, s.pending = _unpair(raw["bound"]), _unpair(raw["carry"]), _unpair(raw["pending"])
    s.last_t = -math.inf if raw["last_t"] is None else float(raw["last_t"])
    s.last_v = math.nan if raw["last_v"] is None else float(raw["last_v"])
    if not whole:
        return
    s.next_start, s.origin = int(raw["next_start"]), float(raw["origin"])
    s.open = {int(a["start"]): _restore_acc(a) for a in raw["open"]}
