"""Config errors at the command line: ``puhui gateway``, ``sim`` and ``aggregator`` exit 2
with the file named and no traceback (issue 15 item 5; the exit status of config errors
is 2 in every component, item 7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SITE = (REPO / "config" / "sites" / "inline-registers.yaml").read_bytes()
FLEET = (REPO / "config" / "fleets" / "pv-street.yaml").read_bytes()
AGGREGATOR = b"""\
mqtt: {insecure: true}
store: {path: evidence.sqlite3}
influx: {url: http://127.0.0.1:8086, database: puhui}
key_file: aggregator-key.pem
"""

# (name, source file, how to break it, command with {file})
CHECK, RUN, KEYGEN = (
    "gateway check --config {file}",
    "gateway run --config {file}",
    "gateway keygen --config {file}",
)
AGGREGATOR_RUN = "aggregator run --config {file}"
CASES = [
    ("site-utf8", SITE, lambda d: d.replace(b"boiler-1", b"boiler-\xff1"), CHECK),
    ("site-id-list", SITE, lambda d: d.replace(b"id: boiler-1", b"id: [boiler, 1]"), CHECK),
    ("site-deep", SITE, lambda d: d.replace(b"unit_id: 3", b"unit_id: " + b"[" * 5000), RUN),
    ("site-long-int", SITE, lambda d: d.replace(b"unit_id: 3", b"unit_id: " + b"9" * 5000), KEYGEN),
    ("fleet-utf8", FLEET, lambda d: b"\xc3(" + d, "sim check {file}"),
    ("fleet-deep", FLEET, lambda d: d + b"\nx: " + b"{a: " * 3000, "sim run --fleet {file}"),
    ("aggregator-utf8", AGGREGATOR, lambda d: d.replace(b"puhui", b"puh\xe9i"), AGGREGATOR_RUN),
    ("aggregator-deep", AGGREGATOR, lambda d: d + b"limits: " + b"[" * 5000,
     "aggregator gateways --config {file} list"),
    ("aggregator-field", AGGREGATOR, lambda d: d.replace(b"database: puhui", b"database: [x]"),
     AGGREGATOR_RUN),
]  # fmt: skip


@pytest.mark.parametrize(("source", "breaks", "command"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_broken_config_exits_2_naming_the_file(
    tmp_path: Path, source: bytes, breaks: object, command: str
) -> None:
    assert callable(breaks)
    broken = breaks(source)
    assert broken != source
    path = tmp_path / "broken-config.yaml"
    path.write_bytes(broken)
    out = subprocess.run(
        [sys.executable, "-m", "puhui", *command.format(file=path).split()],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "broken-config.yaml: " in out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_the_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.yaml"
    path.write_bytes(AGGREGATOR.replace(b"database: puhui", b"database: [puhui]"))
    out = subprocess.run(
        [sys.executable, "-m", "puhui", "aggregator", "run", "--config", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    want = f"{path}: influx.database: Input should be a valid string"
    assert (out.returncode, out.stderr.strip()) == (2, want)


def test_the_exit_status_is_documented_in_the_help() -> None:
    for component in ("gateway", "aggregator"):
        out = subprocess.run(
            [sys.executable, "-m", "puhui", component, "--help"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0
        assert "exit status: 0 done; 1 " in out.stdout and "2 a usage or config error" in out.stdout
