"""Heat meter behind an M-Bus to Modbus converter: the ``puhui-hm1`` map (FC03, big-endian).

============  =====================  =======  ============================================
address       quantity               type     unit / meaning
============  =====================  =======  ============================================
0x0000-0001   heat energy (lifetime)  uint32  Wh; wraps at 2**32 Wh; 0xFFFFFFFF = invalid
0x0002-0003   heat power              int32   W
0x0004        flow temperature        int16   0.01 °C
0x0005        return temperature      int16   0.01 °C
0x0006-0007   volume flow rate        uint32  L/h
0x0008        status                  uint16  bit 0: value error, bit 1: no flow
0x0009-000A   serial number           uint32
0x000B-000C   heat energy (lifetime)  float32 kWh (same counter, for float-only gateways)
============  =====================  =======  ============================================

Bits (for masters that read alarms with function 1 and 2):

============  =========================================================================
address       meaning
============  =========================================================================
coil 0        M-Bus polling of the meter enabled (the converter's setting; reads 1)
discrete 0    value error (status bit 0)
discrete 1    no flow (status bit 1)
============  =========================================================================

Register addresses outside 0x0000-0x000C answer "illegal data address".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.registers.base import FC_COIL, FC_DISCRETE, FC_HOLDING, Block, Image, Readout, fill
from firmware_sim.registers.encoding import f32, i16_value, i32_value, u16, u32, u32_value

HEAT_ENERGY_WH = 0x0000
HEAT_POWER_W = 0x0002
FLOW_TEMP = 0x0004
RETURN_TEMP = 0x0005
FLOW_RATE_LH = 0x0006
STATUS = 0x0008
SERIAL = 0x0009
HEAT_ENERGY_KWH_F32 = 0x000B
COIL_POLLING = 0
DISCRETE_VALUE_ERROR, DISCRETE_NO_FLOW = 0, 1
MODULUS_WH = float(2**32)


@dataclass(frozen=True)
class HeatMeterMap:
    """The ``puhui-hm1`` converter map."""

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_HOLDING, 0x0000, 0x0D), Block(FC_COIL, COIL_POLLING, 1), Block(FC_DISCRETE, 0, 2))

    def render(self, r: Readout) -> Image:
        block, coils, discrete = self.blocks
        ch = r.main()
        s = ch.sample
        bad = math.isnan(ch.power_w) or math.isnan(ch.counter_wh)
        flow = s.flow_m3h or 0.0
        status = (1 if bad else 0) | (2 if flow <= 0.0 else 0)
        words = {
            HEAT_ENERGY_WH: u32_value(ch.counter_wh),
            HEAT_POWER_W: i32_value(ch.power_w),
            FLOW_TEMP: i16_value((s.flow_c or 0.0) * 100),
            RETURN_TEMP: i16_value((s.return_c or 0.0) * 100),
            FLOW_RATE_LH: u32_value(flow * 1000.0),
            STATUS: u16(status),
            SERIAL: u32(r.serial),
            HEAT_ENERGY_KWH_F32: f32(ch.counter_wh / 1000.0),
        }
        return {block: fill(block, words), coils: [1], discrete: [status & 1, status >> 1 & 1]}
