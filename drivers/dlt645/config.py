"""Connection of a DL/T 645 meter: the line it hangs on and its address."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Dlt645Connection(BaseModel):
    """Which line a DL/T 645 meter is on, and its 12-digit address (as on its nameplate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: str = Field(min_length=1, description="id of a lines entry")
    address: str = Field(
        pattern=r"^[0-9]{12}$", description="12 digits as printed on the meter, e.g. '000012345678'"
    )
    timeout_s: float | None = Field(default=None, gt=0, le=30, description="overrides the line's timeout_s")

    @field_validator("address", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f"write the address in quotes, '{value:012d}': YAML reads {value} as a number "
                "and drops its leading zeros"
            )
        return value
