"""``puhui aggregator api`` and ``puhui aggregator tokens create|list|revoke``.

::

    puhui aggregator api --config aggregator.yaml
    puhui aggregator tokens --config aggregator.yaml create --name city-platform \\
        --scope statements:read --scope intervals:read [--days 90] [--out token.txt]
    puhui aggregator tokens --config aggregator.yaml list
    puhui aggregator tokens --config aggregator.yaml revoke TOKEN_ID

A token is printed (or written to ``--out``, mode 0600) once; only its hash is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from aggregator.api.tokens import SCOPES, TokenError, TokenStore
from aggregator.config import load_config
from aggregator.errors import AggregatorError, ConfigError
from common.tls import SecretError
from evidence.errors import EvidenceError


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="aggregator YAML config (its api section)")
    parser.set_defaults(func=_api)


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="aggregator YAML config (for the store)")
    sub = parser.add_subparsers(dest="tokens_action", metavar="ACTION", required=True)
    p = sub.add_parser("create", help="make a token (shown once)")
    p.add_argument("--name", required=True, help="who holds it, e.g. the platform's name")
    p.add_argument("--scope", action="append", required=True, choices=sorted(SCOPES), help="repeat for more")
    p.add_argument("--days", type=float, default=90.0, help="valid for this many days (default 90)")
    p.add_argument("--out", type=Path, help="write the token to this file (mode 0600) instead of stdout")
    p.set_defaults(func=_create)
    p = sub.add_parser("list", help="tokens, scopes, expiry and state (never the token itself)")
    p.set_defaults(func=_list)
    p = sub.add_parser("revoke", help="revoke a token from now on")
    p.add_argument("token_id")
    p.set_defaults(func=_revoke)


def _fail(message: str, status: int = 1) -> int:
    print(f"puhui aggregator: {message}", file=sys.stderr)
    return status


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _api(args: argparse.Namespace) -> int:
    from aggregator.api.server import main_announce, serve  # uvicorn only when serving

    try:
        serve(load_config(args.config), str(args.config), main_announce)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (SecretError, AggregatorError, EvidenceError) as exc:
        return _fail(f"api: {exc}")
    except KeyboardInterrupt:
        return 0
    return 0


def _tokens(args: argparse.Namespace) -> TokenStore:
    return TokenStore.at(load_config(args.config).store)  # PostgreSQL's with a PostgreSQL store


def _when(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _create(args: argparse.Namespace) -> int:
    if not 0 < args.days <= 3660:
        return _fail(f"--days {args.days}: a token lives more than 0 and at most 3660 days", 2)
    try:
        store = _tokens(args)
        try:
            now = _now_ms()
            token, info = store.create(
                args.name, args.scope, now_ms=now, expires_ms=now + int(args.days * 86_400_000)
            )
        finally:
            store.close()
        if args.out is not None:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except FileExistsError:
        return _fail(f"{args.out}: exists; choose another file (a token is written once)")
    except (TokenError, AggregatorError, OSError) as exc:
        return _fail(str(exc))
    where = f"written to {args.out}" if args.out else "below; it is shown once"
    scopes = " ".join(info.scopes)
    line = f"token {info.id} for {info.name}: scopes {scopes}, expires {_when(info.expires_ms)}, {where}"
    print(line, file=sys.stderr if args.out is None else sys.stdout)
    if args.out is None:
        print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        store = _tokens(args)
        try:
            rows = store.list()
        finally:
            store.close()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except AggregatorError as exc:
        return _fail(str(exc))
    now = _now_ms()
    for t in rows:
        print(f"{t.id}\t{t.name}\t{' '.join(t.scopes)}\t{t.state(now)}\texpires {_when(t.expires_ms)}"
              f"\trevoked {_when(t.revoked_ms)}")  # fmt: skip
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        store = _tokens(args)
        try:
            info = store.revoke(args.token_id, now_ms=_now_ms())
        finally:
            store.close()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except AggregatorError as exc:
        return _fail(str(exc))
    print(f"token {info.id} ({info.name}) revoked from {_when(info.revoked_ms)}")
    return 0
