"""A small real HTTP(S) intake for the push tests: what a platform does with an Idempotency-Key.

In a thread of the test (:class:`ReceiverThread`) or as a process of its own, to be killed::

    python -m tests.aggregator.push_receiver --dir DIR --port N [--cert C --key K]
        [--token-file F] [--delay-ms MS] [--stall-after N] [--hang-before N]

Every POST is counted: a line ``key status`` in ``DIR/posts.log`` (appended before the answer;
the kernel keeps it through a SIGKILL). A POST without the bearer token is answered 401,
without an ``Idempotency-Key`` 400. A statement (``Content-Type: application/vnd.puhui.statement``)
whose first line does not hash to the key is refused (422). A new key: the body goes to
``DIR/bodies/<key>`` and the key to ``DIR/keys.log``, each fsync-ed, then 201. A key taken
before: 200 with the same body (not stored again), 422 with another.

``--delay-ms`` waits up to that long (random) between storing and answering, so a kill often
lands there. Two requests can be held until the process is killed: ``--stall-after N``, the
POST that stores the N-th key, after storing it (writes ``DIR/stalled``): stored, unanswered,
so the pusher must send it again; ``--hang-before N``, the POST that would store the N-th key,
before storing it (writes ``DIR/hung``): neither stored nor answered, so a pusher killed then
must not count it as delivered. Only the standard library: the process starts fast.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import random
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATEMENT_TYPE = "application/vnd.puhui.statement"


@dataclass(frozen=True)
class Post:
    """One request as received (kept in memory by the in-thread receiver)."""

    key: str | None
    status: int
    headers: dict[str, str]
    body: bytes


class Intake:
    """The receiver's durable state under ``directory``; thread-safe."""

    def __init__(
        self, directory: Path, *, token: str | None, delay_ms: float = 0.0, stall_after: int = 0,
        hang_before: int = 0,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.token = token
        self.delay_ms = delay_ms
        self.stall_after = stall_after
        self.hang_before = hang_before
        self.lock = threading.Lock()
        self.script: deque[int] = deque()  # answers given before anything else (in-thread use)
        self.posts: list[Post] = []
        (directory / "bodies").mkdir(parents=True, exist_ok=True)
        self.keys = self._load()
        self._posts_fd = os.open(directory / "posts.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> dict[str, str]:
        """Keys taken before (key -> sha256 of the body); a torn last line (killed while
        writing, so never answered) is cut off."""
        path = self.directory / "keys.log"
        data = path.read_bytes() if path.exists() else b""
        whole = data[: data.rfind(b"\n") + 1]
        if whole != data:
            with open(path, "r+b") as f:
                f.truncate(len(whole))
                os.fsync(f.fileno())
        return dict(line.split(" ", 1) for line in whole.decode().splitlines())

    def close(self) -> None:
        os.close(self._posts_fd)

    def answer(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        key = headers.get("idempotency-key")
        with self.lock:
            if key and key not in self.keys and len(self.keys) + 1 == self.hang_before:
                _hold(self.directory / "hung", key)
            status, text, stall = self._decide(key, headers, body)
            os.write(self._posts_fd, f"{key} {status}\n".encode())
            self.posts.append(Post(key, status, headers, body))
        if stall:
            _hold(self.directory / "stalled", str(key))
        if self.delay_ms:
            time.sleep(random.uniform(0, self.delay_ms) / 1000)
        return status, text.encode()

    def _decide(self, key: str | None, headers: dict[str, str], body: bytes) -> tuple[int, str, bool]:
        if self.script:
            return self.script.popleft(), "scripted answer", False
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return 401, "invalid_token", False
        if not key:
            return 400, "an Idempotency-Key is required", False
        if headers.get("content-type") == STATEMENT_TYPE:
            line = body.split(b"\n", 1)[0]
            if hashlib.sha256(line).hexdigest() != key:
                return 422, "the key does not name this statement", False
        digest = hashlib.sha256(body).hexdigest()
        taken = self.keys.get(key)
        if taken is not None:
            return (200, "duplicate", False) if taken == digest else (422, "key reused, another body", False)
        _write_synced(self.directory / "bodies" / key, body)
        with open(self.directory / "keys.log", "ab") as f:
            f.write(f"{key} {digest}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        self.keys[key] = digest
        return 201, "stored", len(self.keys) == self.stall_after


def _hold(marker: Path, key: str) -> None:
    """Say which request is held, then hold it until the process is killed."""
    marker.write_text(key)
    while True:
        time.sleep(3600)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a platform's server would
    timeout = 10
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        status, text = self.server.intake.answer({k.lower(): v for k, v in self.headers.items()}, body)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the posts log says it all


class _Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, intake: Intake, tls: ssl.SSLContext | None) -> None:
        self.intake = intake
        super().__init__(("127.0.0.1", port), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class ReceiverThread:
    """The intake served from a thread of the test, on a free port (or ``port``)."""

    def __init__(
        self, directory: Path, *, token: str | None = None, tls: ssl.SSLContext | None = None, port: int = 0
    ) -> None:
        self.intake = Intake(directory, token=token)
        self._server = _Server(port, self.intake, tls)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._server.server_address[1]}/intake"
        self._thread = threading.Thread(target=self._server.serve_forever, name="push-receiver", daemon=True)
        self._thread.start()

    @property
    def posts(self) -> list[Post]:
        with self.intake.lock:
            return list(self.intake.posts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self.intake.close()

    def __enter__(self) -> ReceiverThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--token-file", type=Path)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--stall-after", type=int, default=0)
    p.add_argument("--hang-before", type=int, default=0)
    args = p.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else None
    tls = server_context(args.cert, args.key) if args.cert else None
    intake = Intake(
        args.dir, token=token, delay_ms=args.delay_ms, stall_after=args.stall_after,
        hang_before=args.hang_before,
    )  # fmt: skip
    server = _Server(args.port, intake, tls)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
