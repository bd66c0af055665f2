"""Clean heating replacing coal (electric boilers, heat pumps).

    BE = min(Q_heat / eta_BL x EF_coal, cap)   Q in GJ, EF_coal in tCO2/GJ (= tCO2/TJ / 1000)
    PE = E_elec / (1 - transmission_loss) x EF_grid   (1.0.0 sets: no loss term)
    LE = leakage x BE

``cap`` is the household's recorded coal use pro-rated to the period (:mod:`.baseline`), for
units that have a record. With an accuracy discount, Q (and E where it stands in for Q) is
taken x (1 - MPE) in BE and E x (1 + MPE) in PE.

A unit (one house: its electricity meter(s) and, when fitted, its heat meter) is credited
slot by slot only when every one of its series has a credited interval in that slot, so a
missing electricity interval can never leave its heat credited. With a heat meter, each
slot's COP = Q / E must lie in [cop_min, cop_max] (both zero is fine: no heating); without
one, Q = E x estimated_cop and the unit is marked ``estimated``.
"""

from __future__ import annotations

import numpy as np

from aggregator.methodology.params import HeatingMethod
from aggregator.methodology.scenario import GJ_PER_MWH, Credited, Figures, Totals

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

    def figures(
        self, credited: Credited, present: Totals, grid: np.ndarray, year: int, be_cap: np.ndarray | None
    ) -> Figures:
        m = self.method
        low, high = credited.low, credited.high
        metered = present[HEAT].astype(bool)
        q_gj = np.where(metered, low[HEAT], low[ELEC] * GJ_PER_MWH * m.estimated_cop.value)
        be = q_gj / m.baseline_efficiency.value * (m.coal_emission_factor.value / 1000.0)
        capped = np.zeros(be.shape, bool) if be_cap is None else be > be_cap
        if be_cap is not None:
            be = np.minimum(be, be_cap)
        loss = 0.0 if m.transmission_loss is None else m.transmission_loss.value
        pe = high[ELEC] * grid if loss == 0.0 else high[ELEC] / (1.0 - loss) * grid
        le = be * m.leakage_fraction.value
        return Figures(be=be, pe=pe, le=le, estimated=~metered, capped=capped)
