"""Commissioning the meters of a shared line: ``puhui gateway cjt188 scan|probe`` and
``puhui gateway check --live`` on DL/T 645 and CJ/T 188 meters.

firmware_sim's heat meters and DL/T 645 meters hang on one simulated RS-485 line, behind a
simulated transparent serial server (or on a pseudo-terminal); the CLI runs its own event
loop, so it runs in a thread while the simulator serves on the test's loop.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import ManualClock, SystemClock
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet, parse_fleet
from gateway.commission import check_live
from gateway.config import parse_site
from puhui.cli import main
from tests.sim.helpers import run_blocking

EPOCH = "2025-01-15T00:00:00+00:00"
HEAT_A, HEAT_B, ABSENT = "20250000000001", "20250000000002", "20250000000009"
HOUSE_A = "000000000101"


def _fleet(serve: str = "tcp_server", heat_meters: int = 2) -> Any:
    devices: list[dict[str, Any]] = [
        {"kind": "cjt188_heat_meter", "name": "heat-{i}" if heat_meters > 1 else "heat-0",
         "count": heat_meters, "line": "east", "address": HEAT_A, "initial_kwh": 12345.67,
         "physics": {"model": "heating", "rated_kw": 12.0}},
        {"kind": "dlt645_meter", "name": "house-{i}", "count": 2, "line": "east", "address": HOUSE_A,
         "initial_kwh": 2024.5, "physics": {"model": "heating", "rated_kw": 8.0}},
    ]  # fmt: skip
    data = {
        "clock": {"epoch": EPOCH, "factor": 1},
        "control": None,
        "sites": [{"name": "village", "lines": [{"name": "east", "serve": serve}], "devices": devices}],
    }
    return parse_fleet(data, "test-fleet")


def _cli(*argv: str) -> Callable[[], tuple[int, str, str]]:
    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["gateway", *argv])
            except SystemExit as exc:
                code = int(exc.code or 0)
        return code, out.getvalue(), err.getvalue()

    return call


def _where(fleet: Fleet) -> tuple[str, ...]:
    server = fleet.line_servers["village/east"]
    return ("--host", server.host, "--port", str(server.port), "--timeout", "0.5")


# -- cjt188 scan and probe --------------------------------------------------------------------------


@pytest.mark.integration
async def test_cjt188_scan_by_list_finds_the_meters_and_names_the_silent_one() -> None:
    cfg = _fleet()
    async with Fleet(cfg, clock=ManualClock(cfg.clock.epoch_s)) as fleet:
        fleet.devices["heat-1"].set_faults(exception="illegal_address")  # answers, abnormally
        listed = ",".join((HEAT_A, HEAT_B, ABSENT))
        code, out, err = await run_blocking(_cli("cjt188", "scan", *_where(fleet), "--addresses", listed))
    assert code == 0, out + err
    assert f"meter {HEAT_A} answers (type 20)" in out
    assert f"{HEAT_B}: answers, but abnormal answer (C = C1): ST1=03 ST2=00 (valve abnormal)" in out
    assert f"no answer within 0.5 s: {ABSENT}" in out
    assert out.rstrip().endswith("2 of 3 meter(s) found")


@pytest.mark.integration
async def test_cjt188_scan_by_wildcard_finds_the_one_meter_and_says_when_answers_collide() -> None:
    one = _fleet(serve="pty", heat_meters=1)
    async with Fleet(one, clock=ManualClock(one.clock.epoch_s)) as fleet:
        path = fleet.devices["heat-0"].endpoint.rtu_path
        assert path is not None
        # a pseudo-terminal carries no parity: run it 8N1 (a real adapter runs 8E1)
        alone = await run_blocking(
            _cli("cjt188", "scan", "--serial", path, "--parity", "N", "--timeout", "0.5")
        )
    two = _fleet()
    async with Fleet(two, clock=ManualClock(two.clock.epoch_s)) as fleet:
        both = await run_blocking(_cli("cjt188", "scan", *_where(fleet)))
    assert alone[0] == 0 and f"meter {HEAT_A} answers (type 20)" in alone[1], alone
    assert "read address to AAAAAAAAAAAAAA" in alone[1] and "1 meter(s) found" in alone[1]
    assert both[0] == 1 and "more than one meter is probably connected" in both[1], both


@pytest.mark.integration
async def test_cjt188_probe_reads_and_decodes_the_metering_block() -> None:
    cfg = _fleet()
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(3600)
        code, out, err = await run_blocking(_cli("cjt188", "probe", *_where(fleet), "--address", HEAT_A))
        kwh = fleet.devices["heat-0"].meter().counter_wh() / 1000.0
        other = await run_blocking(
            _cli("cjt188", "probe", *_where(fleet), "--address", HEAT_A, "--di", "907F")
        )
    assert code == 0, out + err
    assert f"cjt188 probe meter {HEAT_A} DI 901F: 43 byte(s) after SER" in out
    heat = next(line for line in out.splitlines() if line.strip().startswith("heat_energy"))
    assert float(heat.split()[1]) == pytest.approx(kwh, abs=0.01)  # the meter shows 0.01 kWh steps
    assert "meter_time           2025-01-15 09:00:00 (the meter's clock)" in out  # 01:00 UTC = 09:00 CST
    assert "status               ST1=00 ST2=00 (valve open)" in out
    assert other[0] == 1 and "abnormal answer" in other[2] and "Traceback" not in other[2], other


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cjt188", "probe", "--serial", "/dev/null"], "probe needs --address"),
        (["cjt188", "scan", "--host", "h"], "--host needs --port"),
        (["cjt188", "scan", "--serial", "/dev/null", "--address", HEAT_A], "scan takes --addresses"),
        (["cjt188", "probe", "--serial", "/dev/null", "--address", "123"], "is not a CJ/T 188 address"),
        (["cjt188", "probe", "--serial", "/dev/null", "--address", HEAT_A, "--di", "90"], "4 hex digits"),
    ],
)
async def test_cjt188_usage_errors_name_what_is_wrong(argv: list[str], message: str) -> None:
    code, _, err = await run_blocking(_cli(*argv))
    assert code == 2 and message in err, err


# -- check --live ------------------------------------------------------------------------------------


def _site(fleet: Fleet, *, heat_rated_kw: float = 12.0) -> dict[str, Any]:
    server = fleet.line_servers["village/east"]
    meters: list[dict[str, Any]] = [
        {"id": f"heat-{i}", "driver": "cjt188", "scenario": "clean_heating",
         "connection": {"line": "east", "address": address}, "policy": {"timeout_s": 0.5, "retries": 0},
         "nameplate": {"rated_power_kw": heat_rated_kw, "meter_class": "heat_2"},
         "counts": ["heat_energy"]}
        for i, address in enumerate((HEAT_A, HEAT_B, ABSENT))
    ] + [
        {"id": f"house-{i}", "driver": "dlt645", "scenario": "clean_heating",
         "connection": {"line": "east", "address": f"{int(HOUSE_A) + i:012d}"},
         "read": ["energy_import", "power"], "nameplate": {"rated_power_kw": 10.0, "meter_class": "1"},
         "counts": ["energy_import"]}
        for i in range(2)
    ]  # fmt: skip
    return {
        "gateway": {"id": "gw-village", "site": "village"},
        "lines": [{"id": "east", "kind": "tcp_server", "host": server.host, "port": server.port,
                   "baudrate": 2400, "parity": "E", "timeout_s": 0.5, "inter_frame_delay_ms": 1}],
        "meters": meters,
        "status": {"enabled": False},
    }  # fmt: skip


@pytest.mark.integration
async def test_check_live_reads_each_line_meter_once_and_judges_it_against_its_nameplate() -> None:
    cfg = _fleet()
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(1800)
        site = parse_site(_site(fleet, heat_rated_kw=0.5), "village.yaml", load_profiles())
        checks = {c.meter: c for c in await check_live(site, load_profiles(), SystemClock(), mqtt_wait_s=1)}
        kwh = {name: fleet.devices[name].meter().counter_wh() / 1000.0 for name in ("heat-0", "house-0")}
    assert [m for m, c in checks.items() if not c.ok] == ["heat-2"]
    dead = checks["heat-2"]
    assert dead.error is not None and ABSENT in dead.error and "line east" in dead.error
    assert checks["house-0"].where.startswith("dlt645 on line east (tcp 127.0.0.1:")
    readings = {r.quantity: r for r in checks["heat-0"].readings}
    assert readings["heat_energy"].value == pytest.approx(kwh["heat-0"], abs=0.01)
    assert readings["heat_energy"].counted and readings["heat_energy"].unit == "kWh"
    house = {r.quantity: r.value for r in checks["house-0"].readings}
    assert house["energy_import"] == pytest.approx(kwh["house-0"], abs=0.01)
    assert checks["house-0"].warnings == ()
    # a heat meter's power beyond 1.5 x a (wrong) 0.5 kW nameplate is said
    assert any("power" in w and "0.75 kW" in w for w in checks["heat-0"].warnings), checks["heat-0"].warnings


@pytest.mark.integration
async def test_check_live_command_prints_line_meters_and_fails_on_the_dead_one(tmp_path: Path) -> None:
    cfg = _fleet()
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(600)
        site = tmp_path / "site.yaml"
        data = _site(fleet)
        data["evidence"] = {"key_file": str(tmp_path / "key.pem"), "state_dir": str(tmp_path / "state")}
        site.write_text(yaml.safe_dump(data), encoding="utf-8")
        code, out, err = await run_blocking(
            _cli("check", "--config", str(site), "--live", "--mqtt-wait", "1")
        )
    assert code == 1, out + err
    assert "each Modbus, DL/T 645 and CJ/T 188 meter read once" in out
    assert "heat-0                   cjt188      cjt188 on line east (tcp 127.0.0.1:" in out
    assert f"address {HEAT_A}: ok" in out and f"address {ABSENT}: FAILED" in out
    assert "house-1                  dlt645      dlt645 on line east" in out
    assert "4 of 5 meter(s) ok" in out and "FAILED: heat-2" in out
    assert "Traceback" not in err


@pytest.mark.integration
async def test_dlt645_scan_by_list_reads_each_listed_meter() -> None:
    cfg = _fleet()
    async with Fleet(cfg, clock=ManualClock(cfg.clock.epoch_s)) as fleet:
        listed = ",".join((HOUSE_A, f"{int(HOUSE_A) + 1:012d}", "000000000199"))
        code, out, err = await run_blocking(_cli("dlt645", "scan", *_where(fleet), "--addresses", listed))
        wildcard = await run_blocking(_cli("dlt645", "scan", *_where(fleet)))
    assert code == 0, out + err
    assert f"meter {HOUSE_A} answers: forward active energy 2024.5 kWh" in out
    assert "no answer within 0.5 s: 000000000199" in out and out.rstrip().endswith("2 of 3 meter(s) found")
    # all four line meters hear the wildcard; the two DL/T 645 answers collide on the pair
    assert wildcard[0] == 1 and "Traceback" not in wildcard[2], wildcard
