"""``puhui gateway dlt645 scan|probe`` against a simulated meter behind a simulated serial server.

The CLI runs its own event loop, so it runs in a thread here while the simulator serves on
the test's loop.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import pytest

from common.clock import ManualClock
from firmware_sim.build import build_device
from firmware_sim.config import expand
from firmware_sim.dlt645_meter import Dlt645Responder
from firmware_sim.line import SimLine, serve_tcp
from puhui.cli import main
from tests.sim.helpers import fleet_config, run_blocking


def _run(*argv: str) -> Callable[[], tuple[int, str, str]]:
    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["gateway", "dlt645", *argv])
            except SystemExit as exc:
                code = int(exc.code or 0)
        return code, out.getvalue(), err.getvalue()

    return call


async def test_scan_finds_the_one_meter_and_probe_reads_an_identifier() -> None:
    cfg = fleet_config({"kind": "sdm630", "name": "m", "initial_kwh": 2024.5, "physics": {"model": "load"}})
    clock = ManualClock(cfg.clock.epoch_s)
    device = build_device(expand(cfg)[0], cfg, clock.now())
    sim = SimLine("l", clock)
    sim.add(Dlt645Responder(device, "000012345678"))
    async with serve_tcp(sim) as server:
        where = ("--host", server.host, "--port", str(server.port), "--timeout", "1")
        scan = await run_blocking(_run("scan", *where))
        probe = await run_blocking(_run("probe", *where, "--address", "000012345678", "--di", "00010000"))
        ghost = await run_blocking(_run("probe", *where, "--address", "000012345679", "--timeout", "0.2"))
    assert scan[0] == 0 and "meter 000012345678" in scan[1], scan
    assert (
        probe[0] == 0 and "DI 00010000: 50 24 20 00" in probe[1] and "energy_import    2024.5" in probe[1]
    ), probe
    assert ghost[0] == 1 and "meter 000012345679 DI 00010000" in ghost[2] and "Traceback" not in ghost[2], (
        ghost
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["probe", "--serial", "/dev/null"], "probe needs --address"),
        (["scan"], "give either --host and --port"),
        (["scan", "--host", "h"], "--host needs --port"),
    ],
)
async def test_usage_errors_name_what_is_missing(argv: list[str], message: str) -> None:
    code, _, err = await run_blocking(_run(*argv))
    assert code == 2 and message in err
