"""Modbus TCP transport: one pymodbus connection per device (or one per host:port shared by
every unit id behind a Modbus TCP gateway), and a source factory.

pymodbus' own retries and background reconnects are switched off (``retries=0``,
``reconnect_delay=0``): :class:`drivers.modbus.source.ModbusSource` owns the policy, and
a dropped connection is reopened by the next read.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from common.clock import Clock
from drivers.modbus.errors import DeviceUnreachable
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profiles import RegisterField
from drivers.modbus.source import ModbusSource, ReadPolicy, RegisterReader, describe
from drivers.modbus.transport import ReplyWatch, read_registers, reraise_if_cancelling
from drivers.modbus_tcp.config import ModbusTcpConnection


class TcpRegisterReader:
    """One TCP connection to one device (or RTU-over-TCP gateway), opened on first read."""

    def __init__(self, host: str, port: int, *, timeout_s: float, idle_close_s: float | None = None) -> None:
        self.label = f"tcp {host}:{port}"
        self.connects = 0
        self._client = AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        self._watch = ReplyWatch(self._client)  # a port that is not Modbus fails at once, saying so
        self._idle_close_s = idle_close_s
        self._last_used: float | None = None

    async def read(self, request: ReadRequest) -> list[int]:
        loop = asyncio.get_running_loop()
        if self._stale(loop.time()):
            # Devices like Alfen's chargers drop a connection idle for 60 s without a FIN we
            # would notice; reopen before they do instead of losing a request to a dead socket.
            self._client.close()
        if not self._client.connected:
            await self._connect(request)
        try:
            return await read_registers(self._client, request, self._watch)
        finally:
            self._last_used = loop.time()  # idle time is physical time, not (fast) clock time

    def _stale(self, now: float) -> bool:
        return (
            self._idle_close_s is not None
            and self._last_used is not None
            and self._client.connected
            and now - self._last_used >= self._idle_close_s
        )

    async def _connect(self, request: ReadRequest) -> None:
        self.connects += 1
        try:
            connected = await self._client.connect()
        except (ModbusException, OSError) as exc:
            reraise_if_cancelling(exc)
            raise DeviceUnreachable(f"{describe(request)}: cannot connect ({exc})") from exc
        if not connected:
            raise DeviceUnreachable(f"{describe(request)}: cannot connect")

    async def reset(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        self._client.close()


class SharedTcpConnection:
    """One connection to a Modbus TCP gateway, shared by every unit id behind it.

    Many such gateways (and the serial line behind them) take one request at a time and
    drop or confuse concurrent connections; :class:`UnitOnSharedConnection` readers of one
    ``host:port`` take turns on this connection (a FIFO lock), so the meters' concurrent
    poll tasks never put two requests on it at once.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float, idle_close_s: float | None = None) -> None:
        self.reader = TcpRegisterReader(host, port, timeout_s=timeout_s, idle_close_s=idle_close_s)
        self.lock = asyncio.Lock()
        self.users = 0

    async def aclose(self) -> None:
        await self.reader.aclose()


class UnitOnSharedConnection:
    """One meter's reads on a :class:`SharedTcpConnection` (a :class:`RegisterReader`)."""

    def __init__(self, shared: SharedTcpConnection) -> None:
        self.label = f"{shared.reader.label} (shared)"
        self._shared = shared
        shared.users += 1

    async def read(self, request: ReadRequest) -> list[int]:
        async with self._shared.lock:
            return await self._shared.reader.read(request)

    async def reset(self) -> None:
        """Keep the connection for the other units: a broken one reconnects at the next read,
        and pymodbus drops a late answer by its transaction id."""

    async def aclose(self) -> None:
        self._shared.users -= 1
        if self._shared.users == 0:
            await self._shared.aclose()


class TcpConnections:
    """The gateway's Modbus TCP connections: one per host:port that several meters share
    (a Modbus TCP gateway with many unit ids behind it), one per meter otherwise."""

    def __init__(self, connections: Sequence[ModbusTcpConnection]) -> None:
        self._count = Counter((c.host, c.port) for c in connections)
        self._shared: dict[tuple[str, int], SharedTcpConnection] = {}

    def reader(self, connection: ModbusTcpConnection, policy: ReadPolicy) -> RegisterReader:
        key = (connection.host, connection.port)
        if self._count[key] < 2:
            return tcp_reader(connection, policy)
        if key not in self._shared:
            self._shared[key] = SharedTcpConnection(
                connection.host,
                connection.port,
                timeout_s=policy.timeout_s,
                idle_close_s=connection.idle_close_s,
            )
        return UnitOnSharedConnection(self._shared[key])


def tcp_reader(connection: ModbusTcpConnection, policy: ReadPolicy) -> TcpRegisterReader:
    """The register reader for ``connection`` (idle close as configured)."""
    return TcpRegisterReader(
        connection.host, connection.port, timeout_s=policy.timeout_s, idle_close_s=connection.idle_close_s
    )


def tcp_policy(connection: ModbusTcpConnection) -> ReadPolicy:
    """The read policy of a TCP meter: timeout and retries from its connection."""
    return ReadPolicy(timeout_s=connection.timeout_s, retries=connection.retries)


def tcp_source(
    meter: str,
    connection: ModbusTcpConnection,
    unit: int,
    fields: Sequence[RegisterField],
    clock: Clock,
    *,
    max_gap: int = 0,
    policy: ReadPolicy | None = None,
    rng: random.Random | None = None,
    connections: TcpConnections | None = None,
) -> ModbusSource:
    """A source for a Modbus TCP meter; timeout and retries come from ``connection`` unless
    a ``policy`` is given; with ``connections``, a host:port other meters use is shared."""
    policy = policy or tcp_policy(connection)
    reader = tcp_reader(connection, policy) if connections is None else connections.reader(connection, policy)
    return ModbusSource(meter, fields, reader, clock, unit=unit, policy=policy, max_gap=max_gap, rng=rng)
