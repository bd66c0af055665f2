"""SunSpec inverter (models 1 + 103) and AC meter (models 1 + 203) at base 40000, FC03.

Layout: 40000 "SunS", 40002 model 1 (66 + 2), 40070 model 103 (50 + 2) or 203 (105 + 2),
then the end marker 0xFFFF with length 0. Integer points carry scale factors; every
point we do not simulate holds its type's "not implemented" value, as real devices do.
Power W is signed: for the meter, positive = import from the grid, negative = export.
Energy counters are acc32 in Wh (scale factor 0), so they wrap at 2**32 Wh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.registers.base import FC_HOLDING, Block, Image, Readout
from firmware_sim.registers.encoding import (
    NOT_IMPL_I16,
    NOT_IMPL_SF,
    NOT_IMPL_U16,
    i16,
    i16_value,
    scaled,
    string,
    u16,
    u16_value,
    u32,
    u32_value,
)

BASE = 40000
COMMON_AT = BASE + 2
MODEL_AT = COMMON_AT + 68
MODULUS_WH = float(2**32)
_SF_103 = {6, 13, 15, 17, 19, 21, 23, 26, 28, 30, 32, 37}
_SF_203 = {6, 15, 17, 22, 27, 32, 37, 54, 71, 104}


def power_sf(max_w: float) -> int:
    """Smallest scale factor >= 0 that fits ``max_w`` in an int16."""
    sf = 0
    while max_w / 10.0**sf > 32000:
        sf += 1
    return sf


def common_model(unit: int, model: str, serial: int) -> list[int]:
    """Model 1 with its 2 header words (68 registers)."""
    body = [
        *string("PuhuiSim", 16),
        *string(model, 16),
        *string("", 8),
        *string("1.0.0", 8),
        *string(f"SIM{serial:08d}", 16),
        *u16(unit),
        NOT_IMPL_I16,  # pad
    ]
    return [1, 66, *body]


def _acc32(wh: float) -> list[int]:
    # acc32 0 means "not implemented", so NaN shows as 0 (and so does a real zero).
    return u32_value(wh, nan=[0, 0]) if not math.isinf(wh) else u32(0xFFFFFFFE)


@dataclass(frozen=True)
class InverterMap:
    """SunSpec three-phase inverter, model 103."""

    rated_w: float
    model_name: str = "PV-Inverter"

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_HOLDING, BASE, 2 + 68 + 52 + 2),)

    def render(self, r: Readout) -> Image:
        model = self._model_103(r)
        regs = [0x5375, 0x6E53, *common_model(r.unit, self.model_name, r.serial), *model]
        return {self.blocks[0]: [*regs, 0xFFFF, 0]}

    def _model_103(self, r: Readout) -> list[int]:
        ch = r.main()
        w_sf = power_sf(self.rated_w)
        m = [NOT_IMPL_U16] * 52
        m[0:2] = [103, 50]
        for off in _SF_103:
            m[off] = NOT_IMPL_SF
        p = ch.power_w
        amps = abs(p) / (3 * 230.0) if not math.isnan(p) else math.nan
        m[2:7] = [*u16_value(amps * 100 * 3), *(u16_value(amps * 100) * 3), *i16(-2)]
        m[10:14] = [*(u16_value(2300.0) * 3), *i16(-1)]
        m[14:16] = [*i16_value(p / 10.0**w_sf), *i16(w_sf)]
        m[16:18] = [*u16(5000), *i16(-2)]
        m[18:20] = [*i16_value(p / 10.0**w_sf), *i16(w_sf)]
        m[20:24] = [*i16(0), *i16(0), *i16(100), *i16(0)]
        m[24:27] = [*_acc32(ch.counter_wh), *i16(0)]
        m[31:33] = [*i16_value(p / 0.97 / 10.0**w_sf), *i16(w_sf)]
        m[33:38] = [*i16(scaled(45.0, 0)), NOT_IMPL_I16, NOT_IMPL_I16, NOT_IMPL_I16, 0]
        m[38] = 4 if p > 0 else 2  # St: MPPT while producing, SLEEPING otherwise
        m[40:44] = [0, 0, 0, 0]  # Evt1, Evt2: no events
        return m


@dataclass(frozen=True)
class AcMeterMap:
    """SunSpec three-phase wye meter, model 203 (import and export counters)."""

    rated_w: float
    model_name: str = "AC-Meter-3P"

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_HOLDING, BASE, 2 + 68 + 107 + 2),)

    def render(self, r: Readout) -> Image:
        model = self._model_203(r)
        regs = [0x5375, 0x6E53, *common_model(r.unit, self.model_name, r.serial), *model]
        return {self.blocks[0]: [*regs, 0xFFFF, 0]}

    def _model_203(self, r: Readout) -> list[int]:
        ch = r.main()
        w_sf = power_sf(self.rated_w)
        m = [NOT_IMPL_I16] * 107
        m[0:2] = [203, 105]
        for off in _SF_203:
            m[off] = NOT_IMPL_SF
        m[38:105] = [0] * 67  # acc32 not implemented = 0
        p = ch.power_w
        amps = abs(p) / (3 * 230.0) if not math.isnan(p) else math.nan
        m[2:7] = [*i16_value(amps * 300), *(i16_value(amps * 100) * 3), *i16(-2)]
        m[7:11] = [*(i16_value(2300.0) * 4)]
        m[15] = i16(-1)[0]
        m[16:18] = [*i16(5000), *i16(-2)]
        m[18:23] = [*i16_value(p / 10.0**w_sf), *(i16_value(p / 3 / 10.0**w_sf) * 3), *i16(w_sf)]
        m[38:40] = _acc32(ch.reverse_counter_wh)
        m[46:48] = _acc32(ch.counter_wh)
        m[54] = 0
        m[105:107] = [0, 0]
        return m
