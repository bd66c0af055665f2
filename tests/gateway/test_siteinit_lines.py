"""``puhui gateway init`` on a shared line of DL/T 645 and CJ/T 188 meters, against firmware_sim:
the config it writes loads; once the installer has filled the TODOs, ``check --live`` reads every
meter; the wildcard scans, collisions, abnormal answers and usage errors say what they found.

Real tier: simulated meters on a simulated RS-485 line behind a simulated transparent serial
server (real TCP) or on a pseudo-terminal, ``python -m puhui`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import SystemClock
from evidence.enrolment import parse_enrolment
from firmware_sim import Fleet, FleetConfig, parse_fleet
from gateway.config import Cjt188Meter, Dlt645Meter, load_site
from puhui.cli import main
from testbed.servers import free_ports

REPO = Path(__file__).resolve().parents[2]
HOUSE_A, HOUSE_B, HOUSE_ABSENT = "000012345601", "000012345602", "000012345699"
HEAT = "20250000000101"
PLATES = {  # the rating plates the installer reads
    "elec": '{rated_power_kw: 8, meter_class: "1"}',
    "heat": "{rated_power_kw: 12, meter_class: heat_2}",
}


def _fleet(*devices: dict[str, Any], serve: str = "tcp_server") -> FleetConfig:
    data = {
        "clock": {"epoch": "2025-01-15T00:00:00+00:00", "factor": 1},
        "sites": [{"name": "village", "lines": [{"name": "east", "serve": serve}], "devices": list(devices)}],
    }
    return parse_fleet(data, "test-fleet")


def _houses(count: int) -> dict[str, Any]:
    name = "house-{i}" if count > 1 else "house-0"  # a template only for several
    return {"kind": "dlt645_meter", "name": name, "count": count, "line": "east", "address": HOUSE_A,
            "initial_kwh": 2024.5, "physics": {"model": "heating", "rated_kw": 8.0}}  # fmt: skip


def _heat(energy_unit: str = "GJ") -> dict[str, Any]:
    return {"kind": "cjt188_heat_meter", "name": "flat-0", "line": "east", "address": HEAT,
            "energy_unit": energy_unit, "initial_kwh": 12345.67,
            "physics": {"model": "heating", "rated_kw": 12.0}}  # fmt: skip


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


def _server(fleet: Fleet) -> list[str]:
    server = fleet.line_servers["village/east"]
    return ["--host", server.host, "--port", str(server.port)]


def _installer_edits(text: str) -> str:
    """What the installer does with the TODOs of the meters: names, scenario, rating plates."""
    out, kind = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or "# TODO" not in line:
            out.append(line)
            continue
        key, value = line.split("# TODO")[0].strip().removeprefix("- ").split(":", 1)
        if key == "id":
            kind = value.strip().split("-")[0]
            line = f"  - id: {kind}-{value.strip()[-2:]}"
        elif key == "scenario":
            line = "    scenario: clean_heating"
        elif key == "nameplate":
            plate = PLATES[kind]
            line = f"    nameplate: {plate}"
        else:
            raise AssertionError(f"a TODO the test does not know how to fill: {line}")
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.integration
async def test_init_on_a_village_line_then_the_installers_edits_pass_check_live(tmp_path: Path) -> None:
    cfg = _fleet(_houses(2), _heat("GJ"))
    async with Fleet(cfg, clock=SystemClock()) as fleet:
        listed = ",".join((HOUSE_A, HOUSE_B, HOUSE_ABSENT, HEAT))
        code, out, err = await _puhui(
            "init", *_server(fleet), "--dlt645", "--cjt188", "--addresses", listed, "--timeout", "1",
            "--gateway-id", "gw-village", "--site", "village", *_paths(tmp_path),
        )  # fmt: skip
        assert (code, err) == (0, ""), out + err
        house_kwh = fleet.devices["house-0"].meter().counter_wh() / 1000.0
        config = tmp_path / "etc/site.yaml"
        written = config.read_text()
        site = load_site(config)  # what init wrote loads with the gateway's own loader
        config.write_text(_installer_edits(written))
        edited = load_site(config)
        code, live, err = await _puhui("check", "--config", str(config), "--live")
        heat_kwh = fleet.devices["flat-0"].meter().counter_wh() / 1000.0
    # the scan: both houses and the heat meter answer, the listed third house does not
    printed = re.search(rf"DL/T 645 meter {HOUSE_A} answers: forward active energy ([0-9.]+) kWh", out)
    assert printed is not None and float(printed.group(1)) == pytest.approx(house_kwh, abs=0.05), out
    assert f"DL/T 645 meter {HOUSE_ABSENT} not found: no answer within 1 s" in out
    assert f"CJ/T 188 meter {HEAT} answers: heat energy" in out and "unit code 11: counts in GJ" in out
    # the config: the line, one meter per answering address with the driver's defaults
    [line] = site.lines
    assert (line.kind, line.id, line.baudrate, line.parity) == ("tcp_server", "line-1", 2400, "E")
    assert [(m.driver, m.connection.address) for m in site.meters] == [
        ("dlt645", HOUSE_A), ("dlt645", HOUSE_B), ("cjt188", HEAT)
    ]  # fmt: skip
    house, heat = site.meters[0], site.meters[2]
    assert isinstance(house, Dlt645Meter) and house.read == ("energy_import", "energy_export", "power")
    assert isinstance(heat, Cjt188Meter) and heat.energy_unit == "GJ"  # told by the meter's unit code
    assert heat.counts == ("heat_energy", "flow_temperature", "return_temperature")
    assert f"  # - id: elec-{HOUSE_ABSENT}" in written and f"{HOUSE_ABSENT} did not answer" in written
    assert "energy_unit: GJ      # from the meter's unit code 11" in written
    # TODOs: name, scenario and nameplate of each DL/T 645 meter; name and nameplate of the heat meter
    todo = [ln for ln in written.splitlines() if "# TODO" in ln and not ln.lstrip().startswith("#")]
    assert len(todo) == 8, todo
    enrolment = parse_enrolment((tmp_path / "etc/enrolment.json").read_bytes())
    assert [m.id for m in enrolment.meters] == [f"elec-{HOUSE_A}", f"elec-{HOUSE_B}", f"heat-{HEAT}"]
    # after the installer's edits, check --live reads all three meters
    assert [m.id for m in edited.meters] == ["elec-01", "elec-02", "heat-01"]
    assert edited.meters[2].nameplate.meter_class == "heat_2"
    assert code == 0, live + err
    assert "3 of 3 meter(s) ok, 0 warning(s)" in live, live
    for address in (HOUSE_A, HOUSE_B, HEAT):
        assert re.search(rf"address {address}: ok \(\d+ ms\)", live), live
    heat_line = next(ln for ln in live.splitlines() if ln.strip().startswith("heat_energy"))
    assert float(heat_line.split()[1]) == pytest.approx(heat_kwh, abs=3.0)  # the GJ meter shows 0.01 GJ steps


@pytest.mark.integration
async def test_init_by_wildcard_on_a_serial_line_finds_one_meter_of_each_protocol(tmp_path: Path) -> None:
    cfg = _fleet(_houses(1), _heat("kWh"), serve="pty")
    async with Fleet(cfg, clock=SystemClock()) as fleet:
        pty = fleet.devices["house-0"].endpoint.rtu_path or ""
        # a pseudo-terminal carries no parity: run it 8N1 (a real adapter runs 8E1)
        code, out, err = await _puhui(
            "init", "--serial", pty, "--parity", "N", "--dlt645", "--cjt188", "--gateway-id", "gw-1",
            "--site", "s", *_paths(tmp_path),
        )  # fmt: skip
    assert (code, err) == (0, ""), out + err
    assert "read address to AAAAAAAAAAAA, 1 s each" in out and "AAAAAAAAAAAAAA (any type), 2 s each" in out
    site = load_site(tmp_path / "etc/site.yaml")
    [line] = site.lines
    assert line.kind == "serial" and line.port == pty and line.parity == "N"
    assert [(m.driver, m.connection.address) for m in site.meters] == [("dlt645", HOUSE_A), ("cjt188", HEAT)]
    heat = site.meters[1]
    assert isinstance(heat, Cjt188Meter) and heat.energy_unit == "kWh" and heat.policy.timeout_s == 2


@pytest.mark.integration
async def test_init_refuses_collided_wildcards_and_unreachable_lines_and_marks_abnormal_meters(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    ids = ["--gateway-id", "gw-1", "--site", "s", *_paths(tmp_path)]
    unreachable = await _puhui("init", "--host", "127.0.0.1", "--port", str(closed), "--cjt188", *ids)
    cfg = _fleet(_houses(2), _heat("kWh"))
    async with Fleet(cfg, clock=SystemClock()) as fleet:
        collided = await _puhui("init", *_server(fleet), "--dlt645", *ids)
        silent = await _puhui(
            "init", *_server(fleet), "--dlt645", "--addresses", HOUSE_ABSENT, "--timeout", "0.3", *ids
        )
        nothing_written = not (tmp_path / "etc").exists()
        fleet.devices["flat-0"].set_faults(exception="illegal_address")  # answers, abnormally
        abnormal = await _puhui("init", *_server(fleet), "--cjt188", "--addresses", HEAT, *ids)
    code, out, err = unreachable
    assert code == 1 and "cannot open" in err and f"127.0.0.1:{closed}" in err and "nothing written" in err
    code, out, err = collided
    assert code == 1 and "more than one meter is probably connected" in err and "--addresses" in err, err
    code, out, err = silent
    assert code == 1 and "no DL/T 645 meter answered on line line-1 (tcp 127.0.0.1:" in err, err
    assert f"{HOUSE_ABSENT} not found: no answer within 0.3 s" in out
    assert nothing_written and "Traceback" not in unreachable[2] + collided[2] + silent[2]
    code, out, err = abnormal
    assert (code, err) == (0, ""), out + err
    text = (tmp_path / "etc/site.yaml").read_text()
    assert "abnormal answer (C = C1): ST1=03" in text and f"cjt188 probe --address {HEAT}" in text
    assert "energy_unit: kWh      # TODO" in text  # an abnormal answer tells no unit
    [meter] = load_site(tmp_path / "etc/site.yaml").meters
    assert isinstance(meter, Cjt188Meter) and meter.connection.address == HEAT


def _masked(line: str, port: int) -> str:
    """A line of output or config with what changes from run to run masked: readings, the key,
    the serial server's port."""
    line = line.replace(f"127.0.0.1:{port}", "127.0.0.1:15030").replace(f"port: {port},", "port: 15030,")
    line = re.sub(r"\d+\.\d+", "N", line)
    return re.sub(r"(key id|public key) \S+", r"\1 K", line)


def _doc_init_section() -> tuple[list[str], list[str], list[str]]:
    """The init command of docs/commissioning.md, section 4, its output and the config excerpt."""
    text = (REPO / "docs/commissioning.md").read_text(encoding="utf-8")
    section = text[text.index("### init: a first site config from the line") : text.index("### check --live")]
    _, run, written = re.findall(r"```\n(.*?)```", section, flags=re.S)
    command, _, output = run.partition(" --state-dir village/state\n")
    argv = shlex.split(command.replace("\\\n", " ") + " --state-dir village/state")
    return argv, output.splitlines(), written.splitlines()


@pytest.mark.integration
async def test_the_commissioning_page_init_runs_as_written(tmp_path: Path) -> None:
    argv, shown, excerpt = _doc_init_section()
    assert argv[:4] == ["$", "puhui", "gateway", "init"]
    (port,) = free_ports(1)
    fleet_file = (REPO / "docs/commissioning/village-fleet.yaml").read_text(encoding="utf-8")
    cfg = parse_fleet(yaml.safe_load(fleet_file.replace("15030", str(port))), "village-fleet.yaml")
    args = [str(port) if a == "15030" else a for a in argv[4:]]
    async with Fleet(cfg, clock=SystemClock()) as fleet:
        assert fleet.line_servers["village/east"].port == port
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "puhui", "gateway", "init", *args,
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert [_masked(line, port) for line in out.decode().splitlines()] == [_masked(s, 15030) for s in shown]
    written = iter(_masked(line, port) for line in (tmp_path / "village/site.yaml").read_text().splitlines())
    for line in excerpt:  # the excerpt's lines appear in the file, in this order
        if line.strip() != "...":
            assert any(w == _masked(line, 15030) for w in written), line


def _init(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(["gateway", "init", "--gateway-id", "gw", "--site", "s", *argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "h", "--port", "1", "--dlt645", "--addresses", HEAT], f"--addresses {HEAT} (14 digits"),
        (["--host", "h", "--port", "1", "--dlt645", "--cjt188", "--addresses", HOUSE_A], "--cjt188 with"),
        (["--host", "h", "--port", "1", "--addresses", HOUSE_A], "--addresses goes with --dlt645 or"),
        (["--host", "h", "--port", "1", "--dlt645", "--units", "1"], "--units is for a Modbus scan"),
        (["--host", "h", "--cjt188"], "--host needs --port"),
        (["--dlt645"], "give either --host and --port (a serial server) or --serial"),
        (["--serial", "/dev/null", "--dlt645", "--addresses", "1234"], "12 digits (DL/T 645) or 14"),
    ],
)
def test_init_line_usage_errors_name_what_is_wrong(argv: list[str], message: str, tmp_path: Path) -> None:
    code, err = _init(*argv, "--config", str(tmp_path / "site.yaml"))
    assert code == 2 and message in err, err
    assert not (tmp_path / "site.yaml").exists()
