"""Serial buses and the connection of a Modbus RTU meter to one of them.

A bus is declared once at site level and owned by one task; meters name it by id, so two
meters can never open the same port with different settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SerialBus(BaseModel):
    """An RS-485 bus: port and line settings, shared by the RTU meters on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=1.0, gt=0, le=10)
    inter_frame_delay_ms: float = Field(
        default=5.0, ge=0, le=1000, description="silence between a response and the next request"
    )


class ModbusRtuConnection(BaseModel):
    """Which serial bus, or which shared line (a local port or a TCP serial server: "RTU over
    TCP"), an RTU meter hangs on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus: str | None = Field(default=None, min_length=1, description="id of a serial_buses entry")
    line: str | None = Field(default=None, min_length=1, description="id of a lines entry")

    @model_validator(mode="after")
    def _one_of(self) -> ModbusRtuConnection:
        if (self.bus is None) == (self.line is None):
            raise ValueError("give either bus (a serial_buses id) or line (a lines id)")
        return self
