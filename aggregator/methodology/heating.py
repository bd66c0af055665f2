"""Clean heating replacing coal (electric boilers, heat pumps).

    BE = Q_heat / eta_BL x EF_coal       Q in GJ, EF_coal in tCO2/GJ (= tCO2/TJ / 1000)
    PE = E_elec x EF_grid
    LE = leakage x BE

A unit (one house: its electricity meter(s) and, when fitted, its heat meter) is credited
slot by slot only when every one of its series has a credited interval in that slot, so a
missing electricity interval can never leave its heat credited. With a heat meter, each
slot's COP = Q / E must lie in [cop_min, cop_max] (both zero is fine: no heating); without
one, Q = E x estimated_cop and the unit is marked ``estimated``.
"""

from __future__ import annotations

import numpy as np

from aggregator.methodology.params import HeatingMethod
from aggregator.methodology.scenario import GJ_PER_MWH, Figures, Totals

HEAT = "heat_gj"
ELEC = "electricity_mwh"


class HeatingRules:
    scenario: str = "clean_heating"
    roles: tuple[str, ...] = (HEAT, ELEC)

    def __init__(self, method: HeatingMethod) -> None:
        self.method = method

    def series_for(self, meter: str, quantities: set[str]) -> list[tuple[str, str]]:
        m = self.method
        out = [(q, HEAT) for q in m.heat_quantities if q in quantities][:1]  # one heat register
        out += [(q, ELEC) for q in m.electricity_quantities if q in quantities][:1]
        return out

    def screen(self, activity: Totals, valid: np.ndarray, present: Totals) -> dict[str, np.ndarray]:
        q_gj, e_mwh = activity[HEAT], activity[ELEC]
        e_gj = e_mwh * GJ_PER_MWH
        lo, hi = self.method.cop_min.value, self.method.cop_max.value
        in_range = (q_gj >= lo * e_gj) & (q_gj <= hi * e_gj)  # COP in range, without dividing
        idle = (q_gj == 0) & (e_gj == 0)
        metered = present[HEAT][:, None].astype(bool)
        no_elec = ~present[ELEC][:, None].astype(bool)  # PE unknown: nothing can be credited
        return {
            "no_electricity_series": valid & no_elec,
            "cop_out_of_range": valid & ~no_elec & metered & ~(in_range | idle),
        }

    def figures(self, totals: Totals, present: Totals, grid: np.ndarray, year: int) -> Figures:
        m = self.method
        e_mwh = totals[ELEC]
        metered = present[HEAT].astype(bool)
        q_gj = np.where(metered, totals[HEAT], e_mwh * GJ_PER_MWH * m.estimated_cop.value)
        be = q_gj / m.baseline_efficiency.value * (m.coal_emission_factor.value / 1000.0)
        pe = e_mwh * grid
        le = be * m.leakage_fraction.value
        return Figures(be=be, pe=pe, le=le, estimated=~metered)
