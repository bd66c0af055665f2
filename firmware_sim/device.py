"""A simulated device: physics + exact meters + a register map or MQTT payloads + faults.

Built from a :class:`~firmware_sim.config.DeviceSpec` by :func:`build_device`, served by
:mod:`firmware_sim.modbus_server` or :mod:`firmware_sim.mqtt`. The device itself does no
I/O; everything is advanced lazily to the clock time a request or publish asks for.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.errors import UnknownChannelError
from firmware_sim.faults import ABSURD_ENERGY_WH, ABSURD_POWER_W, EXCEPTION_CODES, FaultState, FaultSwitch
from firmware_sim.meter import GroundTruth, Meter
from firmware_sim.registers.base import ChannelView, Image, Readout, UnitMap


@dataclass
class Endpoint:
    """Where a device is served. ``port`` for Modbus TCP, ``rtu_path`` for RTU, ``topic`` MQTT;
    on a shared line (transport "line"): ``line``, and ``host``/``port`` of its simulated serial
    server or ``rtu_path`` of its pty, with ``unit`` (Modbus) or ``address`` (DL/T 645)."""

    transport: str  # "tcp", "rtu", "mqtt" or "line"
    host: str | None = None
    port: int | None = None
    unit: int | None = None
    units: tuple[int, ...] = ()
    rtu_path: str | None = None
    topic: str | None = None
    line: str | None = None
    address: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, ())}


@dataclass(eq=False)
class Device:
    """One simulated device. Public API for tests: ``endpoint``, ``faults``, ``set_faults``,
    ``clear_faults``, ``reset_counter``, ``rollover``, ``ground_truth``, ``request_count``."""

    name: str
    kind: str
    site: str
    seed: int
    serial: int
    meters: dict[str, Meter]
    units: dict[int, UnitMap]
    endpoint: Endpoint
    rollover_margin_wh: float = 1000.0
    requests_by_unit: Counter[int] = field(default_factory=Counter)
    publish_count: int = 0
    _switch: FaultSwitch = field(init=False)

    def __post_init__(self) -> None:
        self._switch = FaultSwitch(self.seed)

    # -- faults -----------------------------------------------------------------------
    @property
    def faults(self) -> FaultState:
        """Current fault state (read-only snapshot; change it with :meth:`set_faults`)."""
        return self._switch.state

    def set_faults(self, **changes: Any) -> FaultState:
        """Switch faults on/off, e.g. ``set_faults(timeout=True)``, ``set_faults(value=None)``."""
        return self._switch.set(**changes)

    def clear_faults(self) -> FaultState:
        return self._switch.clear()

    def fault_fires(self) -> bool:
        return self._switch.fires()

    def exception_code(self) -> int | None:
        """Modbus exception code to answer this request with, if a fault says so."""
        exc = self.faults.exception
        return EXCEPTION_CODES[exc] if exc is not None and self.fault_fires() else None

    def reset_counter(self, channel: str | None = None, now: float | None = None) -> None:
        """Meter replaced: the visible counter restarts at 0 (ground truth logs ``reset``)."""
        self._advance_if(now)
        self.meter(channel).reset()

    def rollover(
        self, channel: str | None = None, margin_wh: float | None = None, now: float | None = None
    ) -> None:
        """Set the visible counter just below its wrap so that it rolls over soon."""
        self._advance_if(now)
        margin = self.rollover_margin_wh if margin_wh is None else margin_wh
        self.meter(channel).rollover(margin)

    # -- state ------------------------------------------------------------------------
    @property
    def request_count(self) -> int:
        """Modbus requests received (all units), including ones a fault left unanswered."""
        return sum(self.requests_by_unit.values())

    def count_request(self, unit: int) -> None:
        self.requests_by_unit[unit] += 1

    def meter(self, channel: str | None = None) -> Meter:
        if channel is None:
            return next(iter(self.meters.values()))
        try:
            return self.meters[channel]
        except KeyError:
            raise UnknownChannelError(f"{self.name} has no channel {channel!r}") from None

    def refresh(self, now: float) -> None:
        """Integrate every meter up to clock time ``now``."""
        for m in self.meters.values():
            m.advance_to(now)

    def ground_truth(self, channel: str | None = None) -> GroundTruth:
        """Energy per interval and counters at interval boundaries, up to the last step."""
        return self.meter(channel).ground_truth()

    def readout(self, unit: int, now: float) -> Readout:
        """What the device shows at ``now``, with value faults applied."""
        self.refresh(now)
        fault = self.faults.value
        views = {name: _view(m, fault) for name, m in self.meters.items()}
        t = next(iter(self.meters.values())).t
        return Readout(t=t, unit=unit, serial=self.serial, channels=views)

    def render(self, unit: int, now: float) -> Image:
        return self.units[unit].render(self.readout(unit, now))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "site": self.site,
            "channels": {n: m.quantity for n, m in self.meters.items()},
            **self.endpoint.to_dict(),
        }

    def _advance_if(self, now: float | None) -> None:
        if now is not None:
            self.refresh(now)


def _view(m: Meter, fault: str | None) -> ChannelView:
    if fault == "nan":
        return ChannelView(math.nan, math.nan, math.nan, m.sample)
    if fault == "absurd":
        return ChannelView(ABSURD_POWER_W, ABSURD_ENERGY_WH, ABSURD_ENERGY_WH, m.sample)
    p_mw = round(m.sample.power_w * 1000.0)  # the power that is being integrated
    return ChannelView(p_mw / 1000.0, m.counter_wh(), m.reverse_counter_wh(), m.sample)
