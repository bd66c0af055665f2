"""EV charging displacing petrol cars (T/CSAE 235-2021, DB11/T 3043-2024, AMS-III.C form).

    D  = E / EC_ev                         km driven on the charged energy
    BE = D x SFC x EF_fuel x f^(year - base)   f: baseline technology improvement per year
    PE = E / (1 - transmission_loss) x EF_grid   (1.0.0 sets: E x EF_grid x (1 + grid loss))
    LE = leakage x BE

With an accuracy discount, E is taken x (1 - MPE) in BE and x (1 + MPE) in PE.

Only lifetime counters are credited. A meter whose energy is only a per-session counter is
refused (:class:`PerSessionCounter`) unless the parameter set says ``convert``: then the
gateway's interval deltas, which count each new session from zero, are summed as if from a
lifetime counter (energy between a session's last poll and its end is lost: conservative).
"""

from __future__ import annotations

import numpy as np

from aggregator.methodology.errors import PerSessionCounter
from aggregator.methodology.params import EVMethod
from aggregator.methodology.scenario import Credited, Figures, Totals

ROLE = "energy_mwh"


class EVRules:
    scenario: str = "ev_charging"
    roles: tuple[str, ...] = (ROLE,)

    def __init__(self, method: EVMethod) -> None:
        self.method = method

    def series_for(self, meter: str, quantities: set[str]) -> list[tuple[str, str]]:
        m = self.method
        for q in m.lifetime_quantities:
            if q in quantities:
                return [(q, ROLE)]
        session = [q for q in m.per_session_quantities if q in quantities]
        if session and m.per_session_counters == "refuse":
            raise PerSessionCounter(
                f"meter {meter}: {session[0]} is a per-session counter; this parameter set credits "
                f"lifetime counters only ({', '.join(m.lifetime_quantities)}); meter a lifetime "
                "register or use a parameter set with per_session_counters: convert"
            )
        return [(session[0], ROLE)] if session else []

    def screen(self, activity: Totals, valid: np.ndarray, present: Totals) -> dict[str, np.ndarray]:
        return {}

    def figures(
        self, credited: Credited, present: Totals, grid: np.ndarray, year: int, be_cap: np.ndarray | None
    ) -> Figures:
        m = self.method
        e_be, e_pe = credited.low[ROLE], credited.high[ROLE]
        km = e_be * 1000.0 / m.ev_consumption.value
        improvement = m.baseline_improvement_per_year.value ** max(0, year - m.improvement_base_year)
        be = km * m.fuel_consumption.value * m.fuel_emission_factor.value / 1000.0 * improvement
        if m.transmission_loss is None:
            pe = e_pe * grid * (1.0 + m.grid_loss_fraction.value)
        else:
            pe = e_pe / (1.0 - m.transmission_loss.value) * grid
        le = be * m.leakage_fraction.value
        return Figures(be=be, pe=pe, le=le, estimated=np.zeros(e_be.shape, bool))
