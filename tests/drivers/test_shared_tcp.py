"""Several unit ids behind one Modbus TCP gateway share one connection, taking turns."""

from __future__ import annotations

import asyncio

from common.clock import ManualClock
from drivers.modbus.profiles import load_profiles
from drivers.modbus.source import ModbusSource
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.modbus_tcp.driver import TcpConnections, TcpRegisterReader, UnitOnSharedConnection, tcp_policy
from firmware_sim.build import build_device
from firmware_sim.config import expand
from firmware_sim.modbus_server import ModbusPortServer
from tests.sim.helpers import fleet_config


async def test_four_units_behind_one_gateway_share_one_connection() -> None:
    load = {"model": "load"}
    devices = [
        {"kind": "sdm120", "name": f"m{u}", "unit": u, "initial_kwh": 100.0 * u, "physics": load}
        for u in range(1, 5)
    ]
    cfg = fleet_config(*devices)
    clock = ManualClock(cfg.clock.epoch_s)
    built = {s.unit: build_device(s, cfg, clock.now()) for s in expand(cfg)}
    server = ModbusPortServer(built, clock, port=0)
    await server.start()
    try:
        conn = ModbusTcpConnection(host="127.0.0.1", port=server.port, timeout_s=2)
        lone = ModbusTcpConnection(host="127.0.0.1", port=1, timeout_s=2)  # alone on its port: its own
        connections = TcpConnections([conn] * 4 + [lone])
        readers = [connections.reader(conn, tcp_policy(conn)) for _ in range(4)]
        assert all(isinstance(r, UnitOnSharedConnection) for r in readers)
        assert isinstance(connections.reader(lone, tcp_policy(lone)), TcpRegisterReader)
        fields = load_profiles()["sdm120"].fields
        sources = [
            ModbusSource(f"m{u}", fields, r, clock, unit=u) for u, r in zip(range(1, 5), readers, strict=True)
        ]
        results = []
        for _ in range(3):  # every meter's poll task at once, as the poller runs them
            results += await asyncio.gather(*(s.poll() for s in sources))
        shared = {id(r._shared) for r in readers}
        assert len(shared) == 1
        assert readers[0]._shared.reader.connects == 1
        assert server._server is not None and len(server._server.active_connections) == 1
        for s in sources:
            await s.__aexit__(None, None, None)
    finally:
        await server.stop()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    energy = {r.meter: v.value for r in results for v in r.samples if v.quantity == "energy_import"}
    assert energy == {f"m{u}": 100.0 * u for u in range(1, 5)}
