"""Pure, deterministic physics: power as a function of simulated time and a seed.

Nothing here does I/O or reads a clock; :mod:`firmware_sim.meter` integrates the samples.
"""

from firmware_sim.physics.ev import EvModel
from firmware_sim.physics.heating import HeatingModel, heat_pump_cop, outdoor_temperature
from firmware_sim.physics.load import LoadModel, PvHouseModel
from firmware_sim.physics.sample import PowerModel, Sample
from firmware_sim.physics.solar import PvModel, clear_sky_poa

__all__ = [
    "EvModel",
    "HeatingModel",
    "LoadModel",
    "PowerModel",
    "PvHouseModel",
    "PvModel",
    "Sample",
    "clear_sky_poa",
    "heat_pump_cop",
    "outdoor_temperature",
]
