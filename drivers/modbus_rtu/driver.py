"""Modbus RTU transport: one owner task per serial bus, serialising every request on it.

:class:`SerialBusOwner` (async context manager) owns the bus's pymodbus serial client and a
TaskGroup with one named task (``rtu-bus:<id>``) that takes requests from a queue, one at a
time, and keeps ``inter_frame_delay_ms`` of silence after each answer. Meters on the bus
read through :class:`RtuRegisterReader`, which only queues and waits, so any number of
per-meter poll tasks can share the bus without locks.

A request whose caller gave up (deadline or cancel) before the owner reached it is
dropped; once on the wire it runs to the bus timeout, because an RTU frame cannot be
withdrawn and the next frame must not collide with a late answer. So a meter's
:class:`~drivers.modbus.source.ReadPolicy` deadline, which includes the wait in the queue,
should exceed the bus timeout (:func:`rtu_source` uses twice the bus timeout by default).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException

from common.clock import Clock
from drivers.modbus.errors import DeviceUnreachable, ModbusError
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profiles import RegisterField
from drivers.modbus.source import ModbusSource, ReadPolicy, describe
from drivers.modbus.transport import read_registers, reraise_if_cancelling
from drivers.modbus_rtu.config import SerialBus

_Job = tuple[ReadRequest, "asyncio.Future[list[int]]"]


class SerialBusOwner:
    """The one owner of a serial bus (async context manager)."""

    def __init__(self, bus: SerialBus) -> None:
        self.bus = bus
        self.frames = 0  # requests put on the wire
        self._client = AsyncModbusSerialClient(
            bus.port, baudrate=bus.baudrate, bytesize=bus.bytesize, parity=bus.parity,
            stopbits=bus.stopbits, timeout=bus.timeout_s, retries=0, reconnect_delay=0,
        )  # fmt: skip
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._group = asyncio.TaskGroup()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SerialBusOwner:
        await self._group.__aenter__()
        self._task = self._group.create_task(self._serve(), name=f"rtu-bus:{self.bus.id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await self._group.__aexit__(None, None, None)
        finally:
            self._client.close()
            while not self._queue.empty():
                self._queue.get_nowait()[1].cancel()

    async def read(self, request: ReadRequest) -> list[int]:
        """Queue a read and wait for its turn and answer. Raises :class:`ModbusError`."""
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _serve(self) -> None:
        while True:
            request, future = await self._queue.get()
            if future.done():  # the caller gave up while queued
                continue
            self.frames += 1
            try:
                registers = await self._transact(request)
            except ModbusError as exc:
                _settle(future, exc)
            else:
                _settle(future, registers)
            finally:
                future.cancel()  # no-op once settled; frees the caller if the owner itself fails
            # silence on the wire is physical time, not (possibly fast) clock time
            await asyncio.sleep(self.bus.inter_frame_delay_ms / 1000.0)

    async def _transact(self, request: ReadRequest) -> list[int]:
        if not self._client.connected:
            try:
                connected = await self._client.connect()
            except (ModbusException, OSError) as exc:
                reraise_if_cancelling(exc)
                raise DeviceUnreachable(f"{describe(request)}: cannot open {self.bus.port} ({exc})") from exc
            if not connected:
                raise DeviceUnreachable(f"{describe(request)}: cannot open {self.bus.port}")
        return await read_registers(self._client, request)


def _settle(future: asyncio.Future[list[int]], outcome: list[int] | ModbusError) -> None:
    if future.done():  # the caller's deadline passed while the frame was on the wire
        return
    if isinstance(outcome, ModbusError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class RtuRegisterReader:
    """One meter's view of a shared bus: reads go through the bus owner."""

    def __init__(self, owner: SerialBusOwner) -> None:
        self.label = f"rtu {owner.bus.id}"
        self._owner = owner

    async def read(self, request: ReadRequest) -> list[int]:
        return await self._owner.read(request)

    async def reset(self) -> None:
        """Nothing to drop: the connection belongs to the bus, not to one meter."""

    async def aclose(self) -> None:
        """The bus owner closes the port."""


def rtu_policy(owner: SerialBusOwner) -> ReadPolicy:
    """The read policy of a meter on ``owner``'s bus: a request may first wait for the bus."""
    return ReadPolicy(timeout_s=2 * owner.bus.timeout_s)


def rtu_source(
    meter: str,
    owner: SerialBusOwner,
    unit: int,
    fields: Sequence[RegisterField],
    clock: Clock,
    *,
    max_gap: int = 0,
    policy: ReadPolicy | None = None,
    rng: random.Random | None = None,
) -> ModbusSource:
    """A source for an RTU meter on ``owner``'s bus (enter the owner before polling)."""
    policy = policy or rtu_policy(owner)
    reader = RtuRegisterReader(owner)
    return ModbusSource(meter, fields, reader, clock, unit=unit, policy=policy, max_gap=max_gap, rng=rng)
