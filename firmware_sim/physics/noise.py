"""Counter-based deterministic noise: the same (seed, stream, index) always gives the same number.

Physics never uses hidden global random state, so a value at simulated time ``t`` does not
depend on when, how often or in what chunks the simulator was advanced.
"""

from __future__ import annotations

import math

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def u01(seed: int, stream: int, index: int) -> float:
    """Uniform number in [0, 1) determined by its three arguments."""
    x = _mix((seed * 0x9E3779B97F4A7C15 + stream) & _MASK)
    x = _mix((x + index * 0xD1B54A32D192ED03) & _MASK)
    return (x >> 11) / float(1 << 53)


def smooth(seed: int, stream: int, t: float, period: float) -> float:
    """Value noise in [0, 1): random knots every ``period`` seconds, cosine-interpolated."""
    k = math.floor(t / period)
    frac = t / period - k
    a = u01(seed, stream, k)
    b = u01(seed, stream, k + 1)
    w = (1.0 - math.cos(math.pi * frac)) / 2.0
    return a + (b - a) * w
