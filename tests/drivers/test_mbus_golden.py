"""Golden cases of the M-Bus driver: ``drivers/mbus/testcases/<case>/``.

Each case holds ``config.yaml`` (the meter's M-Bus settings, through the closed model),
``frames.yaml`` (every request the driver must send and the meter's answer, byte for byte,
worked out by hand from EN 13757-2 / -3 with a comment per field) and ``expected.yaml``
(the samples, the meter's clock, header and status, or the error). A case folder with a
missing file fails.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import ManualClock
from drivers.contract import Invalid
from drivers.line.contract import AnswerReader
from drivers.mbus.client import check_rsp_ud
from drivers.mbus.config import QUANTITIES, MbusMeterSettings
from drivers.mbus.frame import decode_answer
from drivers.mbus.heat import decode_heat
from drivers.mbus.source import MbusSource
from tests.drivers.cjt188_lines import _Bytes

CASES = Path(__file__).resolve().parents[2] / "drivers" / "mbus" / "testcases"
NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir())


def hex_block(text: str) -> bytes:
    """Bytes from a hex block whose lines may carry ``#`` comments."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


@dataclass
class ScriptLine:
    """Answers the expected requests in order with the recorded answers; records what was
    sent. A request out of script (or past its end) gets no answer: the line's timeout."""

    script: list[tuple[bytes, bytes]]
    id: str = "replay"
    sent: list[bytes] = field(default_factory=list)

    async def exchange(
        self, request: bytes, read_answer: AnswerReader, *, timeout_s: float, label: str
    ) -> bytes:
        n = len(self.sent)
        self.sent.append(request)
        expected, answer = self.script[n] if n < len(self.script) else (b"", b"")
        return await read_answer(_Bytes(answer if request == expected else b"", label))

    async def send(self, request: bytes, *, label: str) -> None:
        self.sent.append(request)


def load(case: str) -> tuple[MbusMeterSettings, list[tuple[bytes, bytes]], dict[str, Any]]:
    folder = CASES / case
    settings = MbusMeterSettings.model_validate(yaml.safe_load((folder / "config.yaml").read_text()))
    frames = yaml.safe_load((folder / "frames.yaml").read_text())
    script = [(hex_block(x["request"]), hex_block(x["answer"])) for x in frames["exchanges"]]
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    return settings, script, expected


def test_cases_exist() -> None:
    assert len(NAMES) >= 6, NAMES


@pytest.mark.parametrize("case", NAMES)
def test_checksums_and_lengths_as_written(case: str) -> None:
    """The hand-written CS and L bytes agree with the bytes (except where a case says not)."""
    _, script, expected = load(case)
    for request, answer in script:
        for raw in (request, answer):
            if raw[:1] == b"\x68":
                assert raw[1] == raw[2] == len(raw) - 6, (case, raw[:4].hex())
                good = sum(raw[4:-2]) & 0xFF == raw[-2]
                assert good or "checksum" in expected.get("error_contains", ""), case
            if raw[:1] == b"\x10":
                assert (raw[1] + raw[2]) & 0xFF == raw[3], case


@pytest.mark.parametrize("case", NAMES)
async def test_golden_poll(case: str) -> None:
    settings, script, expected = load(case)
    line = ScriptLine(script)
    source = MbusSource.from_settings(f"golden-{case}", settings, line, ManualClock(1_700_000_000.0))
    result = await source.poll(slot=1_700_000_000.0)
    assert line.sent == [request for request, _ in script], [s.hex(" ") for s in line.sent]
    assert result.ok is expected["ok"], result.error
    assert result.requests == expected["requests"]
    if "error_contains" in expected:
        assert result.error is not None and expected["error_contains"] in result.error, result.error
    assert [s.quantity for s in result.samples] == [w["quantity"] for w in expected["samples"]]
    got = {s.quantity: s.value for s in result.samples}
    for want in expected["samples"]:
        value = got[want["quantity"]]
        assert QUANTITIES[want["quantity"]].unit == want["unit"]
        if "invalid" in want:
            assert isinstance(value, Invalid) and value.reason == want["invalid"], (want, value)
        else:
            assert value == want["value"], (want, value)  # exact: one rounding from an exact rational


@pytest.mark.parametrize("case", [n for n in NAMES if "header" in load(n)[2]])
def test_golden_telegram(case: str) -> None:
    settings, script, expected = load(case)
    frame = decode_answer(script[-1][1])
    data = decode_heat(check_rsp_ud(settings.connection.target, frame))
    if expected["meter_time"] is None:
        assert data.meter_time is None
    elif expected["meter_time"] == "invalid":
        assert isinstance(data.meter_time, Invalid)
    else:
        assert data.meter_time == dt.datetime.fromisoformat(expected["meter_time"])
    h = expected["header"]
    assert (data.header.id_digits, data.header.manufacturer_code) == (h["identification"], h["manufacturer"])
    assert (data.header.medium, data.header.access) == (h["medium"], h["access"])
    assert data.header.secondary_address == h["secondary_address"]
    assert data.fabrication_number == expected["fabrication_number"]
    s = expected["status"]
    assert (data.status.byte, data.status.error, data.status.power_low) == (
        s["byte"],
        s["error"],
        s["power_low"],
    )
    assert len(data.ignored) == expected.get("ignored", 0), data.ignored


def test_readme_sample_config_loads() -> None:
    text = (CASES.parent / "README.md").read_text()
    block = text.split("## Sample config", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    meters = yaml.safe_load(block)["meters"]
    targets = [
        MbusMeterSettings.model_validate(
            {k: v for k, v in m.items() if k in MbusMeterSettings.model_fields}
        ).connection.target
        for m in meters
    ]
    assert [t.primary for t in targets] == [5, None]
    assert targets[1].secondary is not None and targets[1].secondary.text == "87654321"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"connection": {"line": "l", "address": 251}}, "less than or equal to 250"),
        ({"connection": {"line": "l"}}, r"give address \(primary, 0-250\) or secondary_address"),
        ({"connection": {"line": "l", "address": 1, "secondary_address": "12345678"}}, "not both"),
        ({"connection": {"line": "l", "secondary_address": "1234567"}}, "not a secondary address"),
        ({"connection": {"line": "l", "address": 1, "adress": 2}}, "adress"),
        (
            {"connection": {"line": "l", "address": 1}, "quantities": ["heat"]},
            "not an M-Bus heat meter quantity",
        ),
    ],
)
def test_config_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MbusMeterSettings.model_validate(change)
