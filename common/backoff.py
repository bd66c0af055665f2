"""The one retry pacing of the house: jittered exponential backoff.

Retry ``attempt`` (0 = the first retry) waits ``min(max_s, base_s * multiplier**attempt)``
reduced by a random fraction of up to ``jitter``: never above the cap, and retries of many
clients that lost the same server spread out instead of arriving together. The unit is the
caller's (wall seconds for a broker, clock seconds for a device on the injected clock).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential delays; ``rng`` is injected so tests and simulators repeat."""

    base_s: float
    max_s: float
    multiplier: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.base_s >= 0.0 and self.max_s >= 0.0 and self.multiplier >= 1.0):
            raise ValueError(
                f"backoff needs base_s >= 0, max_s >= 0 and multiplier >= 1, "
                f"got {self.base_s}, {self.max_s}, {self.multiplier}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter}")

    def ceiling(self, attempt: int) -> float:
        """The delay of retry ``attempt`` before jitter: exponential growth, capped."""
        if attempt < 0:
            raise ValueError(f"backoff attempt must be >= 0, got {attempt}")
        if self.base_s == 0.0:
            return 0.0
        try:
            grown = self.base_s * self.multiplier**attempt
        except OverflowError:  # far beyond any cap
            grown = math.inf
        return min(self.max_s, grown)

    def delay(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (0 = first retry): the ceiling, minus jitter."""
        return self.ceiling(attempt) * (1.0 - self.jitter * self.rng.random())
