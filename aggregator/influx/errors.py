"""Errors of the InfluxDB v1 client and the line protocol encoder.

Hierarchy (what the caller should do is on the right)::

    InfluxError
     ├── LineProtocolError        a point cannot be encoded: fix the data (also ValueError)
     ├── InfluxUnavailable        refused, timed out, 5xx: retry later, same body
     ├── InfluxRejected           4xx: not retryable as is; ``server_message`` says why
     │    ├── InfluxAuthError          401/403: credentials or token
     │    └── InfluxDatabaseNotFound   404 on write: create the database first
     └── InfluxQueryError         InfluxQL failed to parse or run (``"error"`` in results)

Transport errors from httpx are translated at the client boundary and chained
(``raise InfluxUnavailable(...) from exc``). Retry and backoff are the caller's policy.
"""

from __future__ import annotations


class InfluxError(Exception):
    """Base class of every InfluxDB error raised by :mod:`aggregator.influx`.

    ``status_code`` is the HTTP status (None when no response came), ``server_message``
    the server's own error text ('' when it gave none).
    """

    def __init__(self, message: str, *, status_code: int | None = None, server_message: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.server_message = server_message


class LineProtocolError(InfluxError, ValueError):
    """A point cannot be represented in line protocol (the message names which part)."""


class InfluxUnavailable(InfluxError):
    """The server could not be reached or failed (connection, timeout, 5xx): retry later."""


class InfluxRejected(InfluxError):
    """The server refused the request (4xx); sending it again as is will fail again."""


class InfluxAuthError(InfluxRejected):
    """Authentication or authorisation failed (401/403)."""


class InfluxDatabaseNotFound(InfluxRejected):
    """The target database (or retention policy) does not exist."""


class InfluxQueryError(InfluxError):
    """An InfluxQL statement failed to parse or execute."""
