"""Eastron SDM630 / SDM120: input registers (FC04), float32 big-endian, kWh and W.

Serial number at holding register 0xFC00 (uint32). Unimplemented parameters inside the
served ranges read 0.0; addresses outside them get "illegal data address".
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_sim.registers.base import FC_HOLDING, FC_INPUT, Block, Image, Readout, fill
from firmware_sim.registers.encoding import f32, u32

VOLTAGE_L1, CURRENT_L1, POWER_L1 = 0x0000, 0x0006, 0x000C
TOTAL_POWER, FREQUENCY = 0x0034, 0x0046
IMPORT_KWH, EXPORT_KWH, TOTAL_KWH = 0x0048, 0x004A, 0x0156
SERIAL = 0xFC00
# Float32 kWh on a six-digit register: the counter wraps at 100 000 kWh (rollover fault).
MODULUS_WH = 100_000_000.0
NOMINAL_V = 230.0


@dataclass(frozen=True)
class EastronMap:
    """``phases`` 3 = SDM630, 1 = SDM120."""

    phases: int

    @property
    def blocks(self) -> tuple[Block, ...]:
        measure = (
            (Block(FC_INPUT, 0x0000, 0x4C),)
            if self.phases == 3
            else (Block(FC_INPUT, 0x0000, 0x20), Block(FC_INPUT, 0x0046, 0x06))
        )
        return (*measure, Block(FC_INPUT, TOTAL_KWH, 2), Block(FC_HOLDING, SERIAL, 2))

    def render(self, r: Readout) -> Image:
        ch = r.main()
        p = ch.power_w
        imp, exp = ch.counter_wh / 1000.0, ch.reverse_counter_wh / 1000.0
        per_phase = p / self.phases
        current = abs(per_phase) / NOMINAL_V
        words: dict[int, list[int]] = {FREQUENCY: f32(50.0), IMPORT_KWH: f32(imp)}
        words[EXPORT_KWH] = f32(exp)
        for ph in range(self.phases):
            words[VOLTAGE_L1 + 2 * ph] = f32(NOMINAL_V)
            words[CURRENT_L1 + 2 * ph] = f32(current)
            words[POWER_L1 + 2 * ph] = f32(per_phase)
        if self.phases == 3:
            words[TOTAL_POWER] = f32(p)
        image: Image = {}
        for block in self.blocks:
            if block.start == TOTAL_KWH:
                image[block] = f32(imp + exp)
            elif block.start == SERIAL:
                image[block] = u32(r.serial)
            else:
                image[block] = fill(block, {a: w for a, w in words.items() if _inside(block, a)})
        return image


def _inside(block: Block, address: int) -> bool:
    return block.start <= address < block.start + block.length
