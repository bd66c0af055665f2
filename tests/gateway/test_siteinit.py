"""``puhui gateway init`` against firmware_sim: the config it writes from a scan loads, makes a
gateway whose ``check --live`` reaches every meter, and the key and enrolment are made once.

Real tier: simulated meters over the simulator's RTU pty pair and real TCP, the session
Mosquitto for the MQTT topics, ``python -m puhui`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import sys
from pathlib import Path

import pytest

from common.clock import SystemClock
from evidence.enrolment import parse_enrolment
from evidence.keys import load_private_key
from firmware_sim import Fleet
from gateway.config import ModbusRtuMeter, ModbusTcpMeter, load_site
from gateway.siteinit import numeric_fields
from testbed.servers import PrivateMosquitto
from tests.sim.helpers import fleet_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RTU_PAIR = {"kind": "sdm120", "name": "hp-{i}", "count": 2, "unit": 5, "rtu_bus": "rs485",
            "physics": {"model": "heating"}}  # fmt: skip
INVERTER = {"kind": "sunspec_inverter", "name": "inv", "unit": 1, "physics": {"model": "pv", "kwp": 6.5}}
PLUG = {"kind": "mqtt_plain", "name": "plug", "interval_s": 0.5, "physics": {"model": "pv", "kwp": 0.8}}


async def _puhui(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "puhui", "gateway", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _paths(tmp_path: Path) -> list[str]:
    return ["--config", str(tmp_path / "etc/site.yaml"), "--key-file", str(tmp_path / "etc/gateway-key.pem"),
            "--state-dir", str(tmp_path / "state")]  # fmt: skip


async def test_init_from_an_rs485_scan_then_check_live_reaches_every_meter(tmp_path: Path) -> None:
    cfg = fleet_config(RTU_PAIR)
    async with Fleet(cfg, clock=SystemClock()) as fleet:
        pty = fleet.devices["hp-0"].endpoint.rtu_path or ""
        code, out, err = await _puhui(
            "init", "--serial", pty, "--units", "4-7", "--timeout", "1", "--gateway-id", "gw-init-1",
            "--site", "boiler room", "--owner", "root", *_paths(tmp_path),
        )  # fmt: skip
        assert (code, err) == (0, ""), out + err
        config = tmp_path / "etc/site.yaml"
        site = load_site(config)  # what init wrote loads with the gateway's own loader
        code, live, err = await _puhui("check", "--config", str(config), "--live")
    assert [(m.unit_id, m.driver) for m in site.meters] == [(5, "modbus_rtu"), (6, "modbus_rtu")]
    assert all(isinstance(m, ModbusRtuMeter) and m.connection.bus == "rs485-1" for m in site.meters)
    assert site.serial_buses[0].port == pty and site.gateway.site == "boiler room"
    text = config.read_text()
    assert text.count("# TODO") >= 8 and "# unit 5 answered on rtu" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    key_file = tmp_path / "etc/gateway-key.pem"
    key = load_private_key(key_file)  # 0600, or it would refuse
    assert f"new P-256 key, key id {key.key_id}" in out
    enrolment = parse_enrolment((tmp_path / "etc/enrolment.json").read_bytes())  # signature checked
    assert (enrolment.gateway, enrolment.key_id) == ("gw-init-1", key.key_id)
    assert [m.id for m in enrolment.meters] == ["meter-5", "meter-6"]
    assert "public key " in out and "next: puhui gateway check" in out
    # check --live confirms it: both meters answer, the key is the enrolled one.
    assert code == 0, live + err
    assert "2 of 2 meter(s) ok" in live and f"key id {key.key_id}" in live


async def test_init_recognises_a_sunspec_inverter_and_lists_mqtt_topics(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    mqtt = {"host": mosquitto.host, "port": mosquitto.port}
    cfg = fleet_config(INVERTER, PLUG, mqtt=mqtt)
    async with Fleet(cfg, clock=SystemClock()) as fleet:
        port = fleet.devices["inv"].endpoint.port or 0
        code, out, err = await _puhui(
            "init", "--host", "127.0.0.1", "--port", str(port), "--units", "1-2", "--timeout", "1",
            "--gateway-id", "gw-init-2", "--site", "roof", "--mqtt-host", mosquitto.host,
            "--mqtt-port", str(mosquitto.port), "--mqtt-wait", "3", *_paths(tmp_path),
        )  # fmt: skip
        assert (code, err) == (0, ""), out + err
        config = tmp_path / "etc/site.yaml"
        code, live, err = await _puhui("check", "--config", str(config), "--live")
    site = load_site(config)
    [inverter] = site.meters
    assert isinstance(inverter, ModbusTcpMeter) and inverter.connection.port == port
    assert (inverter.profile, inverter.counts, inverter.scenario) == ("sunspec", ("energy_generated",), "pv")
    text = config.read_text()
    assert "SunSpec inverter (models 1, 103)" in text
    topic_lines = [line for line in text.splitlines() if line.startswith("  #   source: {topic:")]
    assert topic_lines, text  # the plug's topic, as a meter template to uncomment
    assert code == 0 and "1 of 1 meter(s) ok" in live, live + err


async def test_init_refuses_to_overwrite_keeps_the_key_and_writes_nothing_when_nothing_answers(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    base = ["init", "--host", "127.0.0.1", "--port", str(closed), "--units", "1-3", "--gateway-id", "gw-x",
            "--site", "s", *_paths(tmp_path)]  # fmt: skip
    code, out, err = await _puhui(*base)
    assert code == 1 and "nothing written" in err and "Traceback" not in out + err
    assert "127.0.0.1" in err
    assert not (tmp_path / "etc").exists()

    cfg = fleet_config(INVERTER)
    async with Fleet(cfg, clock=SystemClock()) as fleet:
        port = str(fleet.devices["inv"].endpoint.port or 0)
        args = ["init", "--host", "127.0.0.1", "--port", port, "--units", "1", "--timeout", "1",
                "--gateway-id", "gw-x", "--site", "s", *_paths(tmp_path)]  # fmt: skip
        assert (await _puhui(*args))[0] == 0
        config = tmp_path / "etc/site.yaml"
        before, key_before = config.read_bytes(), (tmp_path / "etc/gateway-key.pem").read_bytes()
        config.write_bytes(before + b"# the installer's edit\n")
        code, out, err = await _puhui(*args)
        assert code == 2 and "exists; --force replaces it" in err
        assert config.read_bytes().endswith(b"# the installer's edit\n")
        code, out, err = await _puhui(*args, "--force")
    assert code == 0 and "existing key kept" in out, out + err
    assert (tmp_path / "etc/gateway-key.pem").read_bytes() == key_before
    code, out, err = await _puhui(*base[:-6], "--gateway-id", "gw x!", "--site", "s", *_paths(tmp_path)[2:])
    assert code == 2 and "--gateway-id" in err


def test_numeric_fields_of_payloads() -> None:
    assert numeric_fields(b'{"ENERGY": {"Total": 1.5, "Today": 2}, "on": true, "name": "x"}') == {
        "ENERGY.Total": 1.5,
        "ENERGY.Today": 2.0,
    }
    assert numeric_fields(b"not json") == {} and numeric_fields(b"[1, 2]") == {}
    assert numeric_fields(b"[" * 100_000) == {}
