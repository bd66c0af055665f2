"""The status endpoint: Prometheus text, JSON status, and the HTTP responder over real TCP."""

from __future__ import annotations

import asyncio
import json

import pytest

from drivers.breaker import BreakerState
from drivers.contract import DeviceHealth
from gateway.status import Metrics, StatusServer, StatusSettings, gateway_status, prometheus_text


def _status() -> dict[str, object]:
    up = DeviceHealth("m-1", polls=10, ok=10, requests=20, last_latency_s=0.004)
    down = DeviceHealth(
        "m-2", polls=7, ok=2, failed=5, consecutive_failures=5, last_error="m-2: timeout",
        breaker=BreakerState.OPEN,
    )  # fmt: skip
    return gateway_status(
        "gw-1",
        'site "a"',
        {"m-1": up, "m-2": down},
        {},
        {"samples": 40, "late": 1},
        {"outbox_depth_batches": 3},
    )


def test_device_state_follows_polls() -> None:
    h = DeviceHealth("m")
    assert h.state == "unknown"
    h.ok, h.polls = 1, 1
    assert h.state == "up"
    h.consecutive_failures = 1
    assert h.state == "failing"
    h.breaker = BreakerState.OPEN
    assert h.state == "breaker_open"


def test_prometheus_text_has_one_family_per_metric_and_labels_escaped() -> None:
    text = prometheus_text(_status())
    lines = text.splitlines()
    assert 'puhui_gateway_info{gateway="gw-1",site="site \\"a\\""} 1' in lines
    assert 'puhui_device_polls_total{meter="m-1"} 10' in lines
    assert 'puhui_device_failed_total{meter="m-2"} 5' in lines
    assert 'puhui_device_up{meter="m-1"} 1' in lines
    assert 'puhui_device_up{meter="m-2"} 0' in lines
    assert 'puhui_device_breaker_state{meter="m-2",state="open"} 1' in lines
    assert 'puhui_device_breaker_state{meter="m-2",state="closed"} 0' in lines
    assert 'puhui_device_last_latency_seconds{meter="m-1"} 0.004' in lines
    assert "puhui_intervals_late_total 1" in lines
    assert "puhui_evidence_outbox_depth_batches 3" in lines
    types = [line for line in lines if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))  # each family declared once, samples grouped under it
    assert "puhui_device_last_latency_seconds" not in "".join(
        line for line in lines if 'meter="m-2"' in line and "latency" in line
    )  # None values are left out, not rendered as 0


def test_metrics_render_special_floats() -> None:
    m = Metrics()
    m.add("x", "gauge", "x", float("nan"))
    m.add("y", "gauge", "y", float("inf"))
    assert m.render().splitlines()[2] == "x NaN" and m.render().splitlines()[5] == "y +Inf"


async def _get(port: int, request: bytes) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode().splitlines()[0], body


@pytest.mark.integration
async def test_status_server_answers_status_metrics_healthz_and_rejects_the_rest() -> None:
    async with StatusServer(StatusSettings(port=0), _status) as server:
        line, body = await _get(server.port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert line == "HTTP/1.0 200 OK"
        status = json.loads(body)
        assert status["devices"]["m-2"]["state"] == "breaker_open"
        assert status["devices"]["m-2"]["breaker"] == "open"
        line, body = await _get(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert line == "HTTP/1.0 200 OK" and b'puhui_device_up{meter="m-1"} 1' in body
        assert (await _get(server.port, b"GET /healthz HTTP/1.0\r\n\r\n"))[1] == b"ok\n"
        assert (await _get(server.port, b"GET /nope HTTP/1.0\r\n\r\n"))[0].endswith("404 Not Found")
        assert (await _get(server.port, b"POST /status HTTP/1.0\r\n\r\n"))[0].endswith(
            "405 Method Not Allowed"
        )
        assert (await _get(server.port, b"\r\n"))[0].endswith("400 Bad Request")
