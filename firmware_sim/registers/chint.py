"""CHINT DTSU666 (three-phase) and DDSU666 (single-phase) Modbus maps, float32 ABCD.

Written from the tables the ``chint-dtsu666`` / ``chint-ddsu666`` profiles cite (not from
the profiles, so a profile test reads an independent map):

- DTSU666: holding registers (FC03). 2006H-200AH phase voltages in 0.1 V, 200CH-2010H
  currents in 0.001 A, 2012H total and 2014H-2018H phase active power in 0.1 W, 202AH power
  factor in 0.001, 2044H frequency in 0.01 Hz (the 2000H block, 70 registers, all served);
  101EH import and 1028H export active energy in kWh. Power is signed: positive forward.
- DDSU666: input registers (FC04). 2000H voltage V, 2002H current A, 2004H active power kW,
  2006H reactive power kvar, 200AH power factor, 200EH frequency Hz (2000H-200FH served);
  4000H import and 400AH export energy kWh.

A float32 kWh counter is shown with float32's resolution (0.0625 kWh above 1 000 000 kWh);
the simulated counter wraps at 1 000 000 kWh (a six-digit display).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.registers.base import FC_HOLDING, FC_INPUT, Block, Image, Readout, fill
from firmware_sim.registers.encoding import f32

MODULUS_WH = 1.0e9
NOMINAL_V = 230.0
POWER_FACTOR = 0.98
# DTSU666
DTSU_BLOCK, DTSU_IMPORT, DTSU_EXPORT = 0x2000, 0x101E, 0x1028
UA, IA, PT, PA, PFT, FREQ = 0x2006, 0x200C, 0x2012, 0x2014, 0x202A, 0x2044
# DDSU666
DDSU_BLOCK, DDSU_IMPORT, DDSU_EXPORT = 0x2000, 0x4000, 0x400A
VOLTS, AMPS, WATTS, VARS, PF, HZ = 0x2000, 0x2002, 0x2004, 0x2006, 0x200A, 0x200E


def _amps(power_w: float, phases: int) -> float:
    return abs(power_w) / phases / NOMINAL_V if not math.isnan(power_w) else math.nan


@dataclass(frozen=True)
class Dtsu666Map:
    """DTSU666, three-phase four-wire."""

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (
            Block(FC_HOLDING, DTSU_BLOCK, 0x46),
            Block(FC_HOLDING, DTSU_IMPORT, 2),
            Block(FC_HOLDING, DTSU_EXPORT, 2),
        )

    def render(self, r: Readout) -> Image:
        measure, imp, exp = self.blocks
        ch = r.main()
        p, amps = ch.power_w, _amps(ch.power_w, 3)
        words: dict[int, list[int]] = {PT: f32(p * 10), PFT: f32(POWER_FACTOR * 1000), FREQ: f32(50.0 * 100)}
        for ph in range(3):
            words[UA + 2 * ph] = f32(NOMINAL_V * 10)
            words[IA + 2 * ph] = f32(amps * 1000)
            words[PA + 2 * ph] = f32(p / 3 * 10)
        return {
            measure: fill(measure, words),
            imp: f32(ch.counter_wh / 1000.0),
            exp: f32(ch.reverse_counter_wh / 1000.0),
        }


@dataclass(frozen=True)
class Ddsu666Map:
    """DDSU666, single-phase."""

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (
            Block(FC_INPUT, DDSU_BLOCK, 0x10),
            Block(FC_INPUT, DDSU_IMPORT, 2),
            Block(FC_INPUT, DDSU_EXPORT, 2),
        )

    def render(self, r: Readout) -> Image:
        measure, imp, exp = self.blocks
        ch = r.main()
        p = ch.power_w
        q = p * math.tan(math.acos(POWER_FACTOR))
        words = {
            VOLTS: f32(NOMINAL_V), AMPS: f32(_amps(p, 1)), WATTS: f32(p / 1000.0), VARS: f32(q / 1000.0),
            PF: f32(POWER_FACTOR), HZ: f32(50.0),
        }  # fmt: skip
        return {
            measure: fill(measure, words),
            imp: f32(ch.counter_wh / 1000.0),
            exp: f32(ch.reverse_counter_wh / 1000.0),
        }
