"""Rooftop PV: clear-sky irradiance by latitude, day of year and hour, with clouds.

Clear sky: Meinel beam model ``DNI = 1353 * 0.7 ** (AM ** 0.678)`` with the Kasten-Young
air mass, sun position from Cooper's declination and the equation of time; plane of
array for a south-facing panel at ``tilt``, plus isotropic diffuse ``0.1 * DNI``.
Clouds: slow value noise (2 h knots) scaled by ``cloudiness`` and a per-day weather draw.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

from firmware_sim.physics.noise import smooth, u01
from firmware_sim.physics.sample import Sample

_DEG = math.pi / 180.0


def day_of_year(t: float) -> int:
    """1-based UTC day of year of POSIX time ``t``."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).timetuple().tm_yday


def sun_cos_zenith(t: float, latitude: float, longitude: float) -> tuple[float, float, float]:
    """(cos zenith, declination rad, hour angle rad) at POSIX time ``t``."""
    n = day_of_year(t)
    decl = 23.45 * _DEG * math.sin(2 * math.pi * (284 + n) / 365.0)
    b = 2 * math.pi * (n - 81) / 364.0
    eot_min = 9.87 * math.sin(2 * b) - 7.53 * math.cos(b) - 1.5 * math.sin(b)
    utc_h = (t % 86400.0) / 3600.0
    solar_h = utc_h + longitude / 15.0 + eot_min / 60.0
    omega = 15.0 * _DEG * (solar_h - 12.0)
    phi = latitude * _DEG
    cosz = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(omega)
    return cosz, decl, omega


def clear_sky_poa(t: float, latitude: float, longitude: float, tilt: float) -> float:
    """Plane-of-array irradiance (W/m²) under a clear sky, south-facing panel."""
    cosz, decl, omega = sun_cos_zenith(t, latitude, longitude)
    if cosz <= 0.0:
        return 0.0
    zen_deg = math.degrees(math.acos(min(1.0, cosz)))
    air_mass = 1.0 / (cosz + 0.50572 * (96.07995 - zen_deg) ** -1.6364)
    dni = 1353.0 * 0.7 ** (air_mass**0.678)
    phi_eff = (latitude - tilt) * _DEG
    cos_inc = math.sin(decl) * math.sin(phi_eff) + math.cos(decl) * math.cos(phi_eff) * math.cos(omega)
    beam = dni * max(0.0, cos_inc)
    diffuse = 0.1 * dni * (1.0 + math.cos(tilt * _DEG)) / 2.0
    return float(beam + diffuse)


@dataclass
class PvModel:
    """AC output of a PV system of ``kwp`` rated peak power."""

    kwp: float
    latitude: float
    longitude: float
    tilt: float = 30.0
    cloudiness: float = 0.3  # 0 = always clear, 1 = heavy clouds most days
    performance_ratio: float = 0.85
    seed: int = 0

    def cloud_factor(self, t: float) -> float:
        """Fraction of clear-sky irradiance reaching the panel, in (0, 1]."""
        day = math.floor(t / 86400.0)
        day_weather = u01(self.seed, 11, day)  # some days are overcast, some clear
        passing = smooth(self.seed, 12, t, 7200.0)
        cover = self.cloudiness * (0.5 * day_weather + 0.5 * passing)
        return max(0.05, 1.0 - 0.9 * cover)

    def power_w(self, t: float) -> float:
        poa = clear_sky_poa(t, self.latitude, self.longitude, self.tilt)
        if poa <= 0.0:
            return 0.0
        return self.kwp * poa * self.performance_ratio * self.cloud_factor(t)

    def sample(self, t: float, step_s: float) -> Sample:
        return Sample(power_w=self.power_w(t + step_s / 2.0))
