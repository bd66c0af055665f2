"""Settings of an MQTT meter: broker, topic, JSON field paths, timestamp policy."""

from __future__ import annotations

import zoneinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.tls import TlsSettings

# Simple dotted paths into a JSON object, with list indexes: "data.energy.import", "ch[0].p"
JSON_PATH = r"^[A-Za-z_][A-Za-z0-9_-]*(\[[0-9]+\])*(\.[A-Za-z_][A-Za-z0-9_-]*(\[[0-9]+\])*)*$"


class MqttConnection(BaseModel):
    """The broker a meter publishes to.

    ``tls``: false (plain TCP), true (TLS, the system's CAs) or TLS settings
    ``{ca_file, cert_file, key_file}``: the site CA, and the gateway's client certificate
    as its identity on a broker with an access list (key mode 0600).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password_file: str | None = Field(default=None, description="file holding the password")
    tls: bool | TlsSettings = False


class MqttField(BaseModel):
    """One JSON field that measures a quantity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(pattern=JSON_PATH)
    unit: str = ""
    kind: Literal["counter", "gauge"] = "gauge"
    scale: float = 1.0


class MqttTimestamp(BaseModel):
    """Take sample times from the payload, rejecting those too far from the gateway clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(pattern=JSON_PATH)
    format: Literal["epoch_s", "epoch_ms", "iso8601"] = "epoch_s"
    max_skew_s: float = Field(default=30.0, gt=0, le=3600)
    # The zone of an iso8601 time that carries no offset. Tasmota publishes local time that
    # way ("Time": "2025-01-15T08:00:00"): give the device's zone, e.g. Asia/Shanghai.
    tz: str = "UTC"

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Shanghai, UTC)") from exc
        return value


class MqttSource(BaseModel):
    """Topic and payload mapping of an MQTT meter (timestamps from receipt if ``time`` is unset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(min_length=1)
    fields: dict[str, MqttField] = Field(min_length=1, description="quantity -> JSON field")
    time: MqttTimestamp | None = None
    expected_period_s: float = Field(default=10.0, gt=0, le=3600, description="publish period")
