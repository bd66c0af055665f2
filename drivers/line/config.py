"""Config of a shared line: a local serial port, or a TCP transparent serial server.

A line is declared once at site level (``lines:``) and owned by one
:class:`~drivers.line.owner.LineOwner`; devices of any line protocol (DL/T 645, Modbus
RTU, CJ/T 188) name it by id.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

LINE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Baudrate = Literal[300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]


class _LineBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=LINE_ID)
    baudrate: Baudrate = Field(default=2400, description="DL/T 645 default 2400; every device alike")
    parity: Literal["N", "E", "O"] = Field(default="E", description="DL/T 645 default 8E1")
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="per request: first byte out to answer in")
    inter_frame_delay_ms: float = Field(
        default=20.0, ge=0, le=2000, description="silence after each answer before the next request"
    )

    def byte_time_s(self) -> float:
        """Seconds one character takes on the RS-485 side (start, data, parity, stop bits)."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate


class SerialLineConfig(_LineBase):
    """An RS-485 line on a local serial port (USB adapter, on-board UART)."""

    kind: Literal["serial"]
    port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")


class TcpServerLineConfig(_LineBase):
    """An RS-485 line behind a transparent serial server (raw bytes over one TCP connection).

    ``baudrate`` and ``parity`` are the server's RS-485 side, as set in its web page: the
    gateway does not send them, but uses them to know how long a frame takes on the wire.
    """

    kind: Literal["tcp_server"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535, description="the server's TCP port for this line")
    connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    reconnect_base_s: float = Field(default=0.5, ge=0, le=60, description="backoff after a failed connect")
    reconnect_max_s: float = Field(default=30.0, ge=0, le=600)


LineConfig = Annotated[SerialLineConfig | TcpServerLineConfig, Field(discriminator="kind")]


def describe_line(line: SerialLineConfig | TcpServerLineConfig) -> str:
    """``line rs485-1 (/dev/ttyUSB0)`` or ``line east (tcp 10.0.0.9:8899)``."""
    where = line.port if isinstance(line, SerialLineConfig) else f"tcp {line.host}:{line.port}"
    return f"line {line.id} ({where})"
