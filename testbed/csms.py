"""A stand-in CSMS (a charger network's central system) for OCPP tests and the bench.

It answers the core messages of OCPP 1.6J and 2.0.1 with the `ocpp` package and records,
per charge point, every frame it received and sent as the bytes on the wire. It can be
stopped and started again on the same port (the network's CSMS going down and coming back).
Its answers use their own JSON style (a space after each separator, UTF-8 text), so a proxy
that re-serialised them would be caught.

::

    async with StandInCsms() as csms:
        url = csms.url  # ws://127.0.0.1:<port>
        ...
        csms.frames["CP-001"].received  # list[bytes]
        await csms.stop(); await csms.start()
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

LOOPBACK = "127.0.0.1"
F = TypeVar("F", bound=Callable[..., Any])


def _on(action: str) -> Callable[[F], F]:
    decorator: Callable[[F], F] = on(action)
    return decorator


@dataclass
class Frames:
    """What one charge point's connections carried, as bytes, in order (all connections)."""

    received: list[bytes] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    connections: int = 0


class _Wire:
    def __init__(self, ws: ServerConnection, frames: Frames, style: Callable[[str], str]) -> None:
        self._ws, self._frames, self._style = ws, frames, style

    async def recv(self) -> str:
        raw = await self._ws.recv(decode=False)
        self._frames.received.append(raw)
        return raw.decode("utf-8", errors="replace")  # a binary frame is garbage to OCPP, not a crash

    async def send(self, frame: str) -> None:
        frame = self._style(frame)
        await self._ws.send(frame)
        self._frames.sent.append(frame.encode("utf-8"))


def spaced(frame: str) -> str:
    """The CSMS's own JSON style: spaces after separators, non-ASCII as UTF-8."""
    return json.dumps(json.loads(frame), ensure_ascii=False, separators=(", ", ": "))


class StandInCsms:
    """OCPP 1.6J + 2.0.1 central system answering the core messages (async context manager)."""

    def __init__(self, host: str = LOOPBACK, port: int = 0, *, style: Callable[[str], str] = spaced) -> None:
        self.host, self._port, self._style = host, port, style
        self.frames: dict[str, Frames] = {}
        self.boots: dict[str, int] = {}
        self._server: Server | None = None
        self._ids = itertools.count(1000)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (again, on the same port after a stop)."""
        self._server = await serve(
            self._serve,
            self.host,
            self._port,
            subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
            compression=None,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection and stop listening (the CSMS is down)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> StandInCsms:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _serve(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        charger = path.rstrip("/").rsplit("/", 1)[-1]
        frames = self.frames.setdefault(charger, Frames())
        frames.connections += 1
        wire = _Wire(ws, frames, self._style)
        cp = _Cp16(charger, wire, self) if ws.subprotocol == "ocpp1.6" else _Cp201(charger, wire, self)
        with contextlib.suppress(ConnectionClosed):
            await cp.start()

    def now(self) -> str:
        return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    def booted(self, charger: str) -> None:
        self.boots[charger] = self.boots.get(charger, 0) + 1

    def transaction_id(self) -> int:
        return next(self._ids)


class _Cp16(ChargePoint16):  # type: ignore[misc]
    def __init__(self, charger: str, wire: _Wire, csms: StandInCsms) -> None:
        super().__init__(charger, wire)
        self._csms = csms

    @_on("BootNotification")
    def boot(self, **_: Any) -> result16.BootNotification:
        self._csms.booted(self.id)
        return result16.BootNotification(current_time=self._csms.now(), interval=300, status="Accepted")

    @_on("Heartbeat")
    def heartbeat(self, **_: Any) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=self._csms.now())

    @_on("StatusNotification")
    def status(self, **_: Any) -> result16.StatusNotification:
        return result16.StatusNotification()

    @_on("Authorize")
    def authorize(self, **_: Any) -> result16.Authorize:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @_on("StartTransaction")
    def start_transaction(self, **_: Any) -> result16.StartTransaction:
        return result16.StartTransaction(
            transaction_id=self._csms.transaction_id(), id_tag_info={"status": "Accepted"}
        )

    @_on("StopTransaction")
    def stop_transaction(self, **_: Any) -> result16.StopTransaction:
        return result16.StopTransaction(id_tag_info={"status": "Accepted"})

    @_on("MeterValues")
    def meter_values(self, **_: Any) -> result16.MeterValues:
        return result16.MeterValues()


class _Cp201(ChargePoint201):  # type: ignore[misc]
    def __init__(self, charger: str, wire: _Wire, csms: StandInCsms) -> None:
        super().__init__(charger, wire)
        self._csms = csms

    @_on("BootNotification")
    def boot(self, **_: Any) -> result201.BootNotification:
        self._csms.booted(self.id)
        return result201.BootNotification(current_time=self._csms.now(), interval=300, status="Accepted")

    @_on("Heartbeat")
    def heartbeat(self, **_: Any) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=self._csms.now())

    @_on("StatusNotification")
    def status(self, **_: Any) -> result201.StatusNotification:
        return result201.StatusNotification()

    @_on("Authorize")
    def authorize(self, **_: Any) -> result201.Authorize:
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @_on("TransactionEvent")
    def transaction_event(self, **_: Any) -> result201.TransactionEvent:
        return result201.TransactionEvent(total_cost=0)

    @_on("MeterValues")
    def meter_values(self, **_: Any) -> result201.MeterValues:
        return result201.MeterValues()
