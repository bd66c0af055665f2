"""EV charging sessions: arrivals, a power limit, energy needs and departures.

Arrivals follow a Poisson process whose rate varies over the local day (UTC+8): a morning
peak at 08:00 and an evening peak at 19:00 (a depot or a residential compound). Each car
wants an energy drawn around ``mean_energy_kwh`` and stays for 1-10 h; the socket
charges at ``power_limit_kw`` with a linear taper above 80 % of the energy need, then
idles connected (state B1) until departure. The random stream is a seeded
``random.Random`` advanced once per step, so the sequence depends only on the seed and
the step grid.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from firmware_sim.physics.sample import Sample


def arrival_shape(local_h: float) -> float:
    """Relative arrival intensity over the day; its mean over 24 h is about 1."""
    morning = math.exp(-(((local_h - 8.0) / 1.5) ** 2))
    evening = math.exp(-(((local_h - 19.0) / 2.0) ** 2))
    return 0.2 + 2.6 * (morning + evening) / 1.7


@dataclass
class _Session:
    number: int
    need_wh: float
    depart_t: float
    delivered_wh: float = 0.0


@dataclass
class EvModel:
    """One charging socket."""

    power_limit_kw: float = 11.0
    arrivals_per_day: float = 2.0
    mean_energy_kwh: float = 20.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _session: _Session | None = field(default=None, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def sample(self, t: float, step_s: float) -> Sample:
        draw = self._rng.random()  # exactly one draw per step keeps the stream aligned
        s = self._session
        if s is not None and t >= s.depart_t:
            self._session = s = None
        if s is None:
            local_h = ((t / 3600.0) + 8.0) % 24.0
            rate = self.arrivals_per_day / 86400.0 * arrival_shape(local_h)
            if draw >= 1.0 - math.exp(-rate * step_s):
                return Sample(power_w=0.0, ev_state="A", session=self._count)
            s = self._arrive(t)
        power = self._power(s)
        s.delivered_wh += power * step_s / 3600.0
        state = "C2" if power > 0.0 else "B1"
        return Sample(power_w=power, ev_state=state, session=s.number)

    def _arrive(self, t: float) -> _Session:
        self._count += 1
        need = self.mean_energy_kwh * 1000.0 * (0.4 + 1.2 * self._rng.random())
        dwell = 3600.0 * (1.0 + 9.0 * self._rng.random())
        self._session = _Session(self._count, need, t + dwell)
        return self._session

    def _power(self, s: _Session) -> float:
        remaining = s.need_wh - s.delivered_wh
        if remaining <= 0.0:
            return 0.0
        limit = self.power_limit_kw * 1000.0
        taper = min(1.0, max(0.1, remaining / (0.2 * s.need_wh)))
        return limit * taper
