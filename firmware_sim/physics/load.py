"""Household consumption and a house with rooftop PV behind one bidirectional meter."""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.physics.noise import smooth
from firmware_sim.physics.sample import Sample
from firmware_sim.physics.solar import PvModel


@dataclass
class LoadModel:
    """A household or plug load: base load, morning and evening peaks, slow noise."""

    base_w: float = 200.0
    peak_w: float = 1500.0
    seed: int = 0

    def power_w(self, t: float) -> float:
        local_h = ((t / 3600.0) + 8.0) % 24.0
        morning = math.exp(-(((local_h - 7.5) / 1.0) ** 2))
        evening = math.exp(-(((local_h - 19.5) / 1.8) ** 2))
        wobble = 0.6 + 0.8 * smooth(self.seed, 31, t, 1800.0)
        return self.base_w + (self.peak_w - self.base_w) * max(morning, evening) * wobble

    def sample(self, t: float, step_s: float) -> Sample:
        return Sample(power_w=self.power_w(t + step_s / 2.0))


@dataclass
class PvHouseModel:
    """Grid meter of a house with PV: positive import, negative export."""

    pv: PvModel
    load: LoadModel

    def sample(self, t: float, step_s: float) -> Sample:
        mid = t + step_s / 2.0
        return Sample(power_w=self.load.power_w(mid) - self.pv.power_w(mid))
