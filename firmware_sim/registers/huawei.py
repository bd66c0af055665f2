"""Huawei SUN2000 inverter: holding registers (FC03), big-endian integers with a gain.

Written from huawei-solar-lib's transcription of Huawei's "Solar Inverter Modbus Interface
Definitions" (the table the ``huawei-sun2000`` profile cites), not from the profile:

=============  =========================  ======  ===================================
register       meaning                    type    gain / unit
=============  =========================  ======  ===================================
30000          model name                 STR 15
30015          serial number              STR 10
30073          rated power                U32     W
32000          state 1 (bits)             U16     bit 0 standby, 1 grid-connected,
                                                  6 stop due to faults
32008-32010    alarm 1-3 (bits)           U16     0: no alarm
32064          input (DC) power           I32     W
32069-32071    phase A-C voltage          U16     10 (0.1 V)
32072-32077    phase A-C current          I32     1000 (mA)
32080          active power               I32     W
32084          power factor               I16     1000
32085          grid frequency             U16     100
32087          internal temperature       I16     10
32089          device status              U16     0x0200 on-grid, 0x0002 standby
                                                  (no irradiation), 0x0300 fault
32090          fault code                 U16
32106          accumulated energy yield   U32     100 (0.01 kWh)
32114          daily energy yield         U32     100 (0.01 kWh)
=============  =========================  ======  ===================================

Served runs: 30000-30074, 32000-32010, 32064-32119 (registers inside them that the table
does not name read 0). The accumulated yield wraps at 2^32 x 0.01 kWh. A value fault
(NaN) shows as a fault stop: state 1 bit 6, device status 0x0300, fault code 2001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.registers.base import FC_HOLDING, Block, Image, Readout, fill
from firmware_sim.registers.encoding import i16, i32_value, string, u16, u32, u32_value

MODULUS_WH = float(2**32) * 10.0  # 0.01 kWh = 10 Wh per count
IDENTITY, STATE, MEASURE = 30000, 32000, 32064
STATUS_ON_GRID, STATUS_STANDBY, STATUS_FAULT = 0x0200, 0x0002, 0x0300
FAULT_CODE = 2001
NOMINAL_V = 230.0


@dataclass(frozen=True)
class Sun2000Map:
    """A SUN2000 rated ``rated_w`` (three-phase)."""

    rated_w: float
    model_name: str = "SUN2000-10KTL-M1"

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_HOLDING, IDENTITY, 75), Block(FC_HOLDING, STATE, 11), Block(FC_HOLDING, MEASURE, 56))

    def render(self, r: Readout) -> Image:
        identity, state, measure = self.blocks
        ch = r.main()
        p = ch.power_w
        fault = math.isnan(p)
        ids = {30000: string(self.model_name, 15), 30015: string(f"HV{r.serial:010d}", 10),
               30073: u32(round(self.rated_w))}  # fmt: skip
        bits = (1 << 6) if fault else (1 << 1) if p > 0 else 1
        status = STATUS_FAULT if fault else STATUS_ON_GRID if p > 0 else STATUS_STANDBY
        return {
            identity: fill(identity, ids),
            state: fill(state, {32000: u16(bits)}),
            measure: fill(measure, self._measure(p, ch.counter_wh, fault, status)),
        }

    def _measure(self, p: float, counter_wh: float, fault: bool, status: int) -> dict[int, list[int]]:
        amps = abs(p) / (3 * NOMINAL_V) if not fault else math.nan
        words = {
            32064: i32_value(p / 0.97),
            32080: i32_value(p),
            32084: i16(1000),
            32085: u16(5000),
            32087: i16(412),
            32089: u16(status),
            32090: u16(FAULT_CODE if fault else 0),
            32106: u32_value(counter_wh / 10.0),
            32114: u32_value(counter_wh / 10.0 % 100_000),  # a day's worth, not modelled: a stand-in
        }
        for ph in range(3):
            words[32069 + ph] = u16(round(NOMINAL_V * 10))
            words[32072 + 2 * ph] = i32_value(amps * 1000)
        return words
