"""A simulated RS-485 line: the bytes a master writes, offered to the devices on it.

:class:`SimLine` keeps the bytes received since the last frame and offers them to each
:class:`~firmware_sim.line_contract.LineResponder` in turn (any protocol: DL/T 645,
Modbus RTU, CJ/T 188). The first responder that recognises a whole frame consumes it and
its answer (if any) goes back; a buffer nobody claims is dropped after the line's silence
time, as real devices drop a garbled frame. With ``baudrate`` set, an answer is written
only after the request and the answer would have taken on the wire (11 bits a byte), so
a bench sees the line's own limit.

The line is reached as a real one would be:

- :func:`serve_pty`: a pseudo-terminal; the master opens the returned path like
  ``/dev/ttyUSB0``.
- :func:`serve_tcp`: a transparent serial server on a TCP port (raw bytes both ways, no
  header); answers go to the connection that sent the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from common.clock import Clock
from firmware_sim.line_contract import LineResponder, Taken

Writer = Callable[[bytes], None]
BITS_PER_BYTE = 11  # start, 8 data, parity, stop: the worst case a master must allow for


@dataclass
class LineCounters:
    frames: int = 0  # frames a responder claimed
    answers: int = 0
    dropped_bytes: int = 0  # bytes no responder claimed (garbage, or a frame of nobody)
    collisions: int = 0  # answers beyond the first to one frame (they are superimposed)


class SimLine:
    """One simulated line and the responders on it."""

    def __init__(
        self, name: str, clock: Clock, *, silence_s: float = 0.05, baudrate: int | None = None
    ) -> None:
        self.name = name
        self.responders: list[LineResponder] = []
        self.counters = LineCounters()
        self._clock = clock
        self._silence_s = silence_s  # wall seconds
        self._byte_s = BITS_PER_BYTE / baudrate if baudrate else 0.0
        self._buffer = bytearray()
        self._drop: asyncio.TimerHandle | None = None

    def add(self, responder: LineResponder) -> None:
        """Hang a device on the line (any protocol)."""
        self.responders.append(responder)

    def received(self, data: bytes, reply: Writer) -> None:
        """Bytes from the master; answers go to ``reply``."""
        self._buffer += data
        request_bytes = 0
        while self._buffer:
            taken = self._offer(bytes(self._buffer))
            if taken is None:
                break
            request_bytes += taken.consumed
            del self._buffer[: taken.consumed]
            self.counters.frames += 1
            if taken.answer is not None:
                self._answer(taken.answer, request_bytes, reply)
                request_bytes = 0
        self._arm_drop()

    def _offer(self, buffer: bytes) -> Taken | None:
        """Every device hears the frame; the one it addresses answers. Two answers to one
        frame (a wildcard request, or two devices with one address) collide as on a real
        pair: counted, and superimposed bytewise (the driven zeros win: AND), so the master
        sees a garbled frame, not one of the answers."""
        now = self._clock.now()
        heard = [t for r in self.responders if (t := r.take(buffer, now)) is not None and t.consumed > 0]
        if not heard:
            return None
        answers = [t for t in heard if t.answer is not None]
        self.counters.collisions += max(0, len(answers) - 1)
        if len(answers) < 2:
            return answers[0] if answers else heard[0]
        return Taken(answers[0].consumed, collide([t.answer for t in answers if t.answer is not None]))

    def _answer(self, answer: bytes, request_bytes: int, reply: Writer) -> None:
        self.counters.answers += 1
        wire = (request_bytes + len(answer)) * self._byte_s
        if wire <= 0:
            reply(answer)
        else:
            asyncio.get_running_loop().call_later(wire, reply, answer)

    def _arm_drop(self) -> None:
        if self._drop is not None:
            self._drop.cancel()
            self._drop = None
        if self._buffer:
            self._drop = asyncio.get_running_loop().call_later(self._silence_s, self._drop_unclaimed)

    def _drop_unclaimed(self) -> None:
        self.counters.dropped_bytes += len(self._buffer)
        self._buffer.clear()
        self._drop = None

    def close(self) -> None:
        if self._drop is not None:
            self._drop.cancel()
            self._drop = None


def collide(answers: list[bytes]) -> bytes:
    """What several answers sent at once look like on the line: ANDed byte by byte, as long
    as the longest."""
    wire = bytearray(max(answers, key=len))
    for answer in answers:
        for i, byte in enumerate(answer):
            wire[i] &= byte
    return bytes(wire)


@contextlib.asynccontextmanager
async def serve_pty(line: SimLine) -> AsyncIterator[str]:
    """Serve ``line`` on a pseudo-terminal; yields the path a master opens."""
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)

    def reply(data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(master, data)

    def readable() -> None:
        try:
            data = os.read(master, 4096)
        except (BlockingIOError, InterruptedError, OSError):  # EIO while the master's end reopens
            return
        if data:
            line.received(data, reply)

    loop.add_reader(master, readable)
    try:
        yield os.ttyname(slave)  # our slave fd stays open, so the master never sees EIO
    finally:
        loop.remove_reader(master)
        line.close()
        os.close(master)
        os.close(slave)


class _ServerSide(asyncio.Protocol):
    def __init__(self, line: SimLine, connections: set[asyncio.Transport]) -> None:
        self._line = line
        self._connections = connections
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(transport)

    def data_received(self, data: bytes) -> None:
        self._line.received(data, self._reply)

    def _reply(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._connections.discard(self._transport)
        self._transport = None


@dataclass
class TcpSerialServer:
    """A running simulated transparent serial server (see :func:`serve_tcp`)."""

    host: str
    port: int
    server: asyncio.Server
    connections: set[asyncio.Transport]

    def drop_connections(self) -> None:
        """Close every client connection (a server reboot, a flaky 4G link)."""
        for transport in list(self.connections):
            transport.close()


@contextlib.asynccontextmanager
async def serve_tcp(line: SimLine, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[TcpSerialServer]:
    """Serve ``line`` behind a simulated transparent serial server on ``host:port``."""
    loop = asyncio.get_running_loop()
    connections: set[asyncio.Transport] = set()
    server = await loop.create_server(lambda: _ServerSide(line, connections), host, port)
    bound = server.sockets[0].getsockname()[1]
    try:
        yield TcpSerialServer(host, int(bound), server, connections)
    finally:
        server.close()
        for transport in list(connections):
            transport.close()
        await server.wait_closed()
        line.close()
