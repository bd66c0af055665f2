"""``puhui gateway``: check a config, run against firmware_sim as a process, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import FastClock
from firmware_sim import Fleet
from tests.sim.helpers import fleet_config

REPO = Path(__file__).resolve().parents[2]


def _site(fleet: Fleet, clock: FastClock) -> dict[str, Any]:
    d = fleet.devices
    meters = [
        {"id": "elec", "driver": "modbus_tcp", "unit_id": 3, "profile": "sdm630", "scenario": "clean_heating",
         "connection": {"host": "127.0.0.1", "port": d["elec"].endpoint.port, "timeout_s": 1, "retries": 0},
         "nameplate": {"rated_power_kw": 20, "meter_class": "1"}, "counts": ["energy_import"],
         "poll": {"fast": 10, "slow": 10}},
        {"id": "heat", "driver": "modbus_tcp", "unit_id": 1, "profile": "heat-meter-converter",
         "scenario": "clean_heating",
         "connection": {"host": "127.0.0.1", "port": d["heat"].endpoint.port, "timeout_s": 1, "retries": 0},
         "nameplate": {"rated_power_kw": 40, "meter_class": "heat_2"}, "counts": ["heat_energy"],
         "poll": {"fast": 10, "slow": 10}},
    ]  # fmt: skip
    spec = clock.spec
    return {
        "gateway": {"id": "gw-cli-1", "site": "cli-site"},
        "clock": {"mode": "fast", "epoch": spec.epoch, "factor": spec.factor, "wall_start": spec.wall_start},
        "interval_minutes": 1,
        "grace_seconds": 0,
        "meters": meters,
    }


async def _read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> re.Match[str]:
    async with asyncio.timeout(20):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError("process ended before: " + pattern + "\n" + "".join(seen))
            seen.append(line)
            if m := re.search(pattern, line):
                return m


async def _get_json(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return json.loads(data.partition(b"\r\n\r\n")[2])


@pytest.mark.integration
async def test_run_polls_logs_state_changes_serves_status_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    cfg = fleet_config(
        {"kind": "sdm630", "name": "elec", "unit": 3, "physics": {"model": "heating"}},
        {"kind": "heat_meter", "name": "heat", "unit": 1, "physics": {"model": "heating"}},
    )
    clock = FastClock(cfg.clock.epoch_s, 20.0, time.time())
    async with Fleet(cfg, clock=clock) as fleet:
        site = tmp_path / "site.yaml"
        site.write_text(yaml.safe_dump(_site(fleet, clock)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "puhui", "gateway", "run", "--config", str(site), "--dry-run",
            "--status-port", "0", cwd=REPO, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            port = int(
                (await _read_until(proc.stderr, r"status endpoint on http://127\.0\.0\.1:(\d+)/", seen))[1]
            )
            await _read_until(proc.stderr, r"device (elec|heat): unknown -> up", seen)
            await _read_until(proc.stderr, r"device (elec|heat): unknown -> up", seen)
            fleet.devices["heat"].set_faults(timeout=True)
            await _read_until(proc.stderr, r"device heat: up -> failing", seen)
            status = await _get_json(port, "/status")
            assert status["gateway"] == "gw-cli-1"
            assert status["devices"]["elec"]["state"] == "up"
            assert status["devices"]["heat"]["state"] in {"failing", "breaker_open"}
            fleet.devices["heat"].clear_faults()
            await _read_until(proc.stderr, r"device heat: (failing|breaker_open) -> up", seen)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                rest = (await proc.stderr.read()).decode()
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = "".join(seen) + rest
    assert code == 0, log
    assert "gateway gw-cli-1: stopping" in rest
    assert "Traceback" not in log
    # one line per state change, not one per failed poll
    assert len(re.findall(r"device heat: up -> failing", log)) == 1


def test_check_reports_every_error_with_file_and_path(tmp_path: Path) -> None:
    import subprocess

    site = tmp_path / "bad.yaml"
    site.write_text(
        "gateway: {id: gw-1, site: s}\n"
        "interval_minutes: 7\n"
        "meters:\n"
        "  - {id: m, driver: modbus_tcp, connection: {host: h}, unit_id: 1, profile: sdm63,\n"
        "     scenario: pv, nameplate: {rated_power_kw: 5, meter_class: '1'}, counts: [energy_import]}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "puhui", "gateway", "check", "--config", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "bad.yaml: interval_minutes" in out.stderr
    assert "bad.yaml: meters[0].profile: 'sdm63' is not a shipped profile (sdm630?)" in out.stderr


def test_check_prints_the_plan_of_a_shipped_site() -> None:
    import subprocess

    site = "config/sites/zhangjiakou-school.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "puhui", "gateway", "check", "--config", site],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "gw-zjk-school-01" in out.stdout and "heat-pump-heat" in out.stdout
    # The ABB charger counts a per-session register: the shipped EV sets refuse it; check says so
    notes = [line for line in out.stdout.splitlines() if line.strip().startswith("note:")]
    assert len(notes) == 1 and "charger-2 counts session_energy, a per-session counter" in notes[0]


def test_the_per_session_note_says_what_the_shipped_ev_sets_do() -> None:
    """The note names ev-charging-jjj*.yaml as refusing per-session counters: hold it to them."""
    import yaml

    sets = sorted((REPO / "config" / "methodologies").glob("ev-charging-jjj*.yaml"))
    assert sets
    for path in sets:
        method = yaml.safe_load(path.read_text(encoding="utf-8"))["method"]
        assert method["per_session_counters"] == "refuse", path


SCHOOL = "config/sites/zhangjiakou-school.yaml"


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """``puhui gateway check ... | head -1``: the pipe closes before puhui writes."""
    import os
    import subprocess

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "puhui", "gateway", "check", "--config", SCHOOL],
            cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


def test_keygen_then_enrol_gives_a_document_the_aggregator_accepts(tmp_path: Path) -> None:
    import subprocess

    from evidence.enrolment import parse_enrolment
    from evidence.keys import load_private_key

    key_file = tmp_path / "keys" / "gw.pem"
    key_file.parent.mkdir(mode=0o700)
    data = yaml.safe_load((REPO / "config/sites/zhangjiakou-school.yaml").read_text())
    data["gateway"]["grid_region"] = "north"
    data["evidence"] = {"key_file": str(key_file), "state_dir": str(tmp_path / "state")}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))

    def puhui(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "puhui", "gateway", *args, "--config", str(site)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    first = puhui("keygen")
    assert first.returncode == 0, first.stderr
    key = load_private_key(key_file)
    assert key.key_id in first.stdout
    again = puhui("keygen")  # never overwrites a key
    assert again.returncode != 0 and load_private_key(key_file).key_id == key.key_id
    doc_file = tmp_path / "enrol.json"
    out = puhui("enrol", "--out", str(doc_file))
    assert out.returncode == 0, out.stderr
    doc = parse_enrolment(doc_file.read_bytes())
    assert (doc.gateway, doc.site, doc.region, doc.key_id) == (
        "gw-zjk-school-01", "zhangjiakou-school-7", "north", key.key_id,
    )  # fmt: skip
    assert [m.id for m in doc.meters] == [m["id"] for m in data["meters"]]
    heat = next(m for m in doc.meters if m.id == "heat-pump-heat")
    assert (heat.scenario, heat.rated_power_kw, heat.meter_class) == ("clean_heating", 36.0, "heat_2")


@pytest.mark.parametrize("command", ["probe", "scan"])
def test_a_block_past_register_65535_is_a_usage_error(command: str) -> None:
    import subprocess

    args = ["--host", "127.0.0.1", "--address", "65535", "--count", "2"]
    unit = ["--unit", "1"] if command == "probe" else []
    out = subprocess.run(
        [sys.executable, "-m", "puhui", "gateway", command, *args, *unit],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    want = f"puhui gateway: {command}: --address 65535 + --count 2 runs past register 65535"
    assert out.stderr.strip() == want
