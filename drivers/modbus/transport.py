"""Translation of pymodbus outcomes into :mod:`drivers.modbus.errors`, at the boundary.

pymodbus returns exception responses (``rr.isError()``) and raises its own exceptions for
I/O problems; some versions raise ``ModbusIOException`` when the awaiting task is being
cancelled. :func:`translate` turns those into our errors, except that a task being
cancelled gets its ``CancelledError`` back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.modbus.errors import DeviceExceptionReply, DeviceTimeout, DeviceUnreachable, ModbusError
from drivers.modbus.plan import ReadRequest
from drivers.modbus.source import describe


def reraise_if_cancelling(exc: BaseException) -> None:
    """Raise ``CancelledError`` if the current task is being cancelled (pymodbus swallowed it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def translate(exc: ModbusException | OSError, where: str) -> ModbusError:
    """Our error for a pymodbus/socket exception (call :func:`reraise_if_cancelling` first)."""
    if isinstance(exc, ModbusIOException) and "no response" in str(exc).lower():
        return DeviceTimeout(f"{where}: no response ({exc})")
    if isinstance(exc, ConnectionException | ModbusIOException | OSError):
        return DeviceUnreachable(f"{where}: connection failed ({exc})")
    return ModbusError(f"{where}: {exc}")


def registers_of(response: Any, request: ReadRequest) -> list[int]:
    """The registers of a read response; :class:`DeviceExceptionReply` for an exception reply."""
    if response.isError():
        code = getattr(response, "exception_code", None)
        raise DeviceExceptionReply(f"{describe(request)}: exception reply (code {code})", code)
    return list(response.registers)


async def read_registers(client: Any, request: ReadRequest) -> list[int]:
    """One read on a connected pymodbus async client, errors translated."""
    read = client.read_input_registers if request.function == 4 else client.read_holding_registers
    try:
        response = await read(request.address, count=request.count, device_id=request.unit)
    except (ModbusException, OSError) as exc:
        reraise_if_cancelling(exc)
        raise translate(exc, describe(request)) from exc
    return registers_of(response, request)
