"""Settings of the OCPP tap and the local controller (closed models; validation does no I/O).

Each enrolled charger may pin its meters' public keys (OCMF) and name its meters; a charger
not listed is still served (the tap forwards everything) but its signed values cannot
verify (``no_pinned_key``).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from typing import Self

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.clock import Clock
from common.tls import SecretError, TlsSettings, client_context
from drivers.ocpp import ocmf
from drivers.ocpp.errors import OcmfKeyError, OcppConfigError
from drivers.ocpp.metering import MeteringReader, MeteringSink, MeterKeys

METER_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # the gateway's meter id pattern
MIB = 1 << 20


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChargerConfig(Closed):
    """One enrolled charger: its meters' public keys (pinned at enrolment) and meter ids.

    ``meter_key``: the key of the charger's meter (or of all its meters), DER
    SubjectPublicKeyInfo as hex or base64, or PEM. ``connector_keys``: per connector (1.6) or
    EVSE (2.0.1) where each has its own meter. ``meter_ids``: connector -> meter id
    (default ``<charger id>.<connector>``).
    """

    meter_key: str | None = None
    connector_keys: dict[int, str] = Field(default_factory=dict)
    meter_ids: dict[int, str] = Field(default_factory=dict)

    @field_validator("meter_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None:
            _load(value)
        return value

    @field_validator("connector_keys")
    @classmethod
    def _keys(cls, value: dict[int, str]) -> dict[int, str]:
        for connector, key in value.items():
            try:
                _load(key)
            except ValueError as exc:
                raise ValueError(f"connector {connector}: {exc}") from None
        return value

    @field_validator("meter_ids")
    @classmethod
    def _ids(cls, value: dict[int, str]) -> dict[int, str]:
        for connector, meter in value.items():
            if not re.fullmatch(METER_ID, meter):
                raise ValueError(f"connector {connector}: {meter!r} is not a meter id ({METER_ID})")
        return value

    def meter_keys(self) -> MeterKeys:
        """The pinned keys, parsed (they were checked when the config loaded)."""
        keys: dict[int | None, ec.EllipticCurvePublicKey] = {
            c: ocmf.load_public_key(k) for c, k in self.connector_keys.items()
        }
        if self.meter_key is not None:
            keys[None] = ocmf.load_public_key(self.meter_key)
        return MeterKeys(keys)


def _load(text: str) -> None:
    try:
        ocmf.load_public_key(text)
    except OcmfKeyError as exc:
        raise ValueError(str(exc)) from None


class ServerTls(Closed):
    """TLS towards the chargers (OCPP security profile 2; with ``ca_file``, profile 3: chargers
    present client certificates signed by that CA)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None


class Listen(Closed):
    """Where chargers connect: ``ws://host:port/<charge point id>`` (``wss`` with ``tls``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=0, le=65535, description="0: a free port (tests)")
    tls: ServerTls | None = None


class TapConfig(Closed):
    """Transparent proxy: chargers connect here, every frame goes on to ``upstream`` unchanged.

    ``upstream``: the network's CSMS base URL; a charger's path is appended
    (``wss://csms.example.com/ocpp`` + ``/CP-001``).
    """

    listen: Listen = Listen()
    upstream: str = Field(pattern=r"^wss?://[^\s/?#]+(/[^\s?#]*)?$")
    upstream_tls: TlsSettings | None = None
    open_timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_frame_bytes: int = Field(default=MIB, ge=4096, le=64 * MIB)
    chargers: dict[str, ChargerConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tls_only_for_wss(self) -> Self:
        if self.upstream_tls is not None and not self.upstream.startswith("wss://"):
            raise ValueError("upstream_tls is for a wss:// upstream")
        return self


class ControllerConfig(Closed):
    """Local controller: the gateway is the chargers' CSMS for metering.

    It accepts every boot and authorisation (access control is not its job) and numbers 1.6
    transactions itself. ``accept_unknown: false`` refuses chargers not in ``chargers``.
    """

    listen: Listen = Listen()
    heartbeat_interval_s: int = Field(default=300, ge=10, le=86400)
    accept_unknown: bool = False
    max_frame_bytes: int = Field(default=MIB, ge=4096, le=64 * MIB)
    chargers: dict[str, ChargerConfig] = Field(default_factory=dict)


def server_context(tls: ServerTls, what: str) -> ssl.SSLContext:
    """The TLS context chargers connect to (files read now, at start)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file is not None:
            ctx.load_verify_locations(tls.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise OcppConfigError(f"{what}: {exc}") from exc
    return ctx


def upstream_context(config: TapConfig, what: str = "tap.upstream_tls") -> ssl.SSLContext | None:
    """The client TLS context for a wss:// upstream (system CAs unless ``upstream_tls`` says)."""
    if not config.upstream.startswith("wss://"):
        return None
    try:
        return client_context(config.upstream_tls or TlsSettings(), what)
    except SecretError as exc:
        raise OcppConfigError(str(exc)) from exc


def enrolled_reader(
    chargers: Mapping[str, ChargerConfig], charger: str, sink: MeteringSink, clock: Clock
) -> MeteringReader:
    """A reader for ``charger`` with its pinned keys and meter ids (none if not enrolled)."""
    cfg = chargers.get(charger)
    if cfg is None:
        return MeteringReader(charger, sink, clock)
    return MeteringReader(charger, sink, clock, keys=cfg.meter_keys(), meter_ids=cfg.meter_ids)
