"""Sungrow SG string inverter: input registers (FC04), 32-bit values low word first.

Written from SunGather's transcription of Sungrow's "Communication Protocol of PV
Grid-Connected String Inverters" V1.1.37 (the table the ``sungrow-sg`` profile cites), not
from the profile. Sungrow numbers registers from 1; the protocol addresses here are those
numbers minus 1 (register 5004 is address 5003):

========  ========  ==========================  ======  ==================
register  address   meaning                     type    unit
========  ========  ==========================  ======  ==================
5000      4999      device type code            U16
5001      5000      nominal active power        U16     0.1 kW
5003      5002      daily power yields          U16     0.1 kWh
5004      5003      total power yields          U32     kWh
5008      5007      internal temperature        S16     0.1 degC
5017      5016      total DC power              U32     W
5019-21   5018-20   phase A-C voltage           U16     0.1 V
5022-24   5021-23   phase A-C current           U16     0.1 A
5031      5030      total active power          U32     W
5035      5034      power factor                S16     0.001
5036      5035      grid frequency              U16     0.1 Hz
5038      5037      work state                  U16     0 run, 0x1400 standby,
                                                        0x5500 fault
5144      5143      total power yields          U32     0.1 kWh
========  ========  ==========================  ======  ==================

Served runs: addresses 4999-5037 and 5143-5148. A value fault (NaN) shows as work state
0x5500 (fault) with power 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.registers.base import FC_INPUT, Block, Image, Readout, fill
from firmware_sim.registers.encoding import i16, u16, u16_value, u32_value

MODULUS_WH = float(2**32) * 100.0  # 5144 counts 0.1 kWh
RUN, STANDBY, FAULT = 0x0000, 0x1400, 0x5500
DEVICE_TYPE_SG10RT = 0x243C  # a device type code; only information here
NOMINAL_V = 230.0


def low_word_first(words: list[int]) -> list[int]:
    """A 32-bit value's two words as Sungrow sends them (CDAB)."""
    return [words[1], words[0]]


@dataclass(frozen=True)
class SungrowSgMap:
    """An SG string inverter rated ``rated_w`` (three-phase)."""

    rated_w: float

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_INPUT, 4999, 39), Block(FC_INPUT, 5143, 6))

    def render(self, r: Readout) -> Image:
        main, late = self.blocks
        ch = r.main()
        p = ch.power_w
        fault = math.isnan(p)
        p = 0.0 if fault else p
        amps = p / (3 * NOMINAL_V)
        words = {
            4999: u16(DEVICE_TYPE_SG10RT),
            5000: u16_value(self.rated_w / 100.0),
            5002: u16_value(ch.counter_wh / 100.0 % 65_000),  # daily yield: a stand-in
            5003: low_word_first(u32_value(ch.counter_wh / 1000.0)),
            5007: i16(412),
            5016: low_word_first(u32_value(p / 0.97)),
            5030: low_word_first(u32_value(p)),
            5034: i16(1000),
            5035: u16(500),
            5037: u16(FAULT if fault else RUN if p > 0 else STANDBY),
        }
        for ph in range(3):
            words[5018 + ph] = u16(round(NOMINAL_V * 10))
            words[5021 + ph] = u16_value(amps * 10)
        return {
            main: fill(main, words),
            late: fill(late, {5143: low_word_first(u32_value(ch.counter_wh / 100.0)), 5147: u16(5000)}),
        }
