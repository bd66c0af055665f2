"""Rooftop / distributed PV: BE = EG x EF_grid; PE = 0; LE = 0.

EG is the quantity the parameter set credits: ``energy_export`` (CMS-002-V01 / AMS-I.D: only
what the settlement meter delivers to the grid) or ``energy_generated`` (Shanghai). A
meter's other quantities are ignored. EG is taken at the low end of the meter's permissible
error when the set discounts for accuracy.
"""

from __future__ import annotations

import numpy as np

from aggregator.methodology.params import PVMethod
from aggregator.methodology.scenario import Credited, Figures, Totals

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

    def figures(
        self, credited: Credited, present: Totals, grid: np.ndarray, year: int, be_cap: np.ndarray | None
    ) -> Figures:
        eg = credited.low[ROLE]
        zero = np.zeros_like(eg)
        return Figures(be=eg * grid, pe=zero, le=zero.copy(), estimated=np.zeros(eg.shape, bool))
