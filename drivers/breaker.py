"""Circuit breaking for one device, on the injected clock (retry pacing is
:class:`common.backoff.Backoff`). :class:`CircuitBreaker` stops hammering a dead device::

    closed --(threshold consecutive failures)--> open --(cooldown elapsed)--> half_open
    half_open --(probe succeeds)--> closed        half_open --(probe fails)--> open
"""

from __future__ import annotations

from enum import StrEnum

from common.clock import Clock


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; allows one probe after ``cooldown_s``."""

    def __init__(self, clock: Clock, *, threshold: int = 3, cooldown_s: float = 60.0) -> None:
        if threshold < 1 or cooldown_s < 0:
            raise ValueError(f"breaker needs threshold >= 1 and cooldown >= 0, got {threshold}, {cooldown_s}")
        self._clock = clock
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._state = BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        """Current state; an open breaker whose cool-down has passed reads as half-open."""
        opened = self.opened_at
        cooled = opened is not None and self._clock.now() - opened >= self.cooldown_s
        if self._state is BreakerState.OPEN and cooled:
            self._state = BreakerState.HALF_OPEN
        return self._state

    def allows(self) -> bool:
        """Whether a request may go out now (closed, or half-open for one probe)."""
        return self.state is not BreakerState.OPEN

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self._state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        probing = self._state is BreakerState.HALF_OPEN
        if probing or self.consecutive_failures >= self.threshold:
            self._state = BreakerState.OPEN
            self.opened_at = self._clock.now()
