"""Errors of back-end session import (docs/ev-sessions.md).

::

    AggregatorError
    └── SessionError                  a session import cannot go ahead
        ├── SessionFileError          the file is not a session file (names the file, line, field)
        ├── ManifestRefused           the network's signed manifest is missing, malformed or does
        │                             not verify with its pinned key, or does not match the file
        ├── UnknownNetwork            the network is not enrolled at the aggregator
        ├── NetworkConflict           a network enrolled again with another key
        └── SessionStoreUnsupported   the configured store keeps no sessions (PostgreSQL)

A refused *record* is not an error: it is reported per record (:class:`.checks.Refusal`)
and the rest of the file is taken.
"""

from __future__ import annotations

from aggregator.errors import AggregatorError


class SessionError(AggregatorError):
    """A session import cannot go ahead."""


class SessionFileError(SessionError):
    """The file is not a session file of the documented schema."""


class ManifestRefused(SessionError):
    """The import's manifest does not attest the file with the network's pinned key."""


class UnknownNetwork(SessionError):
    """No such network is enrolled."""


class NetworkConflict(SessionError):
    """The network is enrolled with another key."""


class SessionStoreUnsupported(SessionError):
    """The configured evidence store does not keep imported sessions."""
