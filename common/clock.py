"""Injected clocks shared by every component (gateway, simulator, aggregator, tests).

Every time-based component takes a :class:`Clock`; nothing calls ``time.time()`` directly.

- :class:`SystemClock`: wall time.
- :class:`FastClock`: simulated time ``epoch + factor * (wall - wall_start)``. Two processes
  built from the same :class:`FastClockSpec` agree on simulated time, so a simulator fleet
  and a gateway in another process share one fast clock.
- :class:`ManualClock`: advanced by hand, for unit tests.

Times are POSIX seconds (float, UTC). ``sleep``/``sleep_until`` take *clock* seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What a time-based component needs from the clock."""

    @property
    def factor(self) -> float:
        """Clock seconds per wall second (1 for real time)."""
        ...

    def now(self) -> float:
        """Current clock time, POSIX seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of clock time."""
        ...

    async def sleep_until(self, t: float) -> None:
        """Sleep until clock time ``t`` (returns at once if already past)."""
        ...


class SystemClock:
    """Real time."""

    factor = 1.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - time.time()))


@dataclass(frozen=True)
class FastClockSpec:
    """Everything needed to rebuild the same fast clock in another process."""

    epoch: float  # simulated time at wall_start
    factor: float  # simulated seconds per wall second
    wall_start: float  # wall time (time.time()) at which simulated time == epoch

    def to_dict(self) -> dict[str, float]:
        return {"epoch": self.epoch, "factor": self.factor, "wall_start": self.wall_start}


class FastClock:
    """Simulated time running ``factor`` times faster than the wall clock."""

    def __init__(self, epoch: float, factor: float, wall_start: float | None = None) -> None:
        if factor <= 0:
            raise ValueError(f"clock factor must be > 0, got {factor}")
        self.spec = FastClockSpec(epoch, factor, time.time() if wall_start is None else wall_start)

    @classmethod
    def from_spec(cls, spec: FastClockSpec) -> FastClock:
        return cls(spec.epoch, spec.factor, spec.wall_start)

    @property
    def factor(self) -> float:
        return self.spec.factor

    def now(self) -> float:
        return self.spec.epoch + self.spec.factor * (time.time() - self.spec.wall_start)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.spec.factor)

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()) / self.spec.factor)


class ManualClock:
    """A clock that moves only when told to; sleepers wake when it passes their deadline."""

    factor = 1.0

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._changed: asyncio.Condition | None = None  # made on first use, inside a loop

    def now(self) -> float:
        return self._now

    async def advance(self, seconds: float) -> None:
        await self.set(self._now + seconds)

    async def set(self, t: float) -> None:
        if t < self._now:
            raise ValueError("ManualClock cannot go backwards; model clock jumps explicitly")
        self._now = t
        cond = self._condition()
        async with cond:
            cond.notify_all()
        await asyncio.sleep(0)  # let woken sleepers run

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    async def sleep_until(self, t: float) -> None:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self._now >= t)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed
