"""Connection settings of a Modbus TCP meter."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModbusTcpConnection(BaseModel):
    """Where a Modbus TCP device (or RTU-over-TCP gateway) listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    retries: int = Field(default=1, ge=0, le=5)
    idle_close_s: float | None = Field(
        default=None, gt=0, description="close the connection after this idle time (Alfen drops at 60 s)"
    )
