"""Golden cases of the CJ/T 188 driver: ``drivers/cjt188/testcases/<case>/``.

Each case holds ``config.yaml`` (the meter's CJ/T 188 settings, through the closed model),
``frames.yaml`` (the request the driver must send and the meter's answer, byte for byte,
worked out by hand with a comment per field) and ``expected.yaml`` (the samples, the
meter's clock and status, or the error). A case folder with a missing file fails.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import ManualClock
from drivers.cjt188.client import check_answer, check_data_head
from drivers.cjt188.config import QUANTITIES, Cjt188MeterSettings
from drivers.cjt188.frame import decode_frame, read_request
from drivers.cjt188.heat import decode_heat_block
from drivers.cjt188.source import Cjt188Source
from drivers.contract import Invalid
from tests.drivers.cjt188_lines import ReplayLine

CASES = Path(__file__).resolve().parents[2] / "drivers" / "cjt188" / "testcases"
NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir())


def hex_block(text: str) -> bytes:
    """Bytes from a hex block whose lines may carry ``#`` comments."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


def load(case: str) -> tuple[Cjt188MeterSettings, bytes, bytes, dict[str, Any]]:
    folder = CASES / case
    settings = Cjt188MeterSettings.model_validate(yaml.safe_load((folder / "config.yaml").read_text()))
    frames = yaml.safe_load((folder / "frames.yaml").read_text())
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    return settings, hex_block(frames["request"]), hex_block(frames["answer"]), expected


def test_cases_exist() -> None:
    assert len(NAMES) >= 5, NAMES


@pytest.mark.parametrize("case", NAMES)
async def test_golden_poll(case: str) -> None:
    settings, request, answer, expected = load(case)
    line = ReplayLine(request, answer)
    source = Cjt188Source.from_settings(f"golden-{case}", settings, line, ManualClock(1_700_000_000.0))
    result = await source.poll(slot=1_700_000_000.0)
    assert line.sent[0] == request, f"{case}: the driver sent {line.sent[0].hex(' ').upper()}"
    assert result.ok is expected["ok"], result.error
    if "error_contains" in expected:
        assert result.error is not None and expected["error_contains"] in result.error
        assert result.requests == expected["requests"]
    got = {s.quantity: s.value for s in result.samples}
    assert [s.quantity for s in result.samples] == [w["quantity"] for w in expected["samples"]]
    for want in expected["samples"]:
        value = got[want["quantity"]]
        assert QUANTITIES[want["quantity"]].unit == want["unit"]
        if "invalid" in want:
            assert isinstance(value, Invalid) and value.reason == want["invalid"], (want, value)
        else:
            assert value == want["value"], (want, value)  # exact: one rounding from an exact rational


@pytest.mark.parametrize("case", [n for n in NAMES if "meter_time" in load(n)[3]])
def test_golden_block(case: str) -> None:
    settings, _request, answer, expected = load(case)
    c = settings.connection
    sent = read_request(c.type_code, c.wire_address, 0x901F, 1, c.identifier_order)
    frame = decode_frame(answer)
    check_answer(sent, frame)
    data = decode_heat_block(check_data_head(sent, frame, check_ser=True))
    if expected["meter_time"] == "invalid":
        assert isinstance(data.meter_time, Invalid)
    else:
        assert data.meter_time == dt.datetime.fromisoformat(expected["meter_time"])
    status = expected["status"]
    assert (data.status.st1, data.status.st2) == (status["st1"], status["st2"])
    assert data.status.valve == status["valve"] and data.status.battery_low is status["battery_low"]


def test_readme_sample_config_loads() -> None:
    text = (CASES.parent / "README.md").read_text()
    block = text.split("## Sample config", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (meter,) = yaml.safe_load(block)["meters"]  # a site fragment: the settings + the gateway's fields
    settings = Cjt188MeterSettings.model_validate(
        {k: v for k, v in meter.items() if k in Cjt188MeterSettings.model_fields}
    )
    assert (
        settings.connection.wire_address.digits == "00000012345678" and settings.connection.type_code == 0x20
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"connection": {"line": "l", "address": "1234"}}, "not a CJ/T 188 address"),
        ({"connection": {"line": "l", "address": "00000012345678", "meter_typ": "heat"}}, "meter_typ"),
        (
            {"connection": {"line": "l", "address": "00000012345678"}, "quantities": ["heat"]},
            "not a CJ/T 188 quantity",
        ),
    ],
)
def test_config_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Cjt188MeterSettings.model_validate(change)
