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
  negative. Over consecutive intervals the deltas add up to last accepted reading - first
  accepted reading (less the reset jumps), so no energy is lost or invented at boundaries.
- **first**: no accepted reading before the interval: ``counter_start`` is the interval's
  own first reading (its time says so) and flag ``first``.
- **Plausible steps.** A reading is judged against the bound (the last accepted reading):
  a rise of at most ``max_rate`` x (elapsed + one poll period) + ``reset_tolerance`` (no
  limit without a rate); a decrease up to ``reset_tolerance`` (jitter: counts as a sample,
  the bound stays); with a ``modulus``, a wrap within the same limit (or <= 1 % of the
  modulus without a rate): ``rollover``, increase = new + modulus - old. Elapsed time is
  the readings' own times (the device's timestamp where it sends one); the extra poll
  period covers readings stamped on receipt, which a delayed burst brings close together.
  A plausible reading becomes the bound; anything held since the last one was a glitch.
- **Held readings** (``invalid_value``): a reading that is not a plausible step from the
  bound is held back, never a bound. The next plausible reading from the bound drops all
  held ones (the two plausible readings bracket the energy, as after gateway downtime).
  Held readings that continue plausibly from one another form candidate new levels (a
  reading joins every level it continues). A level is confirmed only when sustained:
  ``CONFIRM_READINGS`` readings, more than half of those held, spanning at least
  ``confirm_s`` (default: the interval length). Then, on a ``per_session`` counter that
  dropped, a new session started at 0 and counts in full (``session``; no time span
  needed); otherwise ``reset`` (meter replaced, or a used meter fitted): the level's first
  reading is the new baseline, the jump between the old bound and it is not counted. A
  held reading keeps ``invalid_value`` on its interval even if its level is confirmed.
- **Return.** While the level since a reset stays flat, a reading plausible from the bound
  before that reset (and, if also plausible from the flat level, a smaller rise from the
  old bound) undoes it: it was a glitch stuck past ``confirm_s`` (a 0 marker, an absurd
  value); the jump is counted again (flag ``reset`` where it is undone).
- **invalid_value** also: NaN, infinities, not-implemented markers, negative counters,
  gauges outside ``valid_range``. Not counted as samples.
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
  interval), at least 1; for a series whose readings also come with events (``events``: an
  OCPP charger's transaction Begin/End readings), at least the samples taken. **gap**:
  samples < expected, or no counter reading in the interval, or ``counter_start`` older than
  the previous interval (the delta spans a gap). An interval with no data is still emitted
  (samples=0, counters null, ``gap``), never skipped.
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
CONFIRM_READINGS = 3  # readings a new counter level needs: the one that jumped and two more
MAX_HELD_LEVELS = 4  # candidate levels kept per series; the one with the fewest readings drops out
Step = Literal["rise", "jitter", "rollover"]


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
    events: bool = False  # readings also come with events (OCPP transaction starts and stops)


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


@dataclass(slots=True)
class _Level:
    """Counter readings held back (not plausible from the bound) that continue plausibly from
    one another: a new level (meter replaced) once sustained, a glitch until then."""

    first: tuple[float, float]  # the level's first reading: the baseline if it is confirmed
    top: tuple[float, float]  # its bound: the last reading that rose
    last_t: float  # time of its latest reading (jitter included)
    n: int = 1  # readings
    adjust: float = 0.0  # rollovers within the level


class _Series:
    __slots__ = ("bound", "carry", "held", "held_n", "last_t", "last_v", "next_start", "open", "origin",
                 "prior", "spec")  # fmt: skip

    def __init__(self, spec: SeriesSpec, origin: float, first_start: int) -> None:
        self.spec = spec
        self.origin = origin
        self.next_start = first_start  # the next interval to emit
        self.open: dict[int, _Acc] = {}
        self.bound: tuple[float, float] | None = None  # last accepted counter reading
        self.carry: tuple[float, float] | None = None  # counter_end of the last emitted interval
        self.held: list[_Level] = []  # levels of the readings held since the bound, oldest first
        self.held_n = 0  # readings held since the bound
        # (value, time) of the bound before the last resets, and the jumps they excluded; kept
        # while the level since then is flat
        self.prior: tuple[float, float, float] | None = None
        self.last_t = -math.inf
        self.last_v = math.nan

    def drop_held(self) -> None:
        self.held, self.held_n = [], 0

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
        confirm_s: float | None = None,
    ) -> None:
        if not 60 <= interval_s <= 3600 or 3600 % interval_s:
            raise IntervalError(f"interval must be 1-60 minutes dividing an hour, got {interval_s} s")
        self.clock, self.interval_s, self.grace_s = clock, interval_s, grace_s
        self.max_future_s = max_future_s
        if not 0 <= boundary_s < interval_s / 2:
            raise IntervalError(f"boundary tolerance must be in [0, {interval_s / 2}) s, got {boundary_s}")
        self.boundary_s = boundary_s
        # how long a new counter level must hold before it is taken for a meter replaced
        self.confirm_s = float(interval_s) if confirm_s is None else confirm_s
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
        self._add(sample, self.clock.now())

    def _add(self, sample: Sample, now: float) -> None:
        self.counts.samples += 1
        key = (sample.meter, sample.quantity)
        series = self._series.get(key)
        stats_targets = self._stats_route.get(key)
        if series is None and stats_targets is None:
            self.counts.unrouted += 1
            return
        if sample.time > now + self.max_future_s:
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
        """:meth:`add` each sample, against one reading of the clock (they arrived together)."""
        add, now = self._add, self.clock.now()
        for sample in samples:
            add(sample, now)

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
        if s.bound is None:
            acc.samples += 1
            s.bound = acc.first = acc.end = (v, t)
            return
        step = _step(s.spec, s.bound, v, t)
        if s.prior is not None and _returns(s, step, v, t):
            self._return(s, acc, v, t)
            return
        if step is None:
            self._hold(s, acc, v, t)
            return
        acc.samples += 1
        s.drop_held()  # held since the last plausible reading: glitches, bracketed by the two
        if step == "jitter":
            acc.end = s.bound  # the bound stays where it was
            return
        if step == "rollover":
            acc.flags.add("rollover")
            acc.adjust += s.spec.modulus or 0.0
        if v != s.bound[0]:
            s.prior = None  # the level since the last reset moves: a meter, not a stuck glitch
        s.bound = acc.end = (v, t)

    @staticmethod
    def _return(s: _Series, acc: _Acc, v: float, t: float) -> None:
        """Undo the resets since ``s.prior``: the counter is back on its old track."""
        assert s.prior is not None
        old_v, old_t, undo = s.prior
        acc.samples += 1
        acc.flags.add("reset")  # delta != end - start: a discontinuity, explained by the flag
        acc.adjust -= undo
        if _step(s.spec, (old_v, old_t), v, t) == "rollover":
            acc.flags.add("rollover")
            acc.adjust += s.spec.modulus or 0.0
        s.prior = None
        s.drop_held()
        s.bound = acc.end = (v, t)

    def _hold(self, s: _Series, acc: _Acc, v: float, t: float) -> None:
        """Hold back a reading that is not plausible from the bound; take its level for a new
        baseline once it is sustained."""
        for level in _join(s, v, t):
            if self._sustained(s, level):
                self._new_level(s, acc, level)
                return
        acc.flags.add("invalid_value")
        self.counts.invalid += 1

    def _sustained(self, s: _Series, level: _Level) -> bool:
        if level.n < CONFIRM_READINGS or 2 * level.n <= s.held_n:
            return False  # too few readings, or most of those held are something else
        assert s.bound is not None
        if s.spec.per_session and level.first[0] < s.bound[0]:
            return True  # a session restarting at 0 is this counter's normal life
        return level.last_t - level.first[1] >= self.confirm_s

    @staticmethod
    def _new_level(s: _Series, acc: _Acc, level: _Level) -> None:
        assert s.bound is not None
        old = s.bound[0]
        if s.spec.per_session and level.first[0] < old:
            acc.flags.add("session")
            jump = old  # the new session counts from 0
        else:
            acc.flags.add("reset")  # the jump from the old bound to the new baseline is not counted
            jump = old - level.first[0]
        acc.adjust += jump
        # Remember the bound before the first of consecutive resets while the new level stays
        # flat: a glitch stuck for longer than confirm_s looks like a meter replaced until the
        # counter comes back on its old track.
        p = s.prior
        if level.top[0] != level.first[0]:
            s.prior = None  # it rises: a meter
        else:
            s.prior = (s.bound[0], s.bound[1], jump) if p is None else (p[0], p[1], p[2] + jump)
        if level.adjust:
            acc.flags.add("rollover")
            acc.adjust += level.adjust
        acc.samples += 1
        s.bound = acc.end = level.top
        s.drop_held()

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
        if spec.events:  # a transaction's Begin/End readings come on top of the schedule's
            expected = max(expected, acc.samples)
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
        the carry (``counter_end`` of the last emitted interval), the held readings
        (candidate new levels), the last sample seen and the open intervals' accumulators.
        Restored into a builder of the same series, the next interval's ``counter_start``
        is the last reading before the stop, so the energy across a restart is counted;
        intervals missed while stopped are still emitted (``gap``), none twice.
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


def _step(spec: SeriesSpec, bound: tuple[float, float], v: float, t: float) -> Step | None:
    """How a counter gets from ``bound`` to ``v`` at ``t``, or None if it cannot plausibly."""
    rise = v - bound[0]
    room = None if spec.max_rate is None else spec.max_rate * (t - bound[1] + spec.poll_period)
    if rise >= 0:
        return "rise" if room is None or rise <= room + spec.reset_tolerance else None
    if -rise <= spec.reset_tolerance:
        return "jitter"
    if spec.modulus is not None:
        wrapped = rise + spec.modulus
        if 0 <= wrapped <= (room if room is not None else spec.modulus * ROLLOVER_FRACTION):
            return "rollover"
    return None


def _returns(s: _Series, step: Step | None, v: float, t: float) -> bool:
    """Whether ``v`` (``step`` from the bound) rather continues the bound before the last
    reset, ``s.prior``, while the level since that reset is flat: plausible from it, and
    either not plausible from the bound or a smaller rise than from the bound (a stuck 0
    left behind by the old track, not a new meter rising from 0)."""
    assert s.prior is not None and s.bound is not None
    back = _step(s.spec, s.prior[:2], v, t)
    if back is None or v == s.bound[0]:
        return False
    if step is None:
        return True
    return _gain(s.spec, s.prior[0], v, back) < _gain(s.spec, s.bound[0], v, step)


def _gain(spec: SeriesSpec, old: float, v: float, step: Step) -> float:
    return v - old + ((spec.modulus or 0.0) if step == "rollover" else 0.0)


def _join(s: _Series, v: float, t: float) -> list[_Level]:
    """Add a held reading to every held level it continues plausibly (a reading of a new
    meter may also continue a glitch that happened to lie below it), else to a new level.
    Returns the levels it joined, oldest first."""
    s.held_n += 1
    joined = []
    for level in s.held:
        step = _step(s.spec, level.top, v, t)
        if step is None:
            continue
        level.n, level.last_t = level.n + 1, t
        if step == "rollover":
            level.adjust += s.spec.modulus or 0.0
        if step != "jitter":
            level.top = (v, t)
        joined.append(level)
    if joined:
        return joined
    if len(s.held) >= MAX_HELD_LEVELS:
        s.held.remove(min(s.held, key=lambda h: (h.n, h.last_t)))  # the weakest candidate
    s.held.append(_Level((v, t), (v, t), t))
    return s.held[-1:]


def energy_rate_limit(rated_power_kw: float, unit: str, factor: float = 3.0) -> float | None:
    """Largest plausible rise of an energy counter per second: ``factor`` x rated power,
    in the counter's unit (Wh, kWh, MWh, MJ or GJ: heat meters); None for other units."""
    per_kwh = {"Wh": 1000.0, "kWh": 1.0, "MWh": 0.001, "MJ": 3.6, "GJ": 0.0036}.get(unit)
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


def _level_state(h: _Level) -> dict[str, Any]:
    return {"first": _pair(h.first), "top": _pair(h.top), "last_t": h.last_t, "n": h.n, "adjust": h.adjust}


def _restore_level(raw: Mapping[str, Any]) -> _Level:
    first, top = _unpair(raw["first"]), _unpair(raw["top"])
    if first is None or top is None:
        raise ValueError("a held counter level needs its first and top readings")
    return _Level(first, top, float(raw["last_t"]), int(raw["n"]), float(raw["adjust"]))


def _series_state(s: _Series) -> dict[str, Any]:
    return {
        "meter": s.spec.meter,
        "quantity": s.spec.quantity,
        "next_start": s.next_start,
        "origin": s.origin,
        "bound": _pair(s.bound),
        "carry": _pair(s.carry),
        "held": [_level_state(h) for h in s.held],
        "held_n": s.held_n,
        "prior": None if s.prior is None else list(s.prior),
        "last_t": _finite(s.last_t),
        "last_v": _finite(s.last_v),
        "open": [_acc_state(start, a) for start, a in sorted(s.open.items())],
    }


def _restore_series(s: _Series, raw: Mapping[str, Any], *, whole: bool) -> None:
    s.bound, s.carry = _unpair(raw["bound"]), _unpair(raw["carry"])
    s.held = [_restore_level(h) for h in raw.get("held", ())]
    pending = _unpair(raw.get("pending"))  # written before "held": one held reading
    if pending is not None:
        s.held.append(_Level(pending, pending, pending[1]))
    s.held_n = int(raw.get("held_n", sum(h.n for h in s.held)))
    prior = raw.get("prior")
    s.prior = None if prior is None else (float(prior[0]), float(prior[1]), float(prior[2]))
    s.last_t = -math.inf if raw["last_t"] is None else float(raw["last_t"])
    s.last_v = math.nan if raw["last_v"] is None else float(raw["last_v"])
    if not whole:
        return
    s.next_start, s.origin = int(raw["next_start"]), float(raw["origin"])
    s.open = {int(a["start"]): _restore_acc(a) for a in raw["open"]}
