"""The transparent OCPP tap: chargers connect here, every frame goes on unchanged both ways.

A charger opens ``ws://<listen>/<charge point id>`` with subprotocol ``ocpp1.6`` or
``ocpp2.0.1``. Before answering its handshake the tap opens the same path on the upstream
CSMS, offering the same subprotocols (and passing the charger's ``Authorization`` header),
and accepts the subprotocol the CSMS chose. If the CSMS cannot be reached the charger's
handshake is refused (HTTP 502; the CSMS's own status if it refused): the charger sees its
CSMS down, nothing else. Afterwards each message is forwarded as received (text stays text,
the same bytes) before the tap reads it; a close on either side closes the other with the
same code. A frame the reader cannot use is reported to the sink, never altered or dropped.

::

    async with OcppTap(config, sink, clock) as tap:
        ...  # tap.port, tap.links["CP-001"].frames_from_charger, tap.refused
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from common.clock import Clock
from drivers.ocpp.config import TapConfig, enrolled_reader, server_context, upstream_context
from drivers.ocpp.metering import MeteringReader, MeteringSink, OcppVersion

log = logging.getLogger(__name__)

SUBPROTOCOLS: dict[str, OcppVersion] = {"ocpp1.6": "ocpp1.6", "ocpp2.0.1": "ocpp2.0.1"}
FORWARDED_HEADERS = ("Authorization",)  # OCPP security profiles 1 and 2: Basic auth of the charger
UNSENDABLE_CLOSE_CODES = (1005, 1006, 1015)  # reserved: may not be sent in a close frame


@dataclass
class LinkStats:
    """One charger's traffic through the tap (kept across reconnections)."""

    charger: str
    connected: bool = False
    connections: int = 0
    refused: int = 0  # handshakes refused because the CSMS was unreachable or said no
    frames_from_charger: int = 0
    frames_from_csms: int = 0
    bytes_from_charger: int = 0
    bytes_from_csms: int = 0
    reader_errors: int = 0
    last_error: str | None = None


@dataclass
class _Pending:
    charger: str
    upstream: ClientConnection


class OcppTap:
    """Transparent OCPP proxy with a metering reader on the way (async context manager)."""

    def __init__(self, config: TapConfig, sink: MeteringSink, clock: Clock) -> None:
        self.config = config
        self.sink = sink
        self.clock = clock
        self.links: dict[str, LinkStats] = {}
        self.readers: dict[str, MeteringReader] = {}
        self.refused = 0  # handshakes refused (all chargers), unknown paths included
        self._pending: dict[ServerConnection, _Pending] = {}
        self._server: Server | None = None
        self._upstream_ssl: ssl.SSLContext | None = upstream_context(config)
        self._server_ssl = (
            None if config.listen.tls is None else server_context(config.listen.tls, "tap.listen.tls")
        )
        self._closers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port chargers connect to (the bound one when the config says 0)."""
        if self._server is None:
            raise RuntimeError("the tap is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> OcppTap:
        listen = self.config.listen
        self._server = await serve(
            self._forward, listen.host, listen.port, ssl=self._server_ssl, compression=None,
            process_request=self._open_upstream, select_subprotocol=self._select_subprotocol,
            max_size=self.config.max_frame_bytes,
        )  # fmt: skip
        log.info("OCPP tap on %s:%s -> %s", listen.host, self.port, self.config.upstream)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pending in list(self._pending.values()):
            await pending.upstream.close()
        self._pending.clear()
        if self._closers:
            await asyncio.gather(*self._closers)

    # -- handshake ------------------------------------------------------------------------------------
    async def _open_upstream(self, conn: ServerConnection, request: Request) -> Response | None:
        charger = charger_id(request.path)
        if charger is None:
            self.refused += 1
            return conn.respond(404, "OCPP: connect to /<charge point id>\n")
        link = self.links.setdefault(charger, LinkStats(charger))
        headers = Headers((k, v) for k, v in request.headers.raw_items() if k.title() in FORWARDED_HEADERS)
        try:
            upstream = await connect(
                self._upstream_url(request.path), subprotocols=offered_subprotocols(request.headers) or None,
                additional_headers=headers, ssl=self._upstream_ssl, compression=None, proxy=None,
                open_timeout=self.config.open_timeout_s, max_size=self.config.max_frame_bytes,
            )  # fmt: skip
        except InvalidStatus as exc:  # the CSMS answered, and said no: the charger gets its answer
            return self._refuse(conn, link, exc.response.status_code, f"CSMS refused: {exc}")
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            return self._refuse(conn, link, 502, f"CSMS unreachable: {exc!r}")
        self._pending[conn] = _Pending(charger, upstream)
        # If the charger's side of the handshake fails, no handler runs: close the upstream then.
        conn.connection_lost_waiter.add_done_callback(lambda _: self._drop_pending(conn))
        return None

    def _refuse(self, conn: ServerConnection, link: LinkStats, status: int, why: str) -> Response:
        self.refused += 1
        link.refused += 1
        link.last_error = why
        log.warning("charger %s: handshake refused (%s): %s", link.charger, status, why)
        return conn.respond(status, "OCPP tap: the CSMS is not available\n")

    def _select_subprotocol(
        self, conn: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        pending = self._pending.get(conn)
        chosen = None if pending is None else pending.upstream.subprotocol
        return chosen if chosen in offered else None

    def _drop_pending(self, conn: ServerConnection) -> None:
        pending = self._pending.pop(conn, None)
        if pending is not None:
            task = asyncio.get_running_loop().create_task(pending.upstream.close(), name="ocpp-tap-close")
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    def _upstream_url(self, path: str) -> str:
        return self.config.upstream.rstrip("/") + path

    # -- forwarding -----------------------------------------------------------------------------------
    async def _forward(self, conn: ServerConnection) -> None:
        pending = self._pending.pop(conn, None)
        if pending is None:  # cannot happen after a successful handshake; close rather than hang
            await conn.close(1011, "no upstream")
            return
        upstream, link = pending.upstream, self.links[pending.charger]
        reader = self._reader(pending.charger)
        reader.open(SUBPROTOCOLS.get(conn.subprotocol or "", "ocpp1.6"))
        link.connected, link.connections = True, link.connections + 1
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump(conn, upstream, reader.from_charger, link, "charger"),
                               name=f"ocpp-tap-{pending.charger}-up")  # fmt: skip
                tg.create_task(self._pump(upstream, conn, reader.from_csms, link, "csms"),
                               name=f"ocpp-tap-{pending.charger}-down")  # fmt: skip
        finally:
            link.connected = False

    async def _pump(
        self,
        src: ServerConnection | ClientConnection,
        dst: ServerConnection | ClientConnection,
        observe: Callable[[str | bytes], None],
        link: LinkStats,
        side: Literal["charger", "csms"],
    ) -> None:
        """Forward ``src`` -> ``dst`` until one closes, then close the other with the same code."""
        try:
            while True:
                frame = await src.recv()
                await dst.send(frame)  # text stays text: websockets re-encodes the same UTF-8 bytes
                self._count(link, side, frame)
                self._read(observe, frame, link)
        except ConnectionClosed:
            pass
        finally:
            code, reason = closing(src.close_code, src.close_reason, side)
            with contextlib.suppress(ConnectionClosed):
                await dst.close(code, reason)

    @staticmethod
    def _count(link: LinkStats, side: str, frame: str | bytes) -> None:
        size = len(frame) if isinstance(frame, bytes) else len(frame.encode())
        if side == "charger":
            link.frames_from_charger += 1
            link.bytes_from_charger += size
        else:
            link.frames_from_csms += 1
            link.bytes_from_csms += size

    @staticmethod
    def _read(observe: Callable[[str | bytes], None], frame: str | bytes, link: LinkStats) -> None:
        try:
            observe(frame)
        except Exception as exc:  # the one guard: reading must never stop forwarding
            link.reader_errors += 1
            link.last_error = f"reader: {exc!r}"
            log.exception("charger %s: metering reader failed on a frame (forwarded unchanged)", link.charger)

    def _reader(self, charger: str) -> MeteringReader:
        if charger not in self.readers:
            self.readers[charger] = enrolled_reader(self.config.chargers, charger, self.sink, self.clock)
        return self.readers[charger]


def charger_id(path: str) -> str | None:
    """The charge point id: the last segment of the request path, URL-decoded."""
    segment = urllib.parse.urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1]
    charger = urllib.parse.unquote(segment)
    return charger or None


def offered_subprotocols(headers: Headers) -> list[Subprotocol]:
    """Sec-WebSocket-Protocol values in the charger's order of preference."""
    out: list[Subprotocol] = []
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        out.extend(Subprotocol(p.strip()) for p in value.split(",") if p.strip())
    return out


def closing(code: int | None, reason: str | None, side: str) -> tuple[int, str]:
    """The close to pass on: the same code and reason, or 1011 when the other side just vanished."""
    if code is None or code in UNSENDABLE_CLOSE_CODES:
        return 1011, f"{'charger' if side == 'charger' else 'CSMS'} connection lost"
    return code, reason or ""
