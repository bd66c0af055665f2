"""Exact energy integration and the ground-truth log of one energy channel.

Power is piecewise constant over a fixed step grid (multiples of ``step_s`` in POSIX
time) and quantised to whole milliwatts, so energy is kept as an integer number of
milliwatt-seconds: ``energy = sum(P_k * step_s)`` holds exactly, counters never drift
from the integral and ground truth needs no tolerance. Counters move at step
boundaries; the power a device reports is the power of the step in progress.

The *true* energy (``forward_mws``/``reverse_mws``) only grows. The *visible* counter is
``(base + true) mod modulus``: a counter reset (meter replaced) or a rollover changes
``base`` and is logged as an event, never as lost energy.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.physics.sample import PowerModel, Sample

MWS_PER_WH = 3_600_000  # milliwatt-seconds per watt-hour


@dataclass(frozen=True, slots=True)
class IntervalTruth:
    """Energy that really flowed in ``[start, end)`` and the visible counters at both ends."""

    start: float
    end: float
    forward_mws: int
    reverse_mws: int
    counter_start_wh: float
    counter_end_wh: float
    reverse_counter_start_wh: float
    reverse_counter_end_wh: float
    events: tuple[str, ...] = ()

    @property
    def forward_wh(self) -> float:
        return self.forward_mws / MWS_PER_WH

    @property
    def reverse_wh(self) -> float:
        return self.reverse_mws / MWS_PER_WH

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "forward_wh": self.forward_wh,
            "reverse_wh": self.reverse_wh,
            "forward_mws": self.forward_mws,
            "reverse_mws": self.reverse_mws,
            "counter_start_wh": self.counter_start_wh,
            "counter_end_wh": self.counter_end_wh,
            "reverse_counter_start_wh": self.reverse_counter_start_wh,
            "reverse_counter_end_wh": self.reverse_counter_end_wh,
            "events": list(self.events),
        }


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Ground truth of one channel up to ``as_of`` (the last completed step boundary)."""

    channel: str
    quantity: str  # "electric" or "heat"
    intervals: tuple[IntervalTruth, ...]
    as_of: float
    forward_mws: int
    reverse_mws: int
    counter_wh: float
    reverse_counter_wh: float

    @property
    def forward_wh(self) -> float:
        return self.forward_mws / MWS_PER_WH

    def energy_wh_between(self, start: float, end: float) -> float:
        """True forward energy over whole intervals inside ``[start, end)``."""
        mws = sum(i.forward_mws for i in self.intervals if i.start >= start and i.end <= end)
        return mws / MWS_PER_WH

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "quantity": self.quantity,
            "as_of": self.as_of,
            "forward_wh": self.forward_wh,
            "reverse_wh": self.reverse_mws / MWS_PER_WH,
            "counter_wh": self.counter_wh,
            "reverse_counter_wh": self.reverse_counter_wh,
            "intervals": [i.to_dict() for i in self.intervals],
        }


@dataclass(frozen=True, slots=True)
class StepLog:
    """True cumulative energy at every step boundary from ``t0`` on: ``forward_mws[j]`` is
    the forward energy integrated up to ``t0 + j * step_s`` (what a counter read at any
    time in ``[t0 + j * step_s, t0 + (j + 1) * step_s)`` shows, before resets)."""

    t0: float
    step_s: int
    forward_mws: array[int]
    reverse_mws: array[int]

    def at(self, t: float) -> tuple[int, int]:
        """True (forward, reverse) energy a counter read at clock time ``t`` includes."""
        j = math.floor((t - self.t0) / self.step_s)
        if not 0 <= j < len(self.forward_mws):
            raise ValueError(
                f"{t} is outside the step log [{self.t0}, {self.t0 + len(self.forward_mws) * self.step_s})"
            )
        return self.forward_mws[j], self.reverse_mws[j]


@dataclass
class _OpenInterval:
    start: float
    fwd0: int
    rev0: int
    counter0: float
    rcounter0: float
    events: list[str] = field(default_factory=list)


class Meter:
    """Integrates a :class:`PowerModel` on a step grid and logs ground truth per interval."""

    def __init__(
        self,
        model: PowerModel,
        *,
        start: float,
        step_s: int,
        interval_s: int,
        initial_wh: float = 0.0,
        modulus_wh: float | None = None,
        quantity: str = "electric",
        channel: str = "main",
        per_session: bool = False,
        log_steps: bool = False,
    ) -> None:
        if interval_s % step_s:
            raise ValueError(f"interval {interval_s} s is not a multiple of step {step_s} s")
        self.model, self.step_s, self.interval_s = model, step_s, interval_s
        self.channel, self.quantity = channel, quantity
        self.per_session = per_session  # counter restarts at 0 when a charging session starts
        self.modulus_mws = None if modulus_wh is None else round(modulus_wh * MWS_PER_WH)
        self._k = math.floor(start / step_s)  # index of the step in progress
        self.forward_mws = 0
        self.reverse_mws = 0
        self._base_fwd = round(initial_wh * MWS_PER_WH)
        self._base_rev = 0
        self.sample: Sample = model.sample(self.t, step_s)
        self.version = 0  # bumps whenever visible state changes
        self._closed: list[IntervalTruth] = []
        self._open = self._new_interval(self.t)
        # Optional: the cumulative energy at every step boundary (16 bytes a step), so that
        # truth can be taken between any two reading times, not only interval boundaries.
        self._steps: StepLog | None = (
            StepLog(self.t, step_s, array("q", [0]), array("q", [0])) if log_steps else None
        )

    @property
    def t(self) -> float:
        """Start of the step in progress (= time of the visible counters)."""
        return float(self._k * self.step_s)

    def counter_mws(self) -> int:
        return self._wrap(self._base_fwd + self.forward_mws)

    def reverse_counter_mws(self) -> int:
        return self._wrap(self._base_rev + self.reverse_mws)

    def counter_wh(self) -> float:
        """Visible forward counter (after resets and rollovers), Wh."""
        return self.counter_mws() / MWS_PER_WH

    def reverse_counter_wh(self) -> float:
        return self.reverse_counter_mws() / MWS_PER_WH

    def advance_to(self, now: float) -> bool:
        """Integrate every step that ended at or before ``now``; True if anything moved."""
        moved = False
        while (self._k + 1) * self.step_s <= now:
            self._integrate_step()
            moved = True
        if moved:
            self.version += 1
        return moved

    def _integrate_step(self) -> None:
        p_mw = round(self.sample.power_w * 1000.0)
        if p_mw >= 0:
            self.forward_mws += p_mw * self.step_s
        else:
            self.reverse_mws += -p_mw * self.step_s
        self._k += 1
        if self._steps is not None:
            self._steps.forward_mws.append(self.forward_mws)
            self._steps.reverse_mws.append(self.reverse_mws)
        t = self.t
        if t % self.interval_s == 0:
            self._close_interval(t)
        previous = self.sample.session
        self.sample = self.model.sample(t, self.step_s)
        if self.per_session and self.sample.session != previous:
            self.set_counter(0.0, "session")

    def set_counter(self, counter_wh: float, event: str) -> None:
        """Make the visible forward counter read ``counter_wh`` now (reset, rollover, session)."""
        self._base_fwd = round(counter_wh * MWS_PER_WH) - self.forward_mws
        self._open.events.append(f"{event}@{self.t:.0f}")
        self.version += 1

    def reset(self) -> None:
        """Meter replaced: visible counters restart at zero; true energy keeps flowing."""
        self._base_rev = -self.reverse_mws
        self.set_counter(0.0, "reset")

    def rollover(self, margin_wh: float) -> None:
        """Put the visible counter ``margin_wh`` below its modulus so it wraps soon."""
        if self.modulus_mws is None:
            raise ValueError(f"channel {self.channel} has no rollover modulus")
        self.set_counter(self.modulus_mws / MWS_PER_WH - margin_wh, "rollover")

    def ground_truth(self) -> GroundTruth:
        return GroundTruth(
            channel=self.channel,
            quantity=self.quantity,
            intervals=tuple(self._closed),
            as_of=self.t,
            forward_mws=self.forward_mws,
            reverse_mws=self.reverse_mws,
            counter_wh=self.counter_wh(),
            reverse_counter_wh=self.reverse_counter_wh(),
        )

    def step_log(self) -> StepLog | None:
        """The cumulative energy per step (``log_steps=True``), else None."""
        return self._steps

    def _wrap(self, mws: int) -> int:
        return mws if self.modulus_mws is None else mws % self.modulus_mws

    def _new_interval(self, t: float) -> _OpenInterval:
        return _OpenInterval(
            t, self.forward_mws, self.reverse_mws, self.counter_wh(), self.reverse_counter_wh()
        )

    def _close_interval(self, t: float) -> None:
        o = self._open
        self._closed.append(
            IntervalTruth(
                start=o.start,
                end=t,
                forward_mws=self.forward_mws - o.fwd0,
                reverse_mws=self.reverse_mws - o.rev0,
                counter_start_wh=o.counter0,
                counter_end_wh=self.counter_wh(),
                reverse_counter_start_wh=o.rcounter0,
                reverse_counter_end_wh=self.reverse_counter_wh(),
                events=tuple(o.events),
            )
        )
        self._open = self._new_interval(t)
