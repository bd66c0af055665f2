"""CJ/T 188 unit codes and their exact factors to the units puhui reports.

Each measured value in a CJ/T 188 data block is followed by a unit byte. The codes below
come from the standard's unit table as three independent implementations transcribe it
(see README.md, "Unit codes"): ``confirmed`` codes appear in at least two of them, the
others (the x10 / x100 steps and the per-hour energy units) in one only. Code 0x36 is
m3/h x 10 in one source and volts in another: it is not accepted.

Factors are exact rationals: a reading is converted as ``Fraction(decimal) * factor`` and
rounded to a float once, so 1.00 GJ becomes exactly the float nearest 2500/9 kWh.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

UnitKind = Literal["energy", "power", "volume", "flow"]

# What each kind is converted to (the units of the existing heat-meter profile, with heat
# energy in kWh).
CANONICAL: dict[UnitKind, str] = {"energy": "kWh", "power": "W", "volume": "m3", "flow": "L/h"}


@dataclass(frozen=True, slots=True)
class Unit:
    code: int
    symbol: str
    kind: UnitKind
    factor: Fraction  # canonical units per unit of this code
    confirmed: bool  # in two or more sources of the standard's table

    def convert(self, value: Fraction) -> Fraction:
        return value * self.factor


def _u(code: int, symbol: str, kind: UnitKind, factor: Fraction | int, confirmed: bool = False) -> Unit:
    return Unit(code, symbol, kind, Fraction(factor), confirmed)


_KWH_PER_J = Fraction(1, 3_600_000)
_W_PER_J_H = Fraction(1, 3600)

UNITS: dict[int, Unit] = {
    u.code: u
    for u in (
        _u(0x01, "J", "energy", _KWH_PER_J, True),
        _u(0x02, "Wh", "energy", Fraction(1, 1000), True),
        _u(0x03, "Wh x10", "energy", Fraction(1, 100)),
        _u(0x04, "Wh x100", "energy", Fraction(1, 10)),
        _u(0x05, "kWh", "energy", 1, True),
        _u(0x06, "kWh x10", "energy", 10),
        _u(0x07, "kWh x100", "energy", 100),
        _u(0x08, "MWh", "energy", 1000, True),
        _u(0x09, "MWh x10", "energy", 10_000),
        _u(0x0A, "MWh x100", "energy", 100_000, True),
        _u(0x0B, "kJ", "energy", 1000 * _KWH_PER_J, True),
        _u(0x0C, "kJ x10", "energy", 10_000 * _KWH_PER_J),
        _u(0x0D, "kJ x100", "energy", 100_000 * _KWH_PER_J),
        _u(0x0E, "MJ", "energy", 10**6 * _KWH_PER_J, True),
        _u(0x0F, "MJ x10", "energy", 10**7 * _KWH_PER_J),
        _u(0x10, "MJ x100", "energy", 10**8 * _KWH_PER_J),
        _u(0x11, "GJ", "energy", 10**9 * _KWH_PER_J, True),
        _u(0x12, "GJ x10", "energy", 10**10 * _KWH_PER_J),
        _u(0x13, "GJ x100", "energy", 10**11 * _KWH_PER_J, True),
        _u(0x14, "W", "power", 1, True),
        _u(0x15, "W x10", "power", 10),
        _u(0x16, "W x100", "power", 100),
        _u(0x17, "kW", "power", 1000, True),
        _u(0x18, "kW x10", "power", 10_000),
        _u(0x19, "kW x100", "power", 100_000),
        _u(0x1A, "MW", "power", 10**6, True),
        _u(0x1B, "MW x10", "power", 10**7),
        _u(0x1C, "MW x100", "power", 10**8),
        _u(0x29, "L", "volume", Fraction(1, 1000), True),
        _u(0x2A, "L x10", "volume", Fraction(1, 100)),
        _u(0x2B, "L x100", "volume", Fraction(1, 10)),
        _u(0x2C, "m3", "volume", 1, True),
        _u(0x2D, "m3 x10", "volume", 10),
        _u(0x2E, "m3 x100", "volume", 100),
        _u(0x32, "L/h", "flow", 1, True),
        _u(0x33, "L/h x10", "flow", 10),
        _u(0x34, "L/h x100", "flow", 100),
        _u(0x35, "m3/h", "flow", 1000, True),
        _u(0x37, "m3/h x100", "flow", 100_000),
        _u(0x40, "J/h", "power", _W_PER_J_H),
        _u(0x43, "kJ/h", "power", 1000 * _W_PER_J_H),
        _u(0x44, "kJ/h x10", "power", 10_000 * _W_PER_J_H),
        _u(0x45, "kJ/h x100", "power", 100_000 * _W_PER_J_H),
        _u(0x46, "MJ/h", "power", 10**6 * _W_PER_J_H),
        _u(0x47, "MJ/h x10", "power", 10**7 * _W_PER_J_H),
        _u(0x48, "MJ/h x100", "power", 10**8 * _W_PER_J_H),
        _u(0x49, "GJ/h", "power", 10**9 * _W_PER_J_H),
        _u(0x4A, "GJ/h x10", "power", 10**10 * _W_PER_J_H),
        _u(0x4B, "GJ/h x100", "power", 10**11 * _W_PER_J_H),
    )
}


def unit_of(code: int, kind: UnitKind) -> Unit | str:
    """The unit for ``code`` if it measures ``kind``, else why not (for an ``Invalid``'s detail)."""
    unit = UNITS.get(code)
    if unit is None:
        return f"unit code 0x{code:02X} is not in the CJ/T 188 unit table"
    if unit.kind != kind:
        return f"unit code 0x{code:02X} ({unit.symbol}) is not a {kind} unit"
    return unit
