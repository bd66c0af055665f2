"""docs/commissioning.md as a reader would run it: the shipped fleet and site files, the clock
starting now, a stable path to the RS-485 line, then ``gateway check --live``.

Only the ports differ from the files as shipped (free loopback ports here, fixed ones there)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from testbed.servers import PrivateMosquitto, free_ports

pytestmark = pytest.mark.integration
DOCS = Path(__file__).resolve().parents[1] / "docs" / "commissioning"


async def _puhui(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "puhui", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


def _ported(text: str, ports: dict[str, int]) -> str:
    for fixed, free in ports.items():
        assert fixed in text, fixed  # the shipped file still uses the ports the page shows
        text = text.replace(fixed, str(free))
    return text


async def test_the_commissioning_page_runs_as_written(tmp_path: Path, mosquitto: PrivateMosquitto) -> None:
    tcp_a, tcp_b = free_ports(2)
    ports = {"15020": tcp_a, "15021": tcp_b, "18831": mosquitto.port}
    fleet, site = tmp_path / "fleet.yaml", tmp_path / "site.yaml"
    fleet.write_text(_ported((DOCS / "fleet.yaml").read_text(encoding="utf-8"), ports), encoding="utf-8")
    line = tmp_path / "rs485"
    site_text = _ported((DOCS / "site.yaml").read_text(encoding="utf-8"), ports)
    site.write_text(site_text.replace("/tmp/puhui-rs485", str(line)), encoding="utf-8")

    sim = await _puhui("sim", "run", "--fleet", str(fleet), "--epoch", "now", "--rtu-link", f"rs485={line}")
    assert sim.stdout is not None
    try:
        async with asyncio.timeout(30):
            while (await sim.stdout.readline()).decode().strip() != "ready":
                pass
        assert line.is_symlink()
        check = await _puhui("gateway", "check", "--config", str(site), "--live", "--mqtt-wait", "10")
        async with asyncio.timeout(60):
            out, err = await check.communicate()
        text = out.decode()
        assert check.returncode == 0, text + err.decode()
        for meter in ("boiler-elec", "boiler-heat", "roof-inverter", "hp-0", "hp-1", "garage-plug"):
            assert meter in text
        assert "skew" not in text  # the clock starts now: the MQTT meter's timestamps fit
    finally:
        sim.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            await sim.communicate()
    assert not line.exists() and not line.is_symlink()  # the link goes with the simulator
