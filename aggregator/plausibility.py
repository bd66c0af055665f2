"""Plausibility of verified interval records: is what the gateway signed physically sensible?

A signature proves who said it, not that it is true: a miswired CT, a wrong register
scale, a counter swapped without a ``reset`` flag or a gateway clock off by a day all sign
perfectly. Each interval gets a tuple of issue codes; an empty tuple means plausible.
Implausible intervals are **stored and flagged, never dropped**; methodologies do not
credit them (:class:`aggregator.view.AttestedInterval`).

Issue codes (docs/aggregator.md):

======================== ===============================================================
``unknown_meter``        the meter is not in the gateway's enrolment
``energy_above_nameplate`` delta > rated power x interval hours x ``nameplate_factor``
``power_above_nameplate`` stats max (W/kW/MW) > rated power x ``nameplate_factor``
``negative_delta``       a counter delta below zero
``counter_decrease``     counter below the reading that ended the interval just before
                         (across batches too), or ``counter_end < counter_start``, without ``reset`` /
                         ``rollover`` / ``session`` flag
``delta_mismatch``       ``counter_end - counter_start`` differs from ``delta`` (no flag
                         explains it)
``timestamp_skew``       interval end or a reading time later than the batch's
                         ``created_ms`` + ``record_skew_s``, or the end reading taken
                         before the interval started
``batch_time_ahead``     the batch's ``created_ms`` is ahead of the aggregator clock by
                         more than ``batch_ahead_s``
``gateway_clock_jump``   the batch's ``created_ms`` is earlier than that of the batch just
                         before it in the chain (seq - 1), or later by more than
                         ``clock_jump_s``: the gateway's clock jumped
``low_coverage``         samples / expected below ``min_coverage`` (or nothing expected)
``excess_samples``       more samples than the poll schedule allows
``stats_inconsistent``   not min <= avg <= max
======================== ===============================================================

Records are read by attribute: :class:`aggregator.records.IntervalDoc` on the ingest hot
path, :class:`evidence.records.IntervalRecord` otherwise. The counter state is the last
``(end, counter_end)`` per ``(meter, quantity)``, carried across batches by the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aggregator.config import LimitSettings, PlausibilitySettings
from aggregator.records import Interval
from aggregator.view import MeterInfo

# Energy units -> kWh, power units -> kW.
ENERGY_KWH: dict[str, float] = {"Wh": 1e-3, "kWh": 1.0, "MWh": 1e3, "MJ": 1 / 3.6, "GJ": 1e3 / 3.6}
POWER_KW: dict[str, float] = {"W": 1e-3, "kW": 1.0, "MW": 1e3}
_EXPLAINED = frozenset({"reset", "rollover", "session"})

CounterState = dict[tuple[str, str], tuple[int, float]]


def check_intervals(
    records: Sequence[Interval],
    *,
    meters: Mapping[str, MeterInfo],
    state: CounterState,
    created_ms: int,
    now_ms: int,
    settings: PlausibilitySettings,
    limits: LimitSettings,
    previous_created_ms: int | None = None,
) -> tuple[list[tuple[str, ...]], CounterState]:
    """Issues for each record (same order), and the counter state after them.

    ``previous_created_ms``: of the batch with seq - 1 when known (for ``gateway_clock_jump``).
    ``state`` is not modified; the returned state holds only the keys that moved.
    """
    ahead = created_ms - now_ms > limits.batch_ahead_s * 1000
    jumped = clock_jumped(previous_created_ms, created_ms, limits)
    latest_ms = created_ms + limits.record_skew_s * 1000
    issues: list[list[str]] = [[] for _ in records]
    for i, r in enumerate(records):
        meter = meters.get(r.meter)
        if not ahead and not jumped and meter is not None and _clean(r, meter, latest_ms, settings):
            continue  # the common case, decided in one expression; the checks below say why not
        found = issues[i]
        if ahead:
            found.append("batch_time_ahead")
        if jumped:
            found.append("gateway_clock_jump")
        if meter is None:
            found.append("unknown_meter")
        _check_times(r, latest_ms, found)
        _check_coverage(r, settings, found)
        _check_stats(r, meter, settings, found)
        if r.kind == "counter":
            _check_counter(r, meter, settings, found)
    moved = _check_continuity(records, state, settings, issues)
    return [tuple(sorted(x)) if x else () for x in issues], moved


def clock_jumped(previous_ms: int | None, created_ms: int, limits: LimitSettings) -> bool:
    """A gateway clock that went back between two consecutive batches, or far forward."""
    if previous_ms is None:
        return False
    return created_ms < previous_ms or created_ms - previous_ms > limits.clock_jump_s * 1000


def _clean(r: Interval, meter: MeterInfo, latest_ms: float, settings: PlausibilitySettings) -> bool:
    """True exactly when _check_times, _check_coverage, _check_stats and _check_counter find
    nothing (a property test holds the two equal): half the time of running them all."""
    t0, t1, samples, expected, st = (
        r.counter_start_time_ms,
        r.counter_end_time_ms,
        r.samples,
        r.expected,
        r.stats,
    )
    if not (
        r.end * 1000 <= latest_ms
        and (t0 is None or t0 <= latest_ms)
        and (t1 is None or r.start * 1000 <= t1 <= latest_ms)
        and expected > 0
        and samples <= expected
        and not samples < settings.min_coverage * expected
    ):
        return False
    limit_kw = meter.rated_power_kw * settings.nameplate_factor
    if st is not None:
        scale = POWER_KW.get(st.unit)
        if not (st.min <= st.avg <= st.max) or (scale is not None and st.max * scale > limit_kw):
            return False
    if r.kind != "counter":
        return True
    delta, a, b = r.delta, r.counter_start, r.counter_end
    if delta is not None and delta < 0:
        return False
    explained = bool(r.flags) and not _EXPLAINED.isdisjoint(r.flags)
    tolerance = settings.delta_tolerance_kwh
    if (
        a is not None
        and b is not None
        and not explained
        and (b < a or (delta is not None and abs((b - a) - delta) > tolerance + 1e-9 * abs(b)))
    ):
        return False
    scale = ENERGY_KWH.get(r.unit)
    hours = (r.end - r.start) / 3600  # the same expression as _check_counter: same rounding
    return (
        scale is None
        or delta is None
        or not delta * scale > meter.rated_power_kw * hours * settings.nameplate_factor
    )


def _check_times(r: Interval, latest_ms: float, found: list[str]) -> None:
    end_ms = r.end * 1000
    t0, t1 = r.counter_start_time_ms, r.counter_end_time_ms
    if (
        end_ms > latest_ms
        or (t0 is not None and t0 > latest_ms)
        or (t1 is not None and (t1 > latest_ms or t1 < r.start * 1000))
    ):
        found.append("timestamp_skew")


def _check_coverage(r: Interval, settings: PlausibilitySettings, found: list[str]) -> None:
    samples, expected = r.samples, r.expected
    if samples > expected:
        found.append("excess_samples")
    elif expected == 0 or samples < settings.min_coverage * expected:
        found.append("low_coverage")


def _check_stats(
    r: Interval, meter: MeterInfo | None, settings: PlausibilitySettings, found: list[str]
) -> None:
    stats = r.stats
    if stats is None:
        return
    if not stats.min <= stats.avg <= stats.max:
        found.append("stats_inconsistent")
    scale = POWER_KW.get(stats.unit)
    if (
        meter is not None
        and scale is not None
        and stats.max * scale > meter.rated_power_kw * settings.nameplate_factor
    ):
        found.append("power_above_nameplate")


def _check_counter(
    r: Interval, meter: MeterInfo | None, settings: PlausibilitySettings, found: list[str]
) -> None:
    delta, a, b = r.delta, r.counter_start, r.counter_end
    explained = not _EXPLAINED.isdisjoint(r.flags)
    if delta is not None and delta < 0:
        found.append("negative_delta")
    if a is not None and b is not None and not explained:
        if b < a:
            found.append("counter_decrease")
        elif delta is not None and abs((b - a) - delta) > settings.delta_tolerance_kwh + 1e-9 * abs(b):
            found.append("delta_mismatch")
    scale = ENERGY_KWH.get(r.unit)
    if meter is not None and scale is not None and delta is not None:
        hours = (r.end - r.start) / 3600
        if delta * scale > meter.rated_power_kw * hours * settings.nameplate_factor:
            found.append("energy_above_nameplate")


def _check_continuity(
    records: Sequence[Interval],
    state: CounterState,
    settings: PlausibilitySettings,
    issues: list[list[str]],
) -> CounterState:
    """Counters never go down from one interval to the next, across batches too."""
    moved: CounterState = {}
    order = sorted(
        (i for i, r in enumerate(records) if r.kind == "counter"),
        key=lambda i: (records[i].meter, records[i].quantity, records[i].start),
    )
    for i in order:
        r = records[i]
        key = (r.meter, r.quantity)
        last = moved.get(key) or state.get(key)
        a, b = r.counter_start, r.counter_end
        if (
            last is not None
            and a is not None
            # Only against the interval just before: what happened in between (a reset, a
            # rollover, a new charging session) is in records that arrive later or never.
            and last[0] == r.start
            and a < last[1] - settings.delta_tolerance_kwh
            and _EXPLAINED.isdisjoint(r.flags)
            and "counter_decrease" not in issues[i]
        ):
            issues[i].append("counter_decrease")
        if b is not None and (last is None or r.end > last[0]):
            moved[key] = (r.end, float(b))
    return moved
