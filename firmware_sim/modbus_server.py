"""Serving devices over Modbus TCP or RTU with the pymodbus 3.16 simulator datastore.

One :class:`ModbusPortServer` is one listening TCP port (or one serial port) with one or
more unit ids, like a real device with its own IP or an RS-485 line behind a gateway.

How faults and freshness hook into pymodbus (public hooks only):

- ``SimDevice.action`` runs before every read of a valid address: it advances the
  device to the clock time of the request and writes the whole register image into the
  datastore in one synchronous step, so one Modbus read is always self-consistent. It
  also answers exception faults and rejects function codes the device does not have.
  Coils and discrete inputs (function 1, 2) are served from bit blocks the same way
  (pymodbus keeps them 16 to a word: a bit table's addresses are valid in whole words).
- ``trace_pdu`` sees every decoded request first: it counts requests per unit and, for
  timeout/drop faults, returns ``None``, which makes pymodbus skip the request (no reply);
  for drop it also closes the port's open connections.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from common.clock import Clock
from firmware_sim.device import Device
from firmware_sim.errors import ServeError
from firmware_sim.registers.base import BIT_TABLES, FC_COIL, FC_DISCRETE, FC_HOLDING, FC_INPUT, Block, UnitMap

log = logging.getLogger(__name__)
READ_FCS = frozenset({FC_COIL, FC_DISCRETE, FC_HOLDING, FC_INPUT})


def _table(blocks: list[Block]) -> list[SimData]:
    if not blocks:  # pymodbus cannot take an empty table: one invalid register instead
        return [SimData(0, datatype=DataType.INVALID)]
    return [
        SimData(b.start, count=b.length, datatype=DataType.REGISTERS, readonly=True)
        for b in sorted(blocks, key=lambda b: b.start)
    ]


def _bits(blocks: list[Block]) -> list[SimData]:
    if not blocks:  # no such table: one word of bits the action refuses to read
        return [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    return [
        SimData(b.start, values=[False] * b.length, datatype=DataType.BITS, readonly=True)
        for b in sorted(blocks, key=lambda b: b.start)
    ]


def _set_bits(registers: list[int], first_word: int, start: int, bits: list[int]) -> None:
    """Write ``bits`` (addresses from ``start``) into a bit table kept 16 to a word."""
    for i, bit in enumerate(bits):
        address = start + i
        word, mask = address // 16 - first_word, 1 << (address % 16)
        registers[word] = registers[word] | mask if bit else registers[word] & ~mask


class ModbusPortServer:
    """A Modbus TCP port or RTU line serving ``units`` (unit id -> device)."""

    def __init__(
        self,
        units: dict[int, Device],
        clock: Clock,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_path: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        self._units = units
        self._clock = clock
        self._host, self._port, self._serial = host, port, serial_path
        self._baudrate = baudrate
        self._server: ModbusBaseServer | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when 0 = auto was asked)."""
        server = self._server
        if server is None or server.transport is None:
            raise ServeError("server not started")
        sockets = getattr(server.transport, "sockets", None)
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        sim = [self._sim_device(unit, dev) for unit, dev in sorted(self._units.items())]
        server: ModbusBaseServer
        if self._serial is None:
            server = ModbusTcpServer(sim, address=(self._host, self._port), trace_pdu=self._trace)
        else:
            server = ModbusSerialServer(
                sim,
                framer=FramerType.RTU,
                port=self._serial,
                baudrate=self._baudrate,
                trace_pdu=self._trace,
            )
        self._server = server
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            where = self._serial or f"{self._host}:{self._port}"
            raise ServeError(f"cannot serve Modbus on {where}") from exc

    async def stop(self) -> None:
        if self._server is not None:
            self._drop_connections()
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    def _sim_device(self, unit: int, dev: Device) -> SimDevice:
        umap: UnitMap = dev.units[unit]
        table = {fc: [b for b in umap.blocks if b.fc == fc] for fc in READ_FCS}
        return SimDevice(
            unit,
            simdata=(
                _bits(table[FC_COIL]), _bits(table[FC_DISCRETE]),
                _table(table[FC_HOLDING]), _table(table[FC_INPUT]),
            ),
            action=functools.partial(self._action, unit),
        )  # fmt: skip

    async def _action(
        self,
        unit: int,
        func_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        _values: Any,
    ) -> ExcCodes | None:
        dev = self._units[unit]
        if func_code not in READ_FCS:
            return ExcCodes.ILLEGAL_FUNCTION if func_code in (5, 15) else ExcCodes.ILLEGAL_ADDRESS
        if func_code in BIT_TABLES and not any(b.fc == func_code for b in dev.units[unit].blocks):
            return ExcCodes.ILLEGAL_FUNCTION  # the device has no coils / discrete inputs
        code = dev.exception_code()
        if code is not None:
            return ExcCodes(code)
        for block, words in dev.render(unit, self._clock.now()).items():
            if block.fc != func_code:
                continue
            if func_code in BIT_TABLES:
                _set_bits(registers, start_address, block.start, words)
            else:
                off = block.start - start_address
                registers[off : off + len(words)] = words
        return None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            return pdu
        dev = self._units.get(pdu.dev_id)
        if dev is None:  # no such unit on this port/line: silence, like an absent RS-485 slave
            return cast(ModbusPDU, None)
        dev.count_request(pdu.dev_id)
        faults = dev.faults
        if faults.drop_connection and dev.fault_fires():
            self._drop_connections()
            return cast(ModbusPDU, None)  # pymodbus skips a request whose traced PDU is None
        if faults.timeout and dev.fault_fires():
            return cast(ModbusPDU, None)
        return pdu

    def _drop_connections(self) -> None:
        server = self._server
        if server is None:
            return
        for conn in list(server.active_connections.values()):
            conn.close()
