"""``puhui aggregator api``: serve the platform API with uvicorn, over TLS by default.

The listening socket is bound here (so ``port: 0`` picks a free port and the command says
which), then handed to uvicorn. The stores are opened for the API's lifetime; the API only
reads evidence (tokens are the one table it reads for access, and ``tokens`` writes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from aggregator.api.app import ApiContext, create_app
from aggregator.api.tokens import TokenStore
from aggregator.config import AggregatorConfig, ApiSettings
from aggregator.errors import ConfigError
from aggregator.keys import register_current
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.store import StatementStore
from aggregator.store import open_evidence_store
from aggregator.store.sqldb import open_programme_db
from common.tls import SecretError, check_private
from evidence.errors import EvidenceError
from evidence.keys import PublicKey, load_private_key, load_public_key


def api_settings(config: AggregatorConfig, file: str) -> ApiSettings:
    if config.api is None:
        raise ConfigError(f"{file}: api: missing: the API needs an api section (tls, or insecure: true)")
    return config.api


@contextlib.contextmanager
def api_context(config: AggregatorConfig, settings: ApiSettings) -> Iterator[ApiContext]:
    """The stores and key the API serves from, closed on exit."""
    evidence = open_evidence_store(config.store)
    db = open_programme_db(config.store)  # the statements: PostgreSQL's with a PostgreSQL store
    statements = StatementStore(db)
    tokens = TokenStore.at(config.store)
    try:
        key = load_private_key(config.key_file) if config.key_file.exists() else None
        if key is not None:  # the key list it signs starts from the key a platform pinned
            register_current(evidence, key, time.time_ns() // 1_000_000)
        platforms = {name: _platform_key(name, path) for name, path in settings.platforms.items()}
        yield ApiContext(
            evidence, statements, tokens, params_dir=settings.params_dir or PARAMS_DIR,
            signing_key=key, max_page=settings.max_page, platform_keys=platforms,
        )  # fmt: skip
    finally:
        tokens.close()
        statements.close()
        db.close()
        evidence.close()


def _platform_key(name: str, path: Path) -> PublicKey:
    try:
        return load_public_key(path.read_bytes())
    except (OSError, EvidenceError, ValueError) as exc:
        raise ConfigError(f"api.platforms.{name}: {path}: not a readable public key: {exc}") from exc


def _tls_options(settings: ApiSettings, file: str) -> dict[str, object]:
    tls = settings.tls
    if tls is None:
        return {}
    check_private(Path(tls.key_file), f"{file}: api.tls.key_file")
    options: dict[str, object] = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.client_ca_file is not None:
        options |= {"ssl_ca_certs": tls.client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    try:  # fail here, naming the file, rather than inside uvicorn's startup
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SecretError(f"{file}: api.tls: {exc}") from exc
    return options


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts: none refused at start
    sock.set_inheritable(True)
    return sock


def serve(config: AggregatorConfig, file: str, announce: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both: it finishes requests in flight)."""
    settings = api_settings(config, file)
    tls = _tls_options(settings, file)
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        raise ConfigError(
            f"{file}: api: cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from exc
    with api_context(config, settings) as ctx:
        app = create_app(ctx)
        server = uvicorn.Server(
            uvicorn.Config(
                app, log_level="warning", access_log=False, proxy_headers=False,
                server_header=False, timeout_graceful_shutdown=10, **tls,  # type: ignore[arg-type]
            )
        )  # fmt: skip
        host, port = sock.getsockname()[:2]
        scheme = "https" if tls else "http"
        shown = f"[{host}]" if ":" in host else host
        announce(f"serving {scheme}://{shown}:{port}/v1 (OpenAPI 3.1: /openapi.json, health: /healthz)")
        asyncio.run(server.serve(sockets=[sock]))


def main_announce(line: str) -> None:
    print(f"puhui aggregator api: {line}", flush=True)
    sys.stdout.flush()
