"""The owner of one line: implements :class:`drivers.line.contract.Line` for a local serial
port or a TCP transparent serial server.

Every exchange takes the line's lock (FIFO, so devices take turns in the order they ask),
opens the port if it is closed (a failed open waits a jittered backoff before the next
try, so a dead serial server is not hammered), keeps ``inter_frame_delay_ms`` of silence
since the last frame (physical time, not the possibly fast clock), throws away whatever
arrived since (a late answer of the previous device), writes the request and lets the
protocol's :data:`~drivers.line.contract.AnswerReader` read its answer against the
request's deadline. A request's ``timeout_s`` runs from the write, not from the wait for
the lock: a dead device costs the line its own timeout and nothing more.

A caller cancelled mid-exchange releases the lock; the silence and the discard before the
next request keep its late answer off the next device's read, and each protocol checks
the address in the answer besides.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from typing import Protocol

import serial

from common.backoff import Backoff
from drivers.line.config import SerialLineConfig, TcpServerLineConfig, describe_line
from drivers.line.contract import AnswerReader, LineTimeout, LineUnreachable


@dataclass
class LineStats:
    """Counters of one line (status, bench)."""

    exchanges: int = 0
    sends: int = 0
    timeouts: int = 0
    opens: int = 0  # successful port opens / TCP connects
    open_failures: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    discarded: int = 0  # stale bytes thrown away before a request


class Inbox:
    """Bytes received from the line, and a wake-up for the one reader waiting on them."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._closed: str | None = None
        self.received = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data
        self.received += len(data)
        self._arrived.set()

    def close(self, reason: str) -> None:
        self._closed = reason
        self._arrived.set()

    def reopen(self) -> None:
        self._closed = None
        self._buffer.clear()

    def discard(self) -> int:
        """Throw away every byte received so far; returns how many."""
        n = len(self._buffer)
        self._buffer.clear()
        self._arrived.clear()
        return n

    async def read_exactly(self, n: int, deadline: float, where: str, timeout_s: float) -> bytes:
        """``n`` bytes, or :class:`LineTimeout` at ``deadline`` (loop time), or
        :class:`LineUnreachable` if the connection closes."""
        loop = asyncio.get_running_loop()
        while len(self._buffer) < n:
            if self._closed is not None:
                raise LineUnreachable(f"{where}: {self._closed}")
            self._arrived.clear()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                got = bytes(self._buffer)
                heard = f"; received {len(got)} byte(s) {got[:16].hex(' ')}" if got else ""
                raise LineTimeout(f"{where}: no complete answer within {timeout_s:g} s{heard}") from None
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out


class Port(Protocol):
    """The byte pipe under a line: opened into an :class:`Inbox`, written to, closed."""

    @property
    def is_open(self) -> bool: ...

    async def open(self, inbox: Inbox) -> None:
        """Open, feeding received bytes to ``inbox``; raises ``OSError`` or ``serial.SerialException``."""
        ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SerialPort:
    """A local serial port (pyserial), read through the event loop's reader callback."""

    def __init__(self, config: SerialLineConfig) -> None:
        self.config = config
        self._serial: serial.Serial | None = None
        self._inbox: Inbox | None = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    async def open(self, inbox: Inbox) -> None:
        c = self.config
        port = serial.Serial(
            c.port, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity, stopbits=c.stopbits,
            timeout=0, write_timeout=1.0, exclusive=True,
        )  # fmt: skip
        self._serial, self._inbox = port, inbox
        asyncio.get_running_loop().add_reader(port.fileno(), self._readable)

    def _readable(self) -> None:
        port, inbox = self._serial, self._inbox
        if port is None or inbox is None:
            return
        try:
            data = os.read(port.fileno(), 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            inbox.close(f"serial port {self.config.port} failed ({exc})")
            self.close()
            return
        if data:
            inbox.feed(data)

    def write(self, data: bytes) -> None:
        assert self._serial is not None
        self._serial.write(data)  # bytes go to the driver's buffer; the deadline covers the wire

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            asyncio.get_running_loop().remove_reader(port.fileno())
            port.close()


class _InboxProtocol(asyncio.Protocol):
    def __init__(self, inbox: Inbox, where: str) -> None:
        self.inbox = inbox
        self.where = where

    def data_received(self, data: bytes) -> None:
        self.inbox.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbox.close(f"the serial server closed the connection{f' ({exc})' if exc else ''}")


class TcpServerPort:
    """One TCP connection to a transparent serial server."""

    def __init__(self, config: TcpServerLineConfig) -> None:
        self.config = config
        self._transport: asyncio.Transport | None = None

    @property
    def is_open(self) -> bool:
        t = self._transport
        return t is not None and not t.is_closing()

    async def open(self, inbox: Inbox) -> None:
        c = self.config
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(c.connect_timeout_s):
            transport, _ = await loop.create_connection(
                lambda: _InboxProtocol(inbox, describe_line(c)), c.host, c.port
            )
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


def make_port(config: SerialLineConfig | TcpServerLineConfig) -> Port:
    return SerialPort(config) if isinstance(config, SerialLineConfig) else TcpServerPort(config)


class LineOwner:
    """The one owner of a line (async context manager; closes the port on exit)."""

    def __init__(
        self,
        config: SerialLineConfig | TcpServerLineConfig,
        *,
        port: Port | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.stats = LineStats()
        self.where = describe_line(config)
        self._port = port or make_port(config)
        self._inbox = Inbox()
        self._lock = asyncio.Lock()
        base, cap = (
            (config.reconnect_base_s, config.reconnect_max_s)
            if isinstance(config, TcpServerLineConfig)
            else (0.5, 30.0)
        )
        self._backoff = Backoff(base, cap, rng=rng or random.Random())
        self._failed_opens = 0
        self._retry_at = 0.0
        self._last_open_error = ""
        self._quiet_until = 0.0

    @property
    def id(self) -> str:
        return self.config.id

    async def __aenter__(self) -> LineOwner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._port.close()

    async def exchange(
        self, request: bytes, read_answer: AnswerReader, *, timeout_s: float, label: str
    ) -> bytes:
        """See :meth:`drivers.line.contract.Line.exchange`."""
        where = f"{label} on {self.where}"
        async with self._lock:
            await self._prepare(where)
            loop = asyncio.get_running_loop()
            self._write(request, where)
            deadline = loop.time() + timeout_s
            self.stats.exchanges += 1

            async def read(n: int) -> bytes:
                return await self._inbox.read_exactly(n, deadline, where, timeout_s)

            try:
                return await read_answer(read)
            except LineTimeout:
                self.stats.timeouts += 1
                raise
            except LineUnreachable:
                self._port.close()
                raise
            finally:
                self.stats.bytes_in = self._inbox.received
                self._quiet_until = loop.time() + self.config.inter_frame_delay_ms / 1000.0

    async def send(self, request: bytes, *, label: str) -> None:
        """See :meth:`drivers.line.contract.Line.send`."""
        where = f"{label} on {self.where}"
        async with self._lock:
            await self._prepare(where)
            self._write(request, where)
            self.stats.sends += 1
            wire = len(request) * self.config.byte_time_s()  # the frame is still going out
            loop = asyncio.get_running_loop()
            self._quiet_until = loop.time() + wire + self.config.inter_frame_delay_ms / 1000.0

    async def _prepare(self, where: str) -> None:
        await self._ensure_open(where)
        loop = asyncio.get_running_loop()
        silence = self._quiet_until - loop.time()
        if silence > 0:
            await asyncio.sleep(silence)  # physical silence on the wire, not clock time
        self.stats.discarded += self._inbox.discard()

    def _write(self, request: bytes, where: str) -> None:
        try:
            self._port.write(request)
        except (OSError, serial.SerialException) as exc:
            self._port.close()
            raise LineUnreachable(f"{where}: write failed ({exc})") from exc
        self.stats.bytes_out += len(request)

    async def _ensure_open(self, where: str) -> None:
        if self._port.is_open:
            return
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > 0:
            raise LineUnreachable(f"{where}: {self._last_open_error}; next attempt in {wait:.1f} s")
        self._inbox.reopen()
        try:
            await self._port.open(self._inbox)
        except (OSError, TimeoutError, serial.SerialException, ValueError) as exc:
            self._failed_opens += 1
            self.stats.open_failures += 1
            self._retry_at = loop.time() + self._backoff.delay(self._failed_opens - 1)
            self._last_open_error = f"cannot open ({str(exc) or type(exc).__name__})"
            raise LineUnreachable(f"{where}: {self._last_open_error}") from exc
        self._failed_opens = 0
        self.stats.opens += 1
