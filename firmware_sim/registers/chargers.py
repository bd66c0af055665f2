"""EV chargers: an Alfen-like station (lifetime float64 Wh) and an ABB-like one (per session).

Alfen-like (FC03, big-endian): unit 200 = station (identity, clock, socket count),
units 1 and 2 = sockets. Socket energy delivered sum at 374 is float64 Wh and lifetime;
unavailable registers inside the served ranges read 0xFFFF.

ABB-like (FC03): 0x4000-0x401F, uint32 words; currents in mA, voltages in 0.1 V,
active power W at 0x401C, energy delivered Wh at 0x401E *for the current session*
(it restarts at 0 when a car arrives).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

from firmware_sim.registers.base import FC_HOLDING, Block, Image, Readout, fill
from firmware_sim.registers.encoding import f32, f64, i16, string, u16, u32, u32_value

ALFEN_STATION_UNIT = 200
ALFEN_MODULUS_WH = 1.0e12  # float64 Wh; rollover fault wraps at 1e9 kWh
ABB_MODULUS_WH = float(2**32)
NOMINAL_V = 230.0
LOCAL_TZ = datetime.timezone(datetime.timedelta(hours=8))

ALFEN_POWER_SUM = 344
ALFEN_ENERGY_SUM = 374
ALFEN_MODE3 = 1201


def _phase_current(p: float) -> float:
    return abs(p) / (3 * NOMINAL_V) if not math.isnan(p) else math.nan


@dataclass(frozen=True)
class AlfenStationMap:
    """Unit 200: station information."""

    sockets: int

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_HOLDING, 100, 78), Block(FC_HOLDING, 1100, 6))

    def render(self, r: Readout) -> Image:
        info, status = self.blocks
        now = datetime.datetime.fromtimestamp(r.t, LOCAL_TZ)
        clock = [now.year, now.month, now.day, now.hour, now.minute, now.second]
        words = {
            100: string("PuhuiSim charging station", 17),
            117: string("Alfen NV", 5),
            122: i16(1),
            123: string("6.4.0-sim", 17),
            140: string("NG920", 17),
            157: string(f"ACE{r.serial:07d}", 11),
            168: [v & 0xFFFF for v in clock],
            174: [0, 0, *u32(int(r.t) % 2**32)],
        }
        state = {1100: f32(32.0), 1102: f32(30.0), 1104: u16(1), 1105: u16(self.sockets)}
        return {info: fill(info, words, 0xFFFF), status: fill(status, state, 0xFFFF)}


@dataclass(frozen=True)
class AlfenSocketMap:
    """Units 1 and 2: one socket's meter and mode-3 state."""

    channel: str
    power_limit_kw: float

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_HOLDING, 300, 78), Block(FC_HOLDING, 1200, 16))

    def render(self, r: Readout) -> Image:
        meter, mode3 = self.blocks
        ch = r.channels[self.channel]
        p, wh = ch.power_w, ch.counter_wh
        amps = _phase_current(p)
        words = {300: u16(3), 301: [0, 0, *u32(int(r.t) % 2**32)], 305: u16(0)}
        for ph in range(3):
            words[306 + 2 * ph] = f32(NOMINAL_V)
            words[312 + 2 * ph] = f32(400.0)
            words[320 + 2 * ph] = f32(amps)
            words[338 + 2 * ph] = f32(p / 3)
            words[362 + 4 * ph] = f64(wh / 3)
        words[328] = f32(amps * 3)
        words[ALFEN_POWER_SUM] = f32(p)
        words[ALFEN_ENERGY_SUM] = f64(wh)
        state = ch.sample.ev_state or "A"
        limit_a = self.power_limit_kw * 1000.0 / (3 * NOMINAL_V)
        m3 = {1200: u16(1), ALFEN_MODE3: string(state, 5), 1206: f32(limit_a), 1215: u16(3)}
        return {meter: fill(meter, words, 0xFFFF), mode3: fill(mode3, m3, 0xFFFF)}


ABB_STATES = {"A": 0, "B1": 2, "C2": 4}


@dataclass(frozen=True)
class AbbMap:
    """ABB Terra AC-like charger; energy at 0x401E is per session."""

    power_limit_kw: float

    @property
    def blocks(self) -> tuple[Block, ...]:
        return (Block(FC_HOLDING, 0x4000, 0x20),)

    def render(self, r: Readout) -> Image:
        (block,) = self.blocks
        ch = r.main()
        p = ch.power_w
        milliamps = _phase_current(p) * 1000.0
        limit_ma = self.power_limit_kw * 1e6 / (3 * NOMINAL_V)
        words = {
            0x4000: [0, 0, *u32(r.serial)],
            0x4004: u32(0x0105),
            0x4006: u32(32000),
            0x4008: u32(0),
            0x400A: u32(1),
            0x400C: u32(ABB_STATES.get(ch.sample.ev_state or "A", 0)),
            0x400E: u32_value(limit_ma),
            0x401C: u32_value(p),
            0x401E: u32_value(ch.counter_wh),
        }
        for ph in range(3):
            words[0x4010 + 2 * ph] = u32_value(milliamps)
            words[0x4016 + 2 * ph] = u32(2300)
        return {block: fill(block, words)}
