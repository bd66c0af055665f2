"""A meter address that points at a web server: "not a Modbus server", once, quickly.

Issue 15 item 8: pymodbus logged an ERROR with a hex dump for every reply of an HTTP server
("Invalid Modbus protocol id: 21584"), dropped it, waited for its timeout, and the tools
then said "no answer within N s" although something had answered. A real ``http.server``
on a free loopback port plays the meter: it answers a request whose bytes hold a newline
(a count of 10 ends the request with 0x0a) with an HTTP error page, and stays silent on one
without (then "no answer" is the truth).
"""

from __future__ import annotations

import http.server
import logging
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.modbus.profiles import RegisterField
from drivers.modbus.transport import describe_reply, plausible_modbus_tcp
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.modbus_tcp.driver import tcp_source
from gateway.commission import Answer, Link, TcpTarget, scan_units

REPO = Path(__file__).resolve().parents[2]


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def web_server() -> Iterator[tuple[str, int]]:
    """A real HTTP server on a free loopback port (one request at a time)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="web-server-as-meter")
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- fast tier -------------------------------------------------------------------------------


@given(
    tid=st.integers(0, 0xFFFF),
    unit=st.integers(0, 255),
    fc=st.sampled_from([3, 4]),
    count=st.integers(1, 125),
    exception=st.booleans(),
    cut=st.integers(0, 300),
)
def test_every_modbus_tcp_reply_and_each_of_its_prefixes_is_plausible(
    tid: int, unit: int, fc: int, count: int, exception: bool, cut: int
) -> None:
    pdu = bytes([fc | 0x80, 2]) if exception else bytes([fc, 2 * count]) + b"\x12\x34" * count
    frame = struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
    assert plausible_modbus_tcp(frame[:cut])


def test_replies_that_cannot_be_modbus() -> None:
    assert not plausible_modbus_tcp(b"HTTP/1.1 400 Bad Request\r\n")
    assert not plausible_modbus_tcp(b"<!DOCTYPE HTML>\n")
    assert not plausible_modbus_tcp(b"\x00\x01\x00\x00\xff\xff\x01")  # length beyond any PDU
    assert describe_reply(b"HTTP/1.1 400 Bad Request\r\nServer: x\r\n") == "'HTTP/1.1 400 Bad Request'"
    assert describe_reply(bytes(range(20))) == " ".join(f"{b:02x}" for b in range(16)) + " ..."


# -- real tier -------------------------------------------------------------------------------


@pytest.mark.integration
async def test_probe_says_not_a_modbus_server_at_once(web_server: tuple[str, int]) -> None:
    host, port = web_server
    async with Link(TcpTarget(host, port), timeout_s=5.0) as link:
        read = await link.read_block(1, "holding", 0, 10)
        assert read.answer is Answer.NOT_MODBUS
        assert read.error == (
            f"tcp {host}:{port} unit 1 holding 0x0000..0x0009 (0): not a Modbus server "
            "(answered with '<!DOCTYPE HTML>') (wrong port or address?)"
        )
        assert read.latency_s < 2.5  # the page came at once; no waiting for the 5 s timeout
        scanned = [r async for r in scan_units(link, range(1, 248), count=10)]
    assert [r.unit for r in scanned] == [1]  # no other unit id can do better: the scan stops


@pytest.mark.integration
async def test_silence_is_still_no_answer(web_server: tuple[str, int]) -> None:
    host, port = web_server
    async with Link(TcpTarget(host, port), timeout_s=0.5) as link:
        read = await link.read_block(1, "holding", 0, 2)  # no newline: the server waits for more
    assert read.answer is Answer.TIMEOUT and read.error is not None and "no answer within 0.5 s" in read.error


@pytest.mark.integration
async def test_the_gateway_source_reports_it_and_pymodbus_logs_no_dump(
    web_server: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    host, port = web_server
    caplog.set_level(logging.INFO, logger="pymodbus")
    # at address 10 (0x000A) the request holds a newline: the web server answers
    field = RegisterField(name="e", quantity="energy", unit="kWh", address=10, type="uint32", kind="counter")
    connection = ModbusTcpConnection(host=host, port=port, timeout_s=5, retries=0)
    async with tcp_source("web", connection, 1, [field], ManualClock(0.0)) as source:
        results = [await source.poll() for _ in range(3)]
    for result in results:
        assert not result.ok and result.error is not None
        assert result.error.endswith(
            "unit 1 fc3 0x000A..0x000B: not a Modbus server (answered with '<!DOCTYPE HTML>')"
        ), result.error
        assert result.latency_s < 2.5
    assert [r.name for r in caplog.records if r.name.startswith("pymodbus")] == []


def test_the_probe_command_says_it_in_one_line(web_server: tuple[str, int]) -> None:
    host, port = web_server
    out = subprocess.run(
        [sys.executable, "-m", "puhui", "gateway", "probe", "--host", host, "--port", str(port),
         "--unit", "1", "--address", "0", "--count", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"puhui gateway probe: tcp {host}:{port} unit 1 holding 0x0000..0x0009 (0): not a Modbus server "
        "(answered with '<!DOCTYPE HTML>') (wrong port or address?)"
    )
