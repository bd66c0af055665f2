"""Rooftop / distributed PV: BE = EG x EF_grid; PE = 0; LE = 0.

EG is the quantity the parameter set credits: ``energy_export`` (the national CCER rule:
only what the settlement meter exports) or ``energy_generated`` (Shanghai). A meter's other
quantities are ignored.
"""

from __future__ import annotations

import numpy as np

from aggregator.methodology.params import PVMethod
from aggregator.methodology.scenario import Figures, Totals

ROLE = "energy_mwh"


class PVRules:
    scenario: str = "pv"
    roles: tuple[str, ...] = (ROLE,)

    def __init__(self, method: PVMethod) -> None:
        self.method = method

    def series_for(self, meter: str, quantities: set[str]) -> list[tuple[str, str]]:
        q = self.method.credited_quantity
        return [(q, ROLE)] if q in quantities else []

    def screen(self, activity: Totals, valid: np.ndarray, present: Totals) -> dict[str, np.ndarray]:
        return {}

    def figures(self, totals: Totals, present: Totals, grid: np.ndarray, year: int) -> Figures:
        eg = totals[ROLE]
        zero = np.zeros_like(eg)
        return Figures(be=eg * grid, pe=zero, le=zero.copy(), estimated=np.zeros(eg.shape, bool))
