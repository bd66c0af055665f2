"""Clean heating in a Zhangjiakou winter: outdoor temperature, heat demand, boiler or heat pump.

Outdoor temperature (°C), local time = UTC+8:

- seasonal mean ``7.5 - 17.5 cos(2π (doy - 15) / 365)``: about -10 °C in mid-January,
  +25 °C in mid-July (Zhangjiakou climate normals, rounded);
- cold waves: ±5 °C value noise with 2-day knots;
- diurnal swing ±5 °C, warmest at 15:00 local.

Heat demand ``Q = UA (T_set - T_out)`` with ``UA = area * loss`` (W/K) when
``T_out < heating_limit_c``, capped by the heater rating. An electric boiler draws
``Q / 0.98``; an air-source heat pump draws ``Q / COP(T_out)`` with
``COP = clamp(2.9 + 0.06 T_out, 1.5, 5.0)`` (3.3 at 7 °C, 2.5 at -7 °C, 1.7 at -20 °C).
The hydronic side runs at a design flow temperature (35 °C floor heating for heat pumps,
60 °C radiators for boilers) with a return 0.5-8 K colder depending on load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from firmware_sim.physics.noise import smooth
from firmware_sim.physics.sample import Sample
from firmware_sim.physics.solar import day_of_year

HeaterKind = Literal["heat_pump", "electric_boiler"]
BOILER_EFFICIENCY = 0.98
WATER_KWH_PER_M3K = 1.163  # heat capacity of water: kWh per m³ per kelvin


def outdoor_temperature(t: float, seed: int) -> float:
    """Outdoor air temperature (°C) typical of Zhangjiakou at POSIX time ``t``."""
    doy = day_of_year(t)
    seasonal = 7.5 - 17.5 * math.cos(2 * math.pi * (doy - 15) / 365.0)
    cold_wave = 10.0 * (smooth(seed, 21, t, 2 * 86400.0) - 0.5)
    local_h = ((t / 3600.0) + 8.0) % 24.0
    diurnal = 5.0 * math.cos(2 * math.pi * (local_h - 15.0) / 24.0)
    return seasonal + cold_wave + diurnal


def heat_pump_cop(outdoor_c: float) -> float:
    """Coefficient of performance of an air-source heat pump at ``outdoor_c``."""
    return min(5.0, max(1.5, 2.9 + 0.06 * outdoor_c))


@dataclass
class HeatingModel:
    """A house heated by an electric boiler or a heat pump.

    ``output`` chooses what a meter on this model sees: ``electric`` (the heater's
    electricity meter) or ``heat`` (a heat meter on the hydronic circuit).
    """

    area_m2: float = 120.0
    loss_w_m2k: float = 1.8  # specific heat loss per floor area; old rural brick houses
    setpoint_c: float = 18.0
    heating_limit_c: float = 15.0
    heater: HeaterKind = "heat_pump"
    rated_kw: float = 12.0
    output: Literal["electric", "heat"] = "electric"
    seed: int = 0

    def heat_w(self, outdoor_c: float) -> float:
        if outdoor_c >= self.heating_limit_c:
            return 0.0
        demand = self.area_m2 * self.loss_w_m2k * max(0.0, self.setpoint_c - outdoor_c)
        return min(demand, self.rated_kw * 1000.0)

    def electric_w(self, heat_w: float, outdoor_c: float) -> float:
        if self.heater == "electric_boiler":
            return heat_w / BOILER_EFFICIENCY
        return heat_w / heat_pump_cop(outdoor_c)

    def sample(self, t: float, step_s: float) -> Sample:
        t_out = outdoor_temperature(t + step_s / 2.0, self.seed)
        heat = self.heat_w(t_out)
        if self.output == "electric":
            return Sample(power_w=self.electric_w(heat, t_out), outdoor_c=t_out)
        return self._hydronic(heat, t_out)

    def _hydronic(self, heat: float, t_out: float) -> Sample:
        design_flow = 35.0 if self.heater == "heat_pump" else 60.0
        load = heat / (self.rated_kw * 1000.0)
        if heat <= 0.0:
            return Sample(0.0, t_out, design_flow - 10.0, design_flow - 10.0, 0.0)
        delta_k = 0.5 + 7.5 * load
        flow_m3h = heat / 1000.0 / (WATER_KWH_PER_M3K * delta_k)
        return Sample(heat, t_out, design_flow, design_flow - delta_k, flow_m3h)
