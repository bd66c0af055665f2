"""Translation of pymodbus outcomes into :mod:`drivers.modbus.errors`, at the boundary.

pymodbus returns exception responses (``rr.isError()``) and raises its own exceptions for
I/O problems; some versions raise ``ModbusIOException`` when the awaiting task is being
cancelled. :func:`translate` turns those into our errors, except that a task being
cancelled gets its ``CancelledError`` back.

A port that is not a Modbus server (an HTTP server answering "400 Bad Request") makes
pymodbus log an ERROR with a hex dump of every reply, drop the bytes and wait for its
timeout. A :class:`ReplyWatch` on the client's connection sees those bytes arrive, ends
the read at once with :class:`NotModbusServer` ("not a Modbus server
(answered with 'HTTP/1.1 400 Bad Request')"), and the pymodbus errors our own error
reports are quieted (:func:`quiet_reported_pymodbus_errors`), so the poll loop says it
once per state change instead of a dump per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.modbus.errors import (
    DeviceExceptionReply,
    DeviceTimeout,
    DeviceUnreachable,
    ModbusError,
    NotModbusServer,
)
from drivers.modbus.plan import BIT_FUNCTIONS, ReadRequest
from drivers.modbus.source import describe

T = TypeVar("T")
MBAP_HEADER = 7  # transaction id, protocol id (0), length, unit id
MAX_LENGTH = 254  # the MBAP length field: unit id + a PDU of at most 253 bytes
# What pymodbus logs at ERROR about a request that then fails with an error of ours (which
# names the device): a reply that is no Modbus, no reply, a reply for another unit.
_REPORTED = (
    "Invalid Modbus protocol id",
    "No response received after",
    "ERROR: request ask for",
    "Repeating",
)


class _ReportedByUs(logging.Filter):
    """Drops pymodbus' ERROR lines (and their hex dumps) that our errors report, unless
    pymodbus' logger is at DEBUG (someone is looking at the frames)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return True
        return not str(record.msg).startswith(_REPORTED)


_QUIET = _ReportedByUs()


def quiet_reported_pymodbus_errors() -> None:
    """Install the filter on pymodbus' logger (idempotent)."""
    logging.getLogger("pymodbus.logging").addFilter(_QUIET)


def plausible_modbus_tcp(data: bytes) -> bool:
    """Whether ``data`` can be the start of a Modbus TCP reply (protocol id 0, a length a
    PDU can have); a few bytes are given the benefit of the doubt."""
    if len(data) >= 4 and data[2:4] != b"\0\0":
        return False
    return len(data) < 6 or 2 <= int.from_bytes(data[4:6], "big") <= MAX_LENGTH


def describe_reply(data: bytes) -> str:
    """``'HTTP/1.1 400 Bad Request'`` (the first line of a text reply) or the first bytes in hex."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r")[:60]
    if first and all(32 <= b < 127 for b in first):
        return repr(first.decode("ascii"))
    return " ".join(f"{b:02x}" for b in data[:16]) + (" ..." if len(data) > 16 else "")


class _NotModbusReply(Exception):
    """Set on pymodbus' pending response by a :class:`ReplyWatch` (turned into our error)."""


class ReplyWatch:
    """The bytes one pymodbus TCP client received for the request in flight.

    It taps the client's asyncio protocol (``data_received``, asyncio's Protocol API; a
    pymodbus client reuses one protocol object for every connection): pymodbus drops a
    chunk longer than a Modbus frame (an HTML error page) before any hook of its own sees
    it. Bytes that cannot be Modbus end the read in flight at once: the watch fails the
    response pymodbus is waiting for (its transaction manager's ``response_future``,
    pymodbus 3.16), so no task or timer of its own runs per read. A client without that
    protocol object leaves the watch blind (such replies end as timeouts, then reported
    as not Modbus from what was received); one without ``response_future`` ends them at
    its own timeout, reported the same way."""

    KEEP = 512  # bytes kept of a reply: enough to describe it

    def __init__(self, client: Any) -> None:
        self.received = b""
        self._watching = False
        self._garbage = b""
        quiet_reported_pymodbus_errors()
        self._protocol = protocol = getattr(client, "ctx", None)
        receive = getattr(protocol, "data_received", None)
        if protocol is not None and callable(receive):

            def data_received(data: bytes) -> None:
                self._saw(data)
                receive(data)

            protocol.data_received = data_received

    def _saw(self, data: bytes) -> None:
        self.received = (self.received + data)[: self.KEEP]
        if self._watching and not self._garbage and not plausible_modbus_tcp(self.received):
            self._garbage = self.received
            pending = getattr(self._protocol, "response_future", None)
            if isinstance(pending, asyncio.Future) and not pending.done():
                pending.set_exception(_NotModbusReply())

    async def guard(self, read: Awaitable[T], request: ReadRequest) -> T:
        """Await ``read`` (a request on the watched client), or raise :class:`NotModbusServer`
        as soon as a reply arrives that cannot be Modbus."""
        self.received = self._garbage = b""
        self._watching = True
        try:
            return await read
        except _NotModbusReply:
            raise NotModbusServer(not_modbus(describe(request), self._garbage)) from None
        finally:
            self._watching = False


def not_modbus(where: str, data: bytes) -> str:
    return f"{where}: not a Modbus server (answered with {describe_reply(data)})"


def reraise_if_cancelling(exc: BaseException) -> None:
    """Raise ``CancelledError`` if the current task is being cancelled (pymodbus swallowed it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def translate(exc: ModbusException | OSError, where: str, received: bytes = b"") -> ModbusError:
    """Our error for a pymodbus/socket exception (call :func:`reraise_if_cancelling` first);
    ``received``: what the connection got for the request (a :class:`ReplyWatch`'s)."""
    if received and not plausible_modbus_tcp(received):
        return NotModbusServer(not_modbus(where, received))
    if isinstance(exc, ModbusIOException) and "no response" in str(exc).lower():
        return DeviceTimeout(f"{where}: no response ({exc})")
    if isinstance(exc, ConnectionException | ModbusIOException | OSError):
        return DeviceUnreachable(f"{where}: connection failed ({exc})")
    return ModbusError(f"{where}: {exc}")


def registers_of(response: Any, request: ReadRequest) -> list[int]:
    """The registers of a read response (coils and discrete inputs: ``count`` bits as 0/1;
    pymodbus pads them to whole bytes); :class:`DeviceExceptionReply` for an exception reply."""
    if response.isError():
        code = getattr(response, "exception_code", None)
        raise DeviceExceptionReply(f"{describe(request)}: exception reply (code {code})", code)
    if request.function in BIT_FUNCTIONS:
        bits = list(response.bits)
        if len(bits) < request.count:
            raise ModbusError(f"{describe(request)}: answer carries {len(bits)} bits, {request.count} asked")
        return [int(b) for b in bits[: request.count]]
    return list(response.registers)


_READS = {
    1: "read_coils",
    2: "read_discrete_inputs",
    3: "read_holding_registers",
    4: "read_input_registers",
}


async def read_registers(client: Any, request: ReadRequest, watch: ReplyWatch | None = None) -> list[int]:
    """One read on a connected pymodbus async client, errors translated; with the
    connection's ``watch``, a reply that is not Modbus ends it as :class:`NotModbusServer`.
    (pymodbus' error lines that our errors report are quieted by the watch, or here.)"""
    read = getattr(client, _READS[request.function])
    if watch is None:
        quiet_reported_pymodbus_errors()
    try:
        pending = read(request.address, count=request.count, device_id=request.unit)
        response = await (pending if watch is None else watch.guard(pending, request))
    except (ModbusException, OSError) as exc:
        reraise_if_cancelling(exc)
        raise translate(exc, describe(request), watch.received if watch is not None else b"") from exc
    return registers_of(response, request)
