"""DL/T 645 golden cases: frames worked out by hand from the standard, byte for byte.

Each ``drivers/dlt645/testcases/<case>/`` holds ``config.yaml`` (the site fragment: the
line and the one meter), ``frames.yaml`` (each request the gateway must send and the
meter's answer, with the derivation) and ``expected.yaml`` (the samples, and the poll's
error if any). A recorded meter on a simulated line answers exactly those frames: a
request that differs by one byte gets no answer and fails the case. The source is built
as the gateway builds it (``gateway.runtime.dlt645_source``) and polled once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import ManualClock
from drivers.contract import Invalid
from drivers.line.config import TcpServerLineConfig
from drivers.line.owner import LineOwner
from drivers.modbus.profiles import load_profiles
from firmware_sim.line import SimLine, serve_tcp
from firmware_sim.line_contract import Taken
from gateway.config import Dlt645Meter, parse_site
from gateway.runtime import dlt645_source

CASES = Path(__file__).resolve().parents[2] / "drivers" / "dlt645" / "testcases"
FILES = ("config.yaml", "frames.yaml", "expected.yaml")


class RecordedMeter:
    """Answers the recorded requests, in order; anything else is recorded as unexpected."""

    def __init__(self, exchanges: list[dict[str, str]]) -> None:
        self.pending = [(bytes.fromhex(e["request"]), bytes.fromhex(e["answer"])) for e in exchanges]
        self.unexpected: list[bytes] = []

    def take(self, buffer: bytes, now: float) -> Taken | None:
        request, answer = self.pending[0] if self.pending else (b"", b"")
        if request and buffer[: len(request)] == request:
            self.pending.pop(0)
            return Taken(len(request), answer)
        if len(buffer) >= max(len(request), 16):
            self.unexpected.append(bytes(buffer))
            return Taken(len(buffer), None)
        return None


def _load(case: Path) -> dict[str, Any]:
    missing = [f for f in FILES if not (case / f).is_file()]
    assert not missing, f"{case.name}: missing {missing}"
    return {f: yaml.safe_load((case / f).read_text(encoding="utf-8")) for f in FILES}


@pytest.mark.parametrize("case", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name)
async def test_golden_case(case: Path) -> None:
    files = _load(case)
    site = parse_site({"gateway": {"id": "golden-gw", "site": "golden"}, **files["config.yaml"]}, case.name,
                      load_profiles())  # fmt: skip
    (meter,) = site.meters
    assert isinstance(meter, Dlt645Meter)
    recorded = RecordedMeter(files["frames.yaml"]["exchanges"])
    clock = ManualClock(1_736_899_200.0)
    sim = SimLine(case.name, clock)
    sim.add(recorded)
    async with serve_tcp(sim) as server:
        # only the line's place changes: the case's line settings as installed, on loopback
        line = TcpServerLineConfig(id=meter.connection.line, kind="tcp_server", host=server.host,
                                   port=server.port, timeout_s=0.5)  # fmt: skip
        async with LineOwner(line) as owner:
            source = dlt645_source(meter, {line.id: owner}, clock)
            result = await source.poll()
    assert recorded.unexpected == [], (
        f"requests not in frames.yaml: {[r.hex(' ') for r in recorded.unexpected]}"
    )
    assert recorded.pending == [], "requests in frames.yaml never sent"
    expected = files["expected.yaml"]
    if "error" in expected:
        assert result.error is not None and result.error.startswith(expected["error"])
    else:
        assert result.ok, result.error
    got = {s.quantity: s.value for s in result.samples}
    fields = {f.quantity: f for item in meter.items() for f in item.fields}
    assert list(got) == [s["quantity"] for s in expected["samples"]]
    for s in expected["samples"]:
        assert fields[s["quantity"]].unit == s["unit"]
        value = got[s["quantity"]]
        if "invalid" in s:
            assert isinstance(value, Invalid) and value.reason == s["invalid"]
        else:
            assert value == pytest.approx(s["value"], abs=1e-9)
