"""Errors of the aggregator.

::

    AggregatorError
    ├── ConfigError                 config file unreadable or invalid (message names file + path)
    ├── RegistryError               enrolment, revocation, rotation
    │   ├── AlreadyEnrolled         another key or site for a gateway that is enrolled
    │   ├── UnknownGateway          no such gateway in the registry
    │   └── KeyRejected             a batch's key is not valid for it (carries ``reason``)
    │       ├── NotEnrolled         the gateway is not enrolled            -> not_enrolled
    │       ├── UnknownKey          the gateway never had this key         -> unknown_key
    │       └── RevokedKey          revoked, or superseded by a rotation   -> revoked_key
    ├── StoreError                  the evidence store failed (SQLite error, chained)
    │   └── StoreConflict           a unique batch (gateway, seq) was already stored
    └── BatchRejected               a batch refused by ingest (carries ``reason``)

    aggregator.influx.errors.InfluxError      InfluxDB client errors, their own tree
    (InfluxUnavailable, InfluxRejected, ...): the writer retries or parks them; they never
    reach ingest, which does not depend on InfluxDB.

Evidence errors (:mod:`evidence.errors`) are translated into :class:`BatchRejected` with
the matching :class:`evidence.wire.RejectReason` at the ingest boundary.
"""

from __future__ import annotations

from aggregator.influx.errors import InfluxError
from evidence.wire import RejectReason

__all__ = [
    "AggregatorError",
    "AlreadyEnrolled",
    "BatchRejected",
    "ConfigError",
    "InfluxError",
    "KeyRejected",
    "NotEnrolled",
    "RegistryError",
    "RevokedKey",
    "StoreConflict",
    "StoreError",
    "UnknownGateway",
    "UnknownKey",
]


class AggregatorError(Exception):
    """Base class of the aggregator's own errors."""


class ConfigError(AggregatorError):
    """The configuration file cannot be read or is invalid; every problem is listed."""


class RegistryError(AggregatorError):
    """A registry operation cannot be done."""


class AlreadyEnrolled(RegistryError):
    """The gateway is enrolled with another key that is still valid."""


class UnknownGateway(RegistryError):
    """No gateway of that id is enrolled."""


class KeyRejected(RegistryError):
    """The key a batch names cannot verify it; ``reason`` is the reply's reason code."""

    reason = RejectReason.UNKNOWN_KEY


class NotEnrolled(KeyRejected):
    reason = RejectReason.NOT_ENROLLED


class UnknownKey(KeyRejected):
    reason = RejectReason.UNKNOWN_KEY


class RevokedKey(KeyRejected):
    reason = RejectReason.REVOKED_KEY


class StoreError(AggregatorError):
    """The evidence store failed; nothing of the operation was committed."""


class StoreConflict(StoreError):
    """A batch with this (gateway, seq) is already stored (another aggregator won)."""


class BatchRejected(AggregatorError):
    """Ingest refused a batch; ``reason`` goes into the signed reject reply."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
