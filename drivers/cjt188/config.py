"""The config of a CJ/T 188 heat meter: which line, which address, which quantities.

The gateway's site config joins these fields to its common meter fields (id, scenario,
nameplate, counts) as ``driver: cjt188``; see README.md for a sample. Validation does no
I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.cjt188.frame import COOLING_METER, HEAT_METER, Address, IdentifierOrder

QuantityKind = Literal["counter", "gauge", "info"]


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    unit: str
    kind: QuantityKind


# What a CJ/T 188 heat meter yields, named and united as the heat-meter-converter profile
# names them (so the clean-heating methodology reads ``heat_energy`` unchanged), heat in kWh.
QUANTITIES: dict[str, QuantitySpec] = {
    "heat_energy": QuantitySpec("kWh", "counter"),
    "cooling_energy": QuantitySpec("kWh", "counter"),
    "volume": QuantitySpec("m3", "counter"),
    "operating_hours": QuantitySpec("h", "counter"),
    "power": QuantitySpec("W", "gauge"),
    "flow_rate": QuantitySpec("L/h", "gauge"),
    "flow_temperature": QuantitySpec("degC", "gauge"),
    "return_temperature": QuantitySpec("degC", "gauge"),
    "status": QuantitySpec("", "info"),
}
DEFAULT_QUANTITIES = ("heat_energy", "power", "flow_rate", "flow_temperature", "return_temperature", "volume")
METER_TYPES = {"heat": HEAT_METER, "cooling": COOLING_METER}


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cjt188Policy(Closed):
    """Timeout, retries and breaker of one meter on a shared line."""

    timeout_s: float = Field(default=2.0, gt=0, le=30, description="per request, on the line")
    retries: int = Field(default=1, ge=0, le=5)
    backoff_base_s: float = Field(default=0.5, ge=0, description="clock seconds")
    backoff_max_s: float = Field(default=10.0, ge=0)
    breaker_threshold: int = Field(default=3, ge=1, description="consecutive failed polls that open it")
    breaker_cooldown_s: float = Field(default=300.0, ge=0, description="clock seconds before a probe")


class Cjt188Connection(Closed):
    """Where the meter hangs and how it frames requests."""

    line: str = Field(min_length=1, description="id of the line (serial port or serial server) it is on")
    address: str = Field(description="14 digits as on the nameplate, e.g. '00000012345678'")
    meter_type: Literal["heat", "cooling"] = "heat"
    identifier_order: IdentifierOrder = Field(default="90 1F", description="'1F 90' for 2018-text meters")
    preamble: int = Field(default=2, ge=0, le=4, description="FE wake-up bytes before each request")
    check_ser: bool = Field(default=True, description="refuse answers that do not echo SER")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        Address.parse(value)  # raises ValueError naming the value
        return value

    @property
    def wire_address(self) -> Address:
        return Address.parse(self.address)

    @property
    def type_code(self) -> int:
        return METER_TYPES[self.meter_type]


class Cjt188MeterSettings(Closed):
    """The CJ/T 188 part of a meter entry (the gateway adds id, scenario, nameplate, counts)."""

    connection: Cjt188Connection
    quantities: tuple[str, ...] = Field(default=DEFAULT_QUANTITIES, min_length=1)
    poll_s: float = Field(default=60.0, gt=0, description="seconds between reads")
    policy: Cjt188Policy = Field(default_factory=Cjt188Policy)

    @field_validator("quantities")
    @classmethod
    def _known(cls, quantities: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: not a CJ/T 188 quantity ({', '.join(QUANTITIES)})"
            )
        twice = sorted({q for q in quantities if quantities.count(q) > 1})
        if twice:
            raise ValueError(f"{', '.join(map(repr, twice))} listed more than once")
        return quantities
