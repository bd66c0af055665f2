"""Local-controller mode: the gateway is the chargers' CSMS for metering.

Chargers connect to ``ws://<listen>/<charge point id>`` (``ocpp2.0.1`` preferred, then
``ocpp1.6``). The `ocpp` package's ChargePoint answers BootNotification, Heartbeat,
StatusNotification, Authorize, Start/StopTransaction, MeterValues and TransactionEvent; every
frame also passes the same :class:`~drivers.ocpp.metering.MeteringReader` the tap uses, so
both modes produce the same samples and session events. Boots and id tags are all accepted:
access control is the network's business, metering is ours.

::

    async with OcppController(config, sink, clock) as controller:
        ...  # controller.port, controller.connected
"""

from __future__ import annotations

import datetime
import itertools
import logging
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v16.enums import AuthorizationStatus, RegistrationStatus
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from ocpp.v201.enums import AuthorizationStatusEnumType, RegistrationStatusEnumType
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from common.clock import Clock
from drivers.ocpp.config import ControllerConfig, enrolled_reader, server_context
from drivers.ocpp.metering import MeteringReader, MeteringSink, OcppVersion
from drivers.ocpp.tap import SUBPROTOCOLS, charger_id

log = logging.getLogger(__name__)

OFFERED = [Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
F = TypeVar("F", bound=Callable[..., Any])


def _on(action: str) -> Callable[[F], F]:
    """``ocpp.routing.on`` with a type (the package ships none)."""
    decorator: Callable[[F], F] = on(action)
    return decorator


class _ReadingConnection:
    """The connection the ChargePoint talks through: every frame also goes to the reader."""

    def __init__(
        self, ws: ServerConnection, reader: MeteringReader, on_error: Callable[[Exception], None]
    ) -> None:
        self._ws, self._reader, self._on_error = ws, reader, on_error

    async def recv(self) -> str | bytes:
        frame = await self._ws.recv()
        self._read(self._reader.from_charger, frame)
        return frame

    async def send(self, frame: str) -> None:
        await self._ws.send(frame)
        self._read(self._reader.from_csms, frame)

    def _read(self, observe: Callable[[str | bytes], None], frame: str | bytes) -> None:
        try:
            observe(frame)
        except Exception as exc:  # noqa: BLE001 - reading must never stop answering the charger
            self._on_error(exc)


class OcppController:
    """An OCPP 1.6J / 2.0.1 CSMS for metering (async context manager)."""

    def __init__(
        self,
        config: ControllerConfig,
        sink: MeteringSink,
        clock: Clock,
        *,
        transaction_ids: Iterator[int] | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.clock = clock
        self.readers: dict[str, MeteringReader] = {}
        self.connected: set[str] = set()
        self.refused = 0
        self.reader_errors = 0
        # 1.6 transaction ids: from the clock's second on, so a restart does not reuse recent ones
        self._ids = transaction_ids or itertools.count(int(clock.now()) % 2**31)
        self._server: Server | None = None
        self._ssl = (
            None if config.listen.tls is None else server_context(config.listen.tls, "controller.listen.tls")
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the controller is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> OcppController:
        listen = self.config.listen
        self._server = await serve(
            self._serve, listen.host, listen.port, ssl=self._ssl, compression=None, subprotocols=OFFERED,
            process_request=self._admit, max_size=self.config.max_frame_bytes,
        )  # fmt: skip
        log.info("OCPP local controller on %s:%s", listen.host, self.port)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _admit(self, conn: ServerConnection, request: Request) -> Response | None:
        charger = charger_id(request.path)
        if charger is None or (not self.config.accept_unknown and charger not in self.config.chargers):
            self.refused += 1
            log.warning("OCPP controller: refused %r (not an enrolled charger)", request.path)
            return conn.respond(404, "unknown charge point\n")
        return None

    async def _serve(self, conn: ServerConnection) -> None:
        charger = charger_id(conn.request.path if conn.request else "") or ""
        version = SUBPROTOCOLS.get(conn.subprotocol or "")
        if version is None:
            await conn.close(1002, "offer subprotocol ocpp1.6 or ocpp2.0.1")
            return
        reader = self._reader(charger, version)
        link = _ReadingConnection(conn, reader, self._reader_failed)
        cp = _Cp16(charger, link, self) if version == "ocpp1.6" else _Cp201(charger, link, self)
        self.connected.add(charger)
        try:
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            self.connected.discard(charger)

    def _reader(self, charger: str, version: OcppVersion) -> MeteringReader:
        if charger not in self.readers:
            self.readers[charger] = enrolled_reader(self.config.chargers, charger, self.sink, self.clock)
        reader = self.readers[charger]
        reader.open(version)
        return reader

    def _reader_failed(self, exc: Exception) -> None:
        self.reader_errors += 1
        log.error("OCPP controller: metering reader failed on a frame: %r", exc, exc_info=exc)

    # -- what the handlers need -----------------------------------------------------------------------
    def now_iso(self) -> str:
        when = datetime.datetime.fromtimestamp(self.clock.now(), datetime.UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def next_transaction_id(self) -> int:
        return next(self._ids) % 2**31


class _Cp16(ChargePoint16):  # type: ignore[misc]
    def __init__(self, charger: str, connection: _ReadingConnection, controller: OcppController) -> None:
        super().__init__(charger, connection)
        self._ctl = controller

    @_on(Action16.boot_notification)
    def on_boot(self, **_: Any) -> result16.BootNotification:
        return result16.BootNotification(
            current_time=self._ctl.now_iso(), interval=self._ctl.config.heartbeat_interval_s,
            status=RegistrationStatus.accepted,
        )  # fmt: skip

    @_on(Action16.heartbeat)
    def on_heartbeat(self, **_: Any) -> result16.Heartbeat:
        return result16.Heartbeat(current_time=self._ctl.now_iso())

    @_on(Action16.status_notification)
    def on_status(self, **_: Any) -> result16.StatusNotification:
        return result16.StatusNotification()

    @_on(Action16.authorize)
    def on_authorize(self, **_: Any) -> result16.Authorize:
        return result16.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @_on(Action16.start_transaction)
    def on_start(self, **_: Any) -> result16.StartTransaction:
        return result16.StartTransaction(
            transaction_id=self._ctl.next_transaction_id(),
            id_tag_info={"status": AuthorizationStatus.accepted},
        )

    @_on(Action16.stop_transaction)
    def on_stop(self, **_: Any) -> result16.StopTransaction:
        return result16.StopTransaction()

    @_on(Action16.meter_values)
    def on_meter_values(self, **_: Any) -> result16.MeterValues:
        return result16.MeterValues()


class _Cp201(ChargePoint201):  # type: ignore[misc]
    def __init__(self, charger: str, connection: _ReadingConnection, controller: OcppController) -> None:
        super().__init__(charger, connection)
        self._ctl = controller

    @_on(Action201.boot_notification)
    def on_boot(self, **_: Any) -> result201.BootNotification:
        return result201.BootNotification(
            current_time=self._ctl.now_iso(), interval=self._ctl.config.heartbeat_interval_s,
            status=RegistrationStatusEnumType.accepted,
        )  # fmt: skip

    @_on(Action201.heartbeat)
    def on_heartbeat(self, **_: Any) -> result201.Heartbeat:
        return result201.Heartbeat(current_time=self._ctl.now_iso())

    @_on(Action201.status_notification)
    def on_status(self, **_: Any) -> result201.StatusNotification:
        return result201.StatusNotification()

    @_on(Action201.authorize)
    def on_authorize(self, **_: Any) -> result201.Authorize:
        return result201.Authorize(id_token_info={"status": AuthorizationStatusEnumType.accepted})

    @_on(Action201.transaction_event)
    def on_transaction_event(
        self, id_token: dict[str, Any] | None = None, **_: Any
    ) -> result201.TransactionEvent:
        if id_token is None:
            return result201.TransactionEvent()
        return result201.TransactionEvent(id_token_info={"status": AuthorizationStatusEnumType.accepted})

    @_on(Action201.meter_values)
    def on_meter_values(self, **_: Any) -> result201.MeterValues:
        return result201.MeterValues()
