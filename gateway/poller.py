"""Poll scheduler: every device on its own clock-aligned schedule, concurrently.

Each device gets one named task (``poll:<meter>``) in the poller's TaskGroup, so a device
that times out delays nobody else. A device's poll groups each have a period; slots are
aligned to the clock (multiples of the period since the epoch), and groups due at the same
instant are read in one poll (one request plan). A poll that overruns later slots skips
them and counts them as ``missed``. Samples go to the sink (e.g.
``IntervalBuilder.add_many``); per-device :class:`DeviceHealth` is kept in ``health``.

::

    async with Poller([Schedule(source, {"fast": 5, "slow": 60})], builder.add_many, clock) as p:
        await p.wait_until(lambda health: health["m1"].polls >= 3)

The poller enters its sources (async context managers) on start and closes them on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from common.clock import Clock
from drivers.contract import DeviceHealth, PollSource, Sample

log = logging.getLogger(__name__)
Sink = Callable[[Sequence[Sample]], object]


@dataclass(frozen=True)
class Schedule:
    """A source and its poll groups' periods (clock seconds)."""

    source: PollSource
    periods: Mapping[str, float]

    def __post_init__(self) -> None:
        bad = [f"{g}={p}" for g, p in self.periods.items() if not p > 0]
        if not self.periods or bad:
            raise ValueError(f"{self.source.meter}: poll periods must be > 0 and not empty, got {bad}")


def next_slot(now: float, period: float) -> float:
    """The first multiple of ``period`` strictly after ``now``."""
    return (math.floor(now / period) + 1) * period


class Poller:
    """Polls many devices concurrently (async context manager owning a TaskGroup)."""

    def __init__(self, schedules: Sequence[Schedule], sink: Sink, clock: Clock) -> None:
        meters = [s.source.meter for s in schedules]
        if len(set(meters)) != len(meters):
            raise ValueError(f"duplicate meter ids among poll schedules: {sorted(meters)}")
        self.health = {m: DeviceHealth(m) for m in meters}
        self._schedules = tuple(schedules)
        self._sink = sink
        self._clock = clock
        self._changed = asyncio.Condition()
        self._waiting = 0  # wait_until calls under way
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Poller:
        async with contextlib.AsyncExitStack() as stack:
            for s in self._schedules:
                await stack.enter_async_context(s.source)
            group = await stack.enter_async_context(asyncio.TaskGroup())
            now = self._clock.now()  # slots count from entry, not from when each task first runs
            for s in self._schedules:
                self._tasks.append(group.create_task(self._run(s, now), name=f"poll:{s.source.meter}"))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await self._stack.aclose()

    async def wait_until(self, predicate: Callable[[Mapping[str, DeviceHealth]], bool]) -> None:
        """Return once ``predicate(health)`` holds, re-checked after every poll (wrap in
        ``asyncio.timeout``)."""
        self._waiting += 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.health))
        finally:
            self._waiting -= 1

    async def _run(self, schedule: Schedule, now: float) -> None:
        periods = schedule.periods
        due = {g: next_slot(now, p) for g, p in periods.items()}
        health = self.health[schedule.source.meter]
        while True:
            t = min(due.values())
            await self._clock.sleep_until(t)
            groups = sorted(g for g, d in due.items() if d <= t)
            result = await schedule.source.poll(groups, slot=t)
            health.record(result, groups)
            if result.samples:
                self._sink(result.samples)
            now = self._clock.now()
            for g in groups:
                due[g] = self._advance(due[g], periods[g], now, health)
            if self._waiting:  # nobody waits, as in a running gateway: no lock to take
                async with self._changed:
                    self._changed.notify_all()

    @staticmethod
    def _advance(due: float, period: float, now: float, health: DeviceHealth) -> float:
        nxt = due + period
        if nxt <= now:  # the poll overran whole slots: skip them, count them
            missed = math.floor((now - nxt) / period) + 1
            health.missed_slots += missed
            nxt += missed * period
        return nxt
