"""What the engine's array core computed (:class:`Evaluation`): its own module so the
assurance split (:mod:`.assurance`) and the engine share it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.methodology.scenario import Credited


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the core computed: per-unit arrays (length U) and statement totals."""

    completeness: np.ndarray
    credited: np.ndarray
    totals: dict[str, np.ndarray]  # credited activity per role and unit (MWh or GJ)
    be: np.ndarray
    pe: np.ndarray
    le: np.ndarray
    estimated: np.ndarray
    used: int
    missing: int
    excluded: dict[str, int]
    runs: list[list[tuple[int, int]]]  # per series row: credited [start, end) seconds
    bounds: Credited | None = None  # activity at the ends of the meters' MPE (accuracy discount)
    capped: np.ndarray | None = None  # per unit: BE limited by the recorded historical fuel use

    @property
    def totals_be_pe_le(self) -> tuple[float, float, float]:
        return float(self.be.sum()), float(self.pe.sum()), float(self.le.sum())

    @property
    def er(self) -> float:
        be, pe, le = self.totals_be_pe_le
        return max(0.0, be - pe - le)
