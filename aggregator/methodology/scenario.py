"""What each scenario module provides to the engine (a Protocol) and the unit tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

Totals = dict[str, np.ndarray]

# Physical conversions of metered units into the engine's units (MWh for electricity, GJ
# for heat). Constants of nature, not emission factors: they live in code.
TO_MWH = {"Wh": 1e-6, "kWh": 1e-3, "MWh": 1.0}
TO_GJ = {"Wh": 3.6e-6, "kWh": 3.6e-3, "MWh": 3.6, "MJ": 1e-3, "GJ": 1.0}
GJ_PER_MWH = 3.6
ROLE_UNITS = {"energy_mwh": TO_MWH, "electricity_mwh": TO_MWH, "heat_gj": TO_GJ}


@dataclass(frozen=True, slots=True)
class Credited:
    """Credited activity per role and unit at the conservative end of the meters' maximum
    permissible error: ``low`` (x (1 - MPE)) feeds baseline emissions, ``high`` (x (1 + MPE))
    project emissions. Both are the metered totals when the set applies no accuracy discount."""

    low: Totals
    high: Totals


@dataclass(frozen=True, slots=True)
class Figures:
    """Per-unit BE, PE, LE (tCO2e) from credited activity totals; ``estimated`` marks units
    whose activity was derived (heat from electricity x COP); ``capped`` units whose BE was
    limited by their recorded historical fuel use."""

    be: np.ndarray
    pe: np.ndarray
    le: np.ndarray
    estimated: np.ndarray
    capped: np.ndarray | None = None


class ScenarioRules(Protocol):
    """One methodology's rules: which series a meter contributes, per-slot screening, and
    the formula from activity totals to BE, PE and LE (all vectorised over units)."""

    scenario: str
    roles: tuple[str, ...]

    def series_for(self, meter: str, quantities: set[str]) -> list[tuple[str, str]]:
        """(quantity, role) pairs of this meter that feed the methodology."""
        ...

    def screen(self, activity: Totals, valid: np.ndarray, present: Totals) -> dict[str, np.ndarray]:
        """Per-slot checks across a unit's series: rejection masks (U, T) by reason."""
        ...

    def figures(
        self, credited: Credited, present: Totals, grid: np.ndarray, year: int, be_cap: np.ndarray | None
    ) -> Figures:
        """BE, PE, LE per unit from credited totals, each unit's grid factor (tCO2/MWh) and,
        where the scenario has one, each unit's cap on BE (tCO2, inf for none)."""
        ...
