"""TLS settings, client TLS contexts and secrets read from files or the environment: one way
for every link (gateway uplink, MQTT meters, the aggregator's broker and InfluxDB).

Secrets never sit in a config file: a config names a file (mode 0600) or an environment
variable that holds them, and :func:`read_secret` reads it at start (validation does no I/O).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)


class SecretError(Exception):
    """A secret, certificate or key file that cannot be used (the message names it)."""


class TlsSettings(BaseModel):
    """TLS to a server. ``ca_file`` unset: the system's CA store. A client certificate
    (``cert_file`` + ``key_file``) authenticates this side instead of, or besides, a password."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate and its key)")
        return self


class SecretSource(BaseModel):
    """Where a secret comes from: a file (mode 0600) or an environment variable, one of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = None
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise ValueError("give the secret's file or its environment variable (env), one of them")
        return self


def client_context(tls: TlsSettings, what: str) -> ssl.SSLContext:
    """A verifying client context (TLS 1.2 or later) for ``tls``; ``what`` names the setting in
    errors (e.g. ``aggregator.yaml: mqtt.tls``)."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None:
            _check_private(Path(tls.key_file or ""), f"{what}.key_file")
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SecretError(f"{what}: {exc}") from exc
    return context


def read_secret(source: SecretSource, what: str) -> str:
    """The secret ``source`` names (one trailing newline dropped); ``what`` names the setting."""
    if source.env is not None:
        value = os.environ.get(source.env)
        if value is None:
            raise SecretError(f"{what}.env: the environment variable {source.env} is not set")
        return value
    path = Path(source.file or "")
    _check_private(path, f"{what}.file")
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"{what}.file: {path}: {exc}") from exc


def check_private(path: Path, what: str) -> None:
    """Refuse a key or secret file that others may read (mode not 0600 or stricter)."""
    _check_private(path, what)


def _check_private(path: Path, what: str) -> None:
    """Refuse a secret that others may read (as ssh does with a private key)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise SecretError(f"{what}: {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise SecretError(f"{what}: {path} is mode {mode:o}: others may read it; chmod 600 {path}")
