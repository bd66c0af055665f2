"""``puhui gateway mbus scan|probe`` against firmware_sim M-Bus heat meters beside a
CJ/T 188 meter on one simulated line behind a simulated transparent serial server. The CLI
runs its own event loop, so it runs in a thread while the simulator serves on the test's."""

from __future__ import annotations

from typing import Any

import pytest

from common.clock import ManualClock
from firmware_sim import Fleet, parse_fleet
from tests.gateway.test_line_commission import _cli, _where
from tests.sim.helpers import run_blocking

EPOCH = "2025-01-15T00:00:00+00:00"


def _fleet() -> Any:
    devices: list[dict[str, Any]] = [
        {"kind": "mbus_heat_meter", "name": "mbus-{i}", "count": 2, "line": "east", "unit": 3,
         "initial_kwh": 4321.0, "physics": {"model": "heating", "rated_kw": 12.0}},
        {"kind": "cjt188_heat_meter", "name": "cjt-0", "line": "east", "address": "20250000000001",
         "physics": {"model": "heating", "rated_kw": 12.0}},
    ]  # fmt: skip
    data = {
        "clock": {"epoch": EPOCH, "factor": 1},
        "control": None,
        "sites": [{"name": "village", "lines": [{"name": "east"}], "devices": devices}],
    }
    return parse_fleet(data, "test-fleet")


@pytest.mark.integration
async def test_mbus_scan_finds_the_primary_addresses_and_probe_reads_one() -> None:
    cfg = _fleet()
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        await clock.advance(3600)
        ids = [f"{fleet.devices[f'mbus-{i}'].serial:08d}" for i in (0, 1)]
        scan = await run_blocking(_cli("mbus", "scan", *_where(fleet), "--addresses", "1-5"))
        probe = await run_blocking(_cli("mbus", "probe", *_where(fleet), "--secondary", ids[1]))
        kwh = fleet.devices["mbus-1"].meter().counter_wh() / 1000.0
        fleet.devices["mbus-0"].set_faults(timeout=True)
        dead = await run_blocking(_cli("mbus", "probe", *_where(fleet), "--address", "3"))
    code, out, err = scan
    assert code == 0, out + err
    assert f"  address 3: PUH {ids[0]} version 01, heat (outlet) (secondary {ids[0]}" in out
    assert f"  address 4: PUH {ids[1]}" in out
    assert out.rstrip().endswith("2 meter(s) found, 3 address(es) silent")
    code, out, err = probe
    assert code == 0, out + err
    assert f"mbus probe M-Bus meter {ids[1]} (secondary): PUH {ids[1]}" in out
    heat = next(line for line in out.splitlines() if line.strip().startswith("heat_energy"))
    assert float(heat.split()[1]) == pytest.approx(kwh, abs=0.01)
    assert "status 00 (no error)" in out and "meter_time           2025-01-15 09:00:00" in out
    assert dead[0] == 1 and "M-Bus meter 3 SND_NKE" in dead[2] and "Traceback" not in dead[2], dead


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("probe", "--host", "127.0.0.1", "--port", "9"), "probe needs --address (primary, 0-250)"),
        (("scan", "--host", "127.0.0.1", "--port", "9", "--addresses", "1-251"), "primary addresses 0-250"),
        (("probe", "--host", "127.0.0.1", "--port", "9", "--secondary", "1234"), "not a secondary address"),
    ],
)  # fmt: skip
def test_mbus_usage_errors_are_named(argv: tuple[str, ...], message: str) -> None:
    code, out, err = _cli("mbus", *argv)()
    assert code == 2 and message in err, (code, out, err)
