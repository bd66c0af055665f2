"""Async client for the InfluxDB v1 HTTP API: ``/ping``, ``/write`` and ``/query``.

The same endpoints are served by InfluxDB 1.x and, for compatibility, by 2.x and 3.x
(token in ``Authorization: Token ...``, database/retention policy mapped to a bucket).
See docs/influxdb.md.

The client translates every failure into :mod:`aggregator.influx.errors`; it never
retries: backoff is the caller's policy.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypedDict

import httpx

from aggregator.influx.errors import (
    InfluxAuthError,
    InfluxDatabaseNotFound,
    InfluxError,
    InfluxQueryError,
    InfluxRejected,
    InfluxUnavailable,
)
from aggregator.influx.influxql import quote_ident
from aggregator.influx.lineprotocol import Point, encode_points

PRECISIONS = frozenset({"ns", "u", "ms", "s", "m", "h"})
EPOCHS = frozenset({"ns", "u", "ms", "s", "m", "h"})
_GZIP_LEVEL = 1  # line protocol compresses ~10x even at level 1; higher costs CPU
_GZIP_IN_THREAD = 256 * 1024  # bodies from this size are compressed off the event loop
_MAX_MESSAGE = 500  # characters of a server's error text kept in exception messages


class Series(TypedDict):
    """One series of a query result."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


class InfluxV1Client:
    """One database on one server, over a pooled ``httpx.AsyncClient`` that it owns.

    Use as ``async with InfluxV1Client(url, db) as influx: ...`` (or call ``aclose()``).
    Credentials: ``token`` (sent as ``Authorization: Token <token>``, what InfluxDB 2.x/3.x
    take), or ``username``/``password`` (HTTP basic auth, which 1.x takes), not both.
    """

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retention_policy: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"InfluxDB url must start with http:// or https://, not {url!r}")
        if not database:
            raise ValueError("InfluxDB database name is empty")
        if token is not None and (username is not None or password is not None):
            raise ValueError("give either token or username/password, not both")
        headers = {"User-Agent": "puhui-aggregator", "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Token {token}"
        auth = httpx.BasicAuth(username, password or "") if username is not None else None
        self.url = url.rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        # trust_env=False: no proxy or netrc from the environment between us and the store.
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, auth=auth, timeout=timeout, trust_env=False,
            verify=tls if tls is not None else True,
        )  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def ping(self) -> str:
        """Check the server answers; returns its version (``X-Influxdb-Version``)."""
        response = await self._send("GET", "/ping", "ping")
        if response.status_code != 204:
            _raise_for_response(response, "ping")
        return str(response.headers.get("X-Influxdb-Version", ""))

    async def create_database(self) -> None:
        """``CREATE DATABASE`` for this client's database (a no-op if it exists)."""
        await self.query(f"CREATE DATABASE {quote_ident(self.database)}")

    async def drop_database(self) -> None:
        """``DROP DATABASE`` for this client's database, with all its data."""
        await self.query(f"DROP DATABASE {quote_ident(self.database)}")

    async def write(self, body: bytes, precision: str = "ns") -> None:
        """Write a line protocol body (see :func:`encode_points`), sent gzip-compressed."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
        params = self._params(precision=precision)
        response = await self._send(
            "POST",
            "/write",
            "write",
            params=params,
            content=await _gzip(body),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
        )
        if response.status_code != 204:
            _raise_for_response(response, "write")

    async def write_points(self, points: Iterable[Point]) -> None:
        """Encode ``points`` and write them in one request."""
        await self.write(encode_points(points))

    async def query(self, influxql: str, *, epoch: str | None = "ns") -> list[Series]:
        """Run InfluxQL (one or more statements); the series of all results, in order.

        ``epoch`` sets the unit of returned timestamps (integers); None gives RFC 3339
        strings. An ``"error"`` in any statement's result raises :class:`InfluxQueryError`.
        """
        if epoch is not None and epoch not in EPOCHS:
            raise ValueError(f"epoch {epoch!r} is not one of {sorted(EPOCHS)}")
        form = {"q": influxql, **self._params(epoch=epoch)}
        response = await self._send("POST", "/query", "query", data=form)
        if response.status_code != 200:
            _raise_for_response(response, "query")
        return _parse_results(_json(response, "query"))

    def _params(self, **extra: str | None) -> dict[str, str]:
        params = {"db": self.database, "rp": self.retention_policy, **extra}
        return {key: value for key, value in params.items() if value is not None}

    async def _send(
        self,
        method: str,
        path: str,
        action: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return await self._http.request(
                method, path, params=params, content=content, data=data, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise InfluxUnavailable(f"{action} {self.url}: timed out ({exc!r})") from exc
        except httpx.RequestError as exc:
            raise InfluxUnavailable(f"{action} {self.url}: {exc!r}") from exc


async def _gzip(body: bytes) -> bytes:
    """gzip at ``_GZIP_LEVEL``; a large body on a worker thread (zlib releases the GIL), so
    ingest keeps verifying on the event loop meanwhile (8 batches: 3 MB, about 5 ms)."""
    if len(body) < _GZIP_IN_THREAD:
        return gzip.compress(body, compresslevel=_GZIP_LEVEL)
    return await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL)


def _server_message(response: httpx.Response) -> str:
    """The server's error text: the ``error`` member of a JSON body, else the raw body."""
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:_MAX_MESSAGE]
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    return response.text.strip()[:_MAX_MESSAGE]


def _raise_for_response(response: httpx.Response, action: str) -> None:
    status = response.status_code
    text = _server_message(response)
    message = f"{action} {response.request.url.copy_with(query=None)}: HTTP {status}: {text}"
    error: type[InfluxError]
    if status >= 500:
        error = InfluxUnavailable
    elif status in (401, 403):
        error = InfluxAuthError
    elif status == 404 and action == "write":
        error = InfluxDatabaseNotFound
    elif status >= 400:
        error = InfluxQueryError if action == "query" and status == 400 else InfluxRejected
    else:
        error = InfluxError  # 1xx/3xx/unexpected 2xx: not the API we expect
    raise error(message, status_code=status, server_message=text)


def _json(response: httpx.Response, action: str) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError as exc:
        raise InfluxError(
            f"{action}: response is not JSON: {response.text[:_MAX_MESSAGE]!r}",
            status_code=response.status_code,
        ) from exc
    if not isinstance(payload, dict):
        raise InfluxError(f"{action}: response is not a JSON object", status_code=200)
    return payload


def _parse_results(payload: dict[str, Any]) -> list[Series]:
    if "error" in payload:
        raise InfluxQueryError(
            f"query: {payload['error']}", status_code=200, server_message=str(payload["error"])
        )
    series: list[Series] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise InfluxQueryError(
                f"query statement {result.get('statement_id', '?')}: {result['error']}",
                status_code=200,
                server_message=str(result["error"]),
            )
        for raw in result.get("series", []):
            series.append(
                Series(
                    name=raw.get("name", ""),
                    tags=raw.get("tags") or {},
                    columns=raw.get("columns", []),
                    values=raw.get("values") or [],
                )
            )
    return series
