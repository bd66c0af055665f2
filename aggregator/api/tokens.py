"""Bearer tokens for the platform API: scoped, expiring, revocable, stored hashed.

A token reads ``puhui_<id>_<secret>``: ``id`` (12 hex digits) finds the row, ``secret``
(32 random bytes, base64url) is checked against its SHA-256 in constant time. Only the hash
is stored (table ``api_tokens`` in the aggregator's database: the SQLite file, or with a
PostgreSQL evidence store its database, so every aggregator's API takes the same tokens), so
a copy of the database grants nothing. The token is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from aggregator.config import StoreSettings
from aggregator.errors import AggregatorError, StoreError
from aggregator.store.sqldb import Db, as_db, open_programme_db

SCOPES: dict[str, str] = {
    "statements:read": "list and read signed statements and their evidence packages",
    "intervals:read": "attested interval records (JSON, CSV) and inclusion proofs",
    "registry:read": "gateways, enrolments, the signed key list, checkpoints",
    "metrics:read": "the aggregator's Prometheus metrics",
    "receipts:write": "hand back the platform's issuance, transfer and retirement receipts",
    "sessions:write": "a charging network imports its session records (token name = network name)",
}
_TOKEN = re.compile(r"^puhui_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_sha256 TEXT NOT NULL, scopes TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, revoked_ms INTEGER);
"""


class TokenError(AggregatorError):
    """A token cannot be made or revoked (unknown scope, unknown id, store error)."""


class Refused(Exception):
    """A request's credentials are refused: ``status`` 401 (who are you) or 403 (not allowed)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_ms: int
    expires_ms: int
    revoked_ms: int | None

    def state(self, now_ms: int) -> str:
        if self.revoked_ms is not None and self.revoked_ms <= now_ms:
            return "revoked"
        return "expired" if self.expires_ms <= now_ms else "active"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class TokenStore:
    """The token table in the aggregator's SQLite database, or in a given
    :class:`aggregator.store.sqldb.Db` (not closed here; :meth:`at` opens and owns one).
    Thread-safe."""

    def __init__(self, path: str | Path | Db) -> None:
        self._lock = threading.Lock()
        try:
            self._db, self._owns = as_db(path)
            self.path = Path(self._db.where)
            self._db.ensure(_SCHEMA)
        except (sqlite3.Error, StoreError) as exc:
            raise TokenError(f"{path}: cannot open the token table: {exc}") from exc

    @classmethod
    def at(cls, settings: StoreSettings) -> Self:
        """The token table a config's ``store`` names (PostgreSQL's with a PostgreSQL store)."""
        try:
            db = open_programme_db(settings)
        except (sqlite3.Error, StoreError) as exc:
            raise TokenError(f"cannot open the token table: {exc}") from exc
        store = cls(db)
        store._owns = True
        return store

    def close(self) -> None:
        with self._lock:
            if self._owns:
                self._db.close()

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except (sqlite3.Error, StoreError) as exc:
                raise TokenError(f"{self._db.where}: api_tokens: {exc}") from exc

    def create(
        self, name: str, scopes: Iterable[str], *, now_ms: int, expires_ms: int
    ) -> tuple[str, TokenInfo]:
        """A new token (returned once, in clear) and its stored description."""
        wanted = tuple(sorted(set(scopes)))
        unknown = [s for s in wanted if s not in SCOPES]
        if unknown or not wanted:
            raise TokenError(
                f"scope {', '.join(unknown) or '(none)'} unknown: give one or more of {', '.join(SCOPES)}"
            )
        if expires_ms <= now_ms:
            raise TokenError("a token must expire after it is made")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        info = TokenInfo(token_id, name, wanted, now_ms, expires_ms, None)
        self._run(
            "INSERT INTO api_tokens (id, name, secret_sha256, scopes, created_ms, expires_ms, revoked_ms) "
            "VALUES (?,?,?,?,?,?,NULL)",
            (token_id, name, _digest(secret), " ".join(wanted), now_ms, expires_ms),
        )
        return f"puhui_{token_id}_{secret}", info

    def revoke(self, token_id: str, *, now_ms: int) -> TokenInfo:
        """Revoke a token from ``now_ms`` on; revoking twice keeps the first time."""
        self._run(
            "UPDATE api_tokens SET revoked_ms = coalesce(revoked_ms, ?) WHERE id = ?", (now_ms, token_id)
        )
        info = self.get(token_id)
        if info is None:
            raise TokenError(f"no token {token_id!r} (see `puhui aggregator tokens list`)")
        return info

    def get(self, token_id: str) -> TokenInfo | None:
        rows = self._run(
            "SELECT id, name, scopes, created_ms, expires_ms, revoked_ms FROM api_tokens WHERE id = ?",
            (token_id,),
        )
        return _info(rows[0]) if rows else None

    def list(self) -> list[TokenInfo]:
        rows = self._run(
            "SELECT id, name, scopes, created_ms, expires_ms, revoked_ms FROM api_tokens ORDER BY created_ms"
        )
        return [_info(r) for r in rows]

    def authorise(self, header: str | None, scope: str, *, now_ms: int) -> TokenInfo:
        """The token an ``Authorization`` header carries, if it grants ``scope`` now;
        otherwise :class:`Refused` with the status and the reason."""
        if not header:
            raise Refused(401, "no bearer token: send 'Authorization: Bearer puhui_...'")
        kind, _, value = header.partition(" ")
        if kind.lower() != "bearer" or not value:
            raise Refused(401, "the Authorization header is not 'Bearer <token>'")
        m = _TOKEN.match(value.strip())
        if m is None:
            raise Refused(401, "malformed token (expected puhui_<12 hex>_<43 base64url>)")
        token_id, secret = m.groups()
        rows = self._run("SELECT secret_sha256 FROM api_tokens WHERE id = ?", (token_id,))
        if not rows or not hmac.compare_digest(str(rows[0][0]), _digest(secret)):
            raise Refused(401, "unknown token")
        info = self.get(token_id)
        assert info is not None
        state = info.state(now_ms)
        if state != "active":
            raise Refused(401, f"token {token_id} is {state}")
        if scope not in info.scopes:
            raise Refused(403, f"token {token_id} lacks scope {scope} (it has {', '.join(info.scopes)})")
        return info


def _info(row: tuple[object, ...]) -> TokenInfo:
    tid, name, scopes, created, expires, revoked = row
    return TokenInfo(
        str(tid), str(name), tuple(str(scopes).split()), int(str(created)), int(str(expires)),
        None if revoked is None else int(str(revoked)),
    )  # fmt: skip
