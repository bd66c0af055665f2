"""Shared pieces of the benchmark scripts: result rows and a best-of timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure, optionally with the ceiling or peer measured in the same run."""

    name: str
    value: float
    unit: str
    compared_with: str = ""
    peer_value: float | None = None

    @property
    def ratio(self) -> float | None:
        return None if not self.peer_value else self.value / self.peer_value


def best_rate(work: Callable[[], int], *, repeat: int = 5, min_seconds: float = 0.2) -> float:
    """Items per second of ``work`` (which returns how many items it did): best of ``repeat``."""
    best = 0.0
    for _ in range(repeat):
        items, t0 = 0, time.perf_counter()
        while True:
            items += work()
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        best = max(best, items / elapsed)
    return best
