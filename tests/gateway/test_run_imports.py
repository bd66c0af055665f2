"""What `puhui gateway run` imports: the gateway's own stack, not the aggregator's (numpy,
FastAPI, psycopg) nor the M-Bus library and its crypto stack, which only M-Bus meters and the
M-Bus commands need. Memory on a Pi-class gateway is the interpreter plus what it imports."""

from __future__ import annotations

import json
import subprocess
import sys

# The modules `puhui gateway run` loads before it reads its configuration.
RUN_PATH = "puhui.cli, gateway.cli, gateway.runtime, gateway.pipeline, drivers.modbus_tcp.driver"
NOT_ON_THE_RUN_PATH = (
    "numpy", "aggregator", "fastapi", "uvicorn", "psycopg", "meterbus", "Crypto", "pycparser",
)  # fmt: skip


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {name.split(".")[0] for name in json.loads(out.stdout.splitlines()[-1])}


def test_gateway_run_path_imports_neither_aggregator_nor_mbus_stacks() -> None:
    loaded = _loaded_after(f"import {RUN_PATH}; import puhui.cli as c; c.build_parser(['gateway', 'run'])")
    assert "gateway" in loaded and "pymodbus" in loaded  # the probe saw the gateway's imports
    assert sorted(loaded & set(NOT_ON_THE_RUN_PATH)) == []
