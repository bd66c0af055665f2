"""The config of an M-Bus heat meter: which line, which address, which quantities.

The gateway's site config joins these fields to its common meter fields (id, scenario,
nameplate, counts) as ``driver: mbus``; see README.md for a sample. Validation does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.mbus.client import Target
from drivers.mbus.frame import MAX_PRIMARY, SecondaryAddress

QuantityKind = Literal["counter", "gauge", "info"]


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    unit: str
    kind: QuantityKind


# Named and united as the CJ/T 188 driver and the heat-meter-converter profile name them,
# so the clean-heating methodology reads ``heat_energy`` (kWh) unchanged.
QUANTITIES: dict[str, QuantitySpec] = {
    "heat_energy": QuantitySpec("kWh", "counter"),
    "volume": QuantitySpec("m3", "counter"),
    "power": QuantitySpec("W", "gauge"),
    "flow_rate": QuantitySpec("L/h", "gauge"),
    "flow_temperature": QuantitySpec("degC", "gauge"),
    "return_temperature": QuantitySpec("degC", "gauge"),
    "status": QuantitySpec("", "info"),
}
DEFAULT_QUANTITIES = ("heat_energy", "power", "flow_rate", "flow_temperature", "return_temperature", "volume")


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MbusPolicy(Closed):
    """Timeout, retries and breaker of one meter on a shared line."""

    timeout_s: float = Field(default=2.0, gt=0, le=30, description="per frame exchanged, on the line")
    retries: int = Field(default=1, ge=0, le=5)
    backoff_base_s: float = Field(default=0.5, ge=0, description="clock seconds")
    backoff_max_s: float = Field(default=10.0, ge=0)
    breaker_threshold: int = Field(default=3, ge=1, description="consecutive failed polls that open it")
    breaker_cooldown_s: float = Field(default=300.0, ge=0, description="clock seconds before a probe")


class MbusConnection(Closed):
    """Where the meter hangs and how it is addressed (primary or secondary address)."""

    line: str = Field(min_length=1, description="id of the line (serial port or serial server) it is on")
    address: int | None = Field(default=None, ge=0, le=MAX_PRIMARY, description="primary address 0-250")
    secondary_address: str | None = Field(
        default=None, description="identification number, e.g. '12345678' (or 16 hex: + manufacturer...)"
    )

    @field_validator("secondary_address")
    @classmethod
    def _secondary(cls, value: str | None) -> str | None:
        if value is not None:
            SecondaryAddress(value)  # raises ValueError naming the value
        return value

    @model_validator(mode="after")
    def _one_address(self) -> MbusConnection:
        if (self.address is None) == (self.secondary_address is None):
            raise ValueError("give address (primary, 0-250) or secondary_address, not both")
        return self

    @property
    def target(self) -> Target:
        secondary = SecondaryAddress(self.secondary_address) if self.secondary_address else None
        return Target(self.address, secondary)


class MbusMeterSettings(Closed):
    """The M-Bus part of a meter entry (the gateway adds id, scenario, nameplate, counts)."""

    connection: MbusConnection
    quantities: tuple[str, ...] = Field(default=DEFAULT_QUANTITIES, min_length=1)
    poll_s: float = Field(default=60.0, gt=0, description="seconds between reads")
    policy: MbusPolicy = Field(default_factory=MbusPolicy)

    @field_validator("quantities")
    @classmethod
    def _known(cls, quantities: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: not an M-Bus heat meter quantity ({', '.join(QUANTITIES)})"
            )
        twice = sorted({q for q in quantities if quantities.count(q) > 1})
        if twice:
            raise ValueError(f"{', '.join(map(repr, twice))} listed more than once")
        return quantities
