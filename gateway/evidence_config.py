"""Settings of the gateway's evidence pipeline (sealing, outbox) and of its MQTT uplink.

Closed pydantic models: an unknown key is an error, and validation does no I/O (key,
password and certificate files are read when the pipeline starts). In a site YAML::

    evidence:
      key_file: /etc/puhui/gateway-key.pem      # ECDSA P-256, mode 0600
      state_dir: /var/lib/puhui/gateway         # records/*.log (record log) and evidence.sqlite (WAL)
      sealing: {max_records: 500, max_age_s: 300}
      outbox: {cap_bytes: 268435456, cap_batches: null, policy: drop_oldest}
    uplink:
      host: mqtt.example.cn
      port: 8883
      tls: {ca_file: /etc/puhui/ca.pem, cert_file: null, key_file: null}
      username: gw-zjk-01
      password_file: /etc/puhui/mqtt-password
      aggregator_public_key: /etc/puhui/aggregator.pub.pem
      inflight: 8
      resend_after_s: 60

Every field has a default except ``uplink.host`` and ``uplink.aggregator_public_key``;
without an ``uplink`` section the gateway seals and keeps batches but sends nothing.
Times of the sealer (``max_age_s``) are clock seconds (the injected clock: simulated time
in demos); network timings (backoff, ``resend_after_s``) are wall seconds, because the
broker and the network do not run on simulated time.
"""

from __future__ import annotations

import random
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.backoff import Backoff
from common.mqtt import BrokerAddress
from common.tls import TlsSettings

DEFAULT_STATE_DIR = "/var/lib/puhui/gateway"
DEFAULT_KEY_FILE = "/etc/puhui/gateway-key.pem"
MIB = 1024 * 1024


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SealingSettings(_Closed):
    """When pending interval records are sealed into a batch: whichever comes first."""

    max_records: int = Field(default=500, ge=1, le=10_000, description="records per batch")
    max_age_s: float = Field(
        default=300.0, gt=0, le=86_400, description="seal once the oldest pending record is this old"
    )


class OutboxSettings(_Closed):
    """Bound on the sealed batches kept until the aggregator acknowledges them.

    When sealing a batch would exceed a cap, ``policy`` picks the batches to discard
    (``drop_oldest``: the oldest unacknowledged ones; ``drop_newest``: the new batch, then
    the newest kept ones) and a signed drop record naming exactly those batches and their
    intervals is sealed in their place. At least one cap must be set.
    """

    cap_bytes: int | None = Field(default=256 * MIB, ge=16_384, description="total batch bytes")
    cap_batches: int | None = Field(default=None, ge=2, description="number of batches")
    policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest"

    @model_validator(mode="after")
    def _one_cap(self) -> Self:
        if self.cap_bytes is None and self.cap_batches is None:
            raise ValueError("set cap_bytes or cap_batches: an unbounded outbox fills the SD card")
        return self


class EvidenceSettings(_Closed):
    """The gateway's signing key, durable state and sealing/outbox policy."""

    key_file: str = Field(default=DEFAULT_KEY_FILE, min_length=1, description="PKCS#8 PEM, mode 0600")
    state_dir: str = Field(default=DEFAULT_STATE_DIR, min_length=1, description="record log + SQLite state")
    sealing: SealingSettings = Field(default_factory=SealingSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)


class BackoffSettings(_Closed):
    """Jittered exponential backoff (:class:`common.backoff.Backoff`): retry n (0 = the first)
    waits min(max_s, initial_s x multiplier^n), reduced by a random fraction of up to ``jitter``."""

    initial_s: float = Field(default=1.0, gt=0, le=3600)
    max_s: float = Field(default=60.0, gt=0, le=86_400)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    jitter: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s {self.max_s} is below initial_s {self.initial_s}")
        return self

    def backoff(self, rng: random.Random) -> Backoff:
        """The backoff these settings describe, jittered by ``rng``."""
        return Backoff(self.initial_s, self.max_s, self.multiplier, self.jitter, rng)


def _reject_backoff() -> BackoffSettings:
    return BackoffSettings(initial_s=10.0, max_s=600.0)


class UplinkSettings(_Closed):
    """The MQTT broker the gateway sends batches to, and the aggregator key it trusts.
    ``failover``: more nodes of a clustered broker, tried in order when ``host:port`` cannot
    be reached."""

    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    failover: tuple[BrokerAddress, ...] = Field(default=(), description="more broker nodes, in order")
    tls: TlsSettings | None = Field(default_factory=TlsSettings, description="null: plain TCP")
    username: str | None = None
    password_file: str | None = Field(default=None, description="file holding the password")
    client_id: str | None = Field(default=None, max_length=64, description="default: new per connection")
    aggregator_public_key: str = Field(min_length=1, description="PEM/DER file of the aggregator key")
    qos: Literal[1] = 1
    inflight: int = Field(default=8, ge=1, le=100, description="batches published and not yet acked")
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    resend_after_s: float = Field(default=60.0, gt=0, le=86_400, description="republish if no ack")
    reconnect: BackoffSettings = Field(default_factory=BackoffSettings)
    reject_backoff: BackoffSettings = Field(default_factory=_reject_backoff)

    @model_validator(mode="after")
    def _password_needs_user(self) -> Self:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs a username")
        return self
