"""``puhui sim run`` in a child process: table, ports file, control, clean stop on SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from common.clock import FastClock, FastClockSpec
from firmware_sim import control_request

pytestmark = pytest.mark.integration
FLEET = """
name: cli-test
clock: {epoch: "2025-01-15T00:00:00+08:00", factor: 600}
sites:
  - name: s
    devices:
      - {kind: sdm630, name: hp, physics: {model: heating}}
      - {kind: alfen, name: charger, physics: {model: ev}}
"""


async def _puhui(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "puhui",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_run_serves_reports_and_stops_on_sigint(tmp_path: Path) -> None:
    fleet, ports, truth = tmp_path / "fleet.yaml", tmp_path / "ports.json", tmp_path / "truth.json"
    fleet.write_text(FLEET)
    proc = await _puhui(
        "sim", "run", "--fleet", str(fleet), "--ports-out", str(ports), "--truth-out", str(truth)
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        lines = []
        async with asyncio.timeout(20):
            while not lines or lines[-1] != "ready":
                lines.append((await proc.stdout.readline()).decode().strip())
        table = "\n".join(lines)
        assert "hp" in table and "modbus-tcp 127.0.0.1:" in table and "unit 1,2,200" in table
        info = json.loads(ports.read_text())
        clock = FastClock.from_spec(FastClockSpec(**info["clock"]))
        assert clock.factor == 600
        hp = next(d for d in info["devices"] if d["name"] == "hp")
        control = info["control"]

        fault = await _puhui(
            "sim", "fault", "--control", f"127.0.0.1:{control['port']}", "hp", "--exception", "busy"
        )
        out, err = await fault.communicate()
        assert fault.returncode == 0, err
        assert json.loads(out)["faults"]["exception"] == "busy"
        async with AsyncModbusTcpClient("127.0.0.1", port=hp["port"], timeout=2) as c:
            rr = await c.read_input_registers(0x48, count=2, device_id=1)
            assert rr.isError() and rr.exception_code == 6
        status = await control_request("127.0.0.1", control["port"], {"op": "status"})
        assert status["devices"]["hp"]["requests"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            rest, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"stopped" in rest
    dump = json.loads(truth.read_text())
    assert set(dump["devices"]) == {"hp", "charger"}
    assert set(dump["devices"]["charger"]) == {"socket1", "socket2"}


async def test_check_reports_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [{name: s, devices: [{kind: sdm630, name: x, physics: {model: pv}}]}]\n")
    proc = await _puhui("sim", "check", str(bad))
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "bad.yaml: sites[0].devices[0].physics.kwp: Field required" in err.decode()
