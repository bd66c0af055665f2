"""Errors of the gateway package.

::

    GatewayError
    ├── ConfigError                 a site config file is unreadable or invalid
    │                               (.issues: every problem, each with its path)
    ├── IntervalError               the interval builder was set up inconsistently
    ├── EvidenceStoreError          the state database cannot be used (other gateway, schema)
    ├── UplinkSetupError            a file the uplink settings name cannot be used
    └── StatusSetupError            the status page's password file cannot be used

Samples that are bad (NaN, late, out of order, from the future) are not errors: the
interval builder counts them and flags the intervals they touch. Device failures are
counted by the drivers' poll loops, not raised.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.yaml_models import Issue


class GatewayError(Exception):
    """Base class of every error raised by :mod:`gateway`."""


class ConfigError(GatewayError):
    """A site config that cannot be used; lists every problem in the file at once."""

    def __init__(self, file: str, issues: Sequence[Issue]) -> None:
        self.file = file
        self.issues = tuple(issues)
        super().__init__("\n".join(i.render(file) for i in self.issues))


class IntervalError(GatewayError, ValueError):
    """Inconsistent interval builder setup (interval length, duplicate series)."""


# -- evidence pipeline (gateway/store.py, gateway/uplink.py) ----------------------------


class EvidenceStoreError(GatewayError):
    """The durable state database is unusable: another gateway's, a newer schema, corrupt."""


class UplinkSetupError(GatewayError):
    """The uplink cannot start: a key, password or certificate file named in its settings."""


class StatusSetupError(GatewayError):
    """The status page's ``password_file`` is unreadable or empty (names the setting and file)."""
