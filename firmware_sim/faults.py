"""Per-device fault state, switchable at run time (Python API and control endpoint).

Persistent faults stay on until switched off; ``probability`` makes the request-level
ones (timeout, exception, drop) intermittent, drawn from a per-device seeded stream.
One-shot faults (counter reset, rollover) are device methods, not state, because they
happen once: see :meth:`firmware_sim.device.Device.reset_counter`.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ExceptionFault = Literal["busy", "illegal_address"]
ValueFault = Literal["nan", "absurd"]

# Modbus exception codes sent for each ExceptionFault.
EXCEPTION_CODES: dict[str, int] = {"busy": 0x06, "illegal_address": 0x02}
ABSURD_POWER_W = -1.0e9
ABSURD_ENERGY_WH = 1.0e12


class FaultState(BaseModel):
    """What is currently wrong with a device. All off by default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    timeout: bool = False  # Modbus: requests get no reply
    exception: ExceptionFault | None = None  # Modbus: exception reply instead of data
    drop_connection: bool = False  # Modbus TCP: close the connection on each request
    value: ValueFault | None = None  # power and energy read NaN (or not-implemented) / absurd
    mqtt_malformed: bool = False  # MQTT: truncated, non-JSON payloads
    mqtt_duplicate: bool = False  # MQTT: every message published twice
    clock_jump_s: float = 0.0  # MQTT: payload timestamps shifted by this many seconds
    probability: float = Field(default=1.0, ge=0.0, le=1.0)

    def any_active(self) -> bool:
        return self != FaultState()


class FaultSwitch:
    """A device's fault state plus the random stream that decides intermittent faults."""

    def __init__(self, seed: int) -> None:
        self.state = FaultState()
        self._rng = random.Random(seed ^ 0x5EED)

    def set(self, **changes: object) -> FaultState:
        """Switch faults on or off; unknown names and bad values raise ``ValidationError``."""
        self.state = FaultState.model_validate({**self.state.model_dump(), **changes})
        return self.state

    def clear(self) -> FaultState:
        self.state = FaultState()
        return self.state

    def fires(self) -> bool:
        """Whether a request-level fault applies to this request."""
        p = self.state.probability
        return p >= 1.0 or self._rng.random() < p
