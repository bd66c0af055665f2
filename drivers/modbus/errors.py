"""Errors of one Modbus read, translated from pymodbus at the transport boundary.

::

    DriverError                     (drivers.errors)
    └── ModbusError                 a read request failed; message names device and range
        ├── DeviceTimeout           no answer within the device's deadline
        ├── DeviceUnreachable       cannot connect, or the connection broke
        ├── DeviceExceptionReply    the device answered with a Modbus exception code
        └── NotModbusServer         something answered, but not in Modbus (an HTTP server...)

The pymodbus exception (if any) is chained as ``__cause__``. These errors never leave a
poll: :class:`drivers.modbus.source.ModbusSource` reports them in a ``PollResult``.
``asyncio.CancelledError`` is never translated into any of them.
"""

from __future__ import annotations

from drivers.errors import DriverError


class ModbusError(DriverError):
    """A Modbus read request failed."""


class DeviceTimeout(ModbusError, TimeoutError):
    """The device did not answer within its deadline."""


class DeviceUnreachable(ModbusError, ConnectionError):
    """The device cannot be connected to, or the connection was lost mid-request."""


class DeviceExceptionReply(ModbusError):
    """The device answered with a Modbus exception response."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotModbusServer(ModbusError):
    """Something answered on the port, but its bytes cannot be a Modbus reply (a web server,
    a console): a wrong port or address, not a slow device."""
