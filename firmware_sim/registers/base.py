"""What a register map is: blocks of registers and a renderer from a device readout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from firmware_sim.physics.sample import Sample

FC_COIL = 1
FC_DISCRETE = 2
FC_HOLDING = 3
FC_INPUT = 4
BIT_TABLES = frozenset({FC_COIL, FC_DISCRETE})


@dataclass(frozen=True, slots=True)
class Block:
    """A run of valid addresses in one table (1 = coils, 2 = discrete inputs, 3 = holding,
    4 = input registers). A bit table's image holds one 0/1 per address."""

    fc: int
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class ChannelView:
    """One energy channel as the device shows it right now (faults already applied)."""

    power_w: float
    counter_wh: float
    reverse_counter_wh: float
    sample: Sample


@dataclass(frozen=True, slots=True)
class Readout:
    """Everything a register map may show at one instant."""

    t: float  # simulated time of the reading
    unit: int
    serial: int
    channels: Mapping[str, ChannelView]

    def main(self) -> ChannelView:
        return next(iter(self.channels.values()))


Image = dict[Block, list[int]]


class UnitMap(Protocol):
    """The register map behind one Modbus unit id."""

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The valid register runs of this unit."""
        ...

    def render(self, r: Readout) -> Image:
        """Register values for every block (each list exactly ``block.length`` long)."""
        ...


def fill(block: Block, words: Mapping[int, list[int]], default: int = 0) -> list[int]:
    """A block's registers from ``{address: words}``, other registers ``default``."""
    regs = [default] * block.length
    for address, values in words.items():
        off = address - block.start
        if off < 0 or off + len(values) > block.length:
            raise ValueError(f"register {address} (+{len(values)}) outside block {block}")
        regs[off : off + len(values)] = values
    return regs
