"""InfluxV1Client against a real InfluxDB 1.x: writes, queries and error translation."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Callable

import httpx
import pytest

from aggregator.influx import (
    InfluxAuthError,
    InfluxDatabaseNotFound,
    InfluxQueryError,
    InfluxRejected,
    InfluxUnavailable,
    InfluxV1Client,
    Point,
    encode_points,
)
from testbed.servers import LOOPBACK, PrivateInfluxDB

pytestmark = pytest.mark.integration


async def test_ping_reports_the_server_version(influx_db: InfluxV1Client) -> None:
    assert (await influx_db.ping()).startswith("1.")


async def test_write_then_query_series(influx_db: InfluxV1Client) -> None:
    await influx_db.write_points(
        [
            Point("energy", {"meter": "m1"}, {"kwh": 1.25, "ok": True}, 1_000),
            Point("energy", {"meter": "m1"}, {"kwh": 2.5, "ok": False}, 2_000),
            Point("energy", {"meter": "m2"}, {"kwh": 7.0, "ok": True}, 1_000),
        ]
    )
    series = await influx_db.query("SELECT kwh, ok FROM energy GROUP BY meter")
    assert series == [
        {
            "name": "energy",
            "tags": {"meter": "m1"},
            "columns": ["time", "kwh", "ok"],
            "values": [[1_000, 1.25, True], [2_000, 2.5, False]],
        },
        {
            "name": "energy",
            "tags": {"meter": "m2"},
            "columns": ["time", "kwh", "ok"],
            "values": [[1_000, 7, True]],
        },
    ]


async def test_multiple_statements_and_epoch(influx_db: InfluxV1Client) -> None:
    await influx_db.write_points([Point("m", {}, {"v": 1}, 3_000_000_000)])
    first, second = await influx_db.query("SELECT sum(v) FROM m; SHOW MEASUREMENTS", epoch="s")
    assert first["values"] == [[0, 1]]
    assert second["values"] == [["m"]]
    [rfc3339] = await influx_db.query("SELECT v FROM m", epoch=None)
    assert rfc3339["values"] == [["1970-01-01T00:00:03Z", 1]]


async def test_writes_are_gzip_compressed(influx_db: InfluxV1Client) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    influx_db._http.event_hooks["request"].append(record)
    body = encode_points(Point("m", {"meter": f"m{n}"}, {"v": float(n)}, n) for n in range(200))
    await influx_db.write(body)
    [request] = sent
    assert request.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(request.content) == body
    assert len(request.content) < len(body) // 3
    [count] = await influx_db.query("SELECT count(v) FROM m")
    assert count["values"] == [[0, 200]]  # the server decompressed it


async def test_bad_point_is_rejected_with_server_text(influx_db: InfluxV1Client) -> None:
    with pytest.raises(InfluxRejected, match="unable to parse 'not line protocol'") as info:
        await influx_db.write(b"not line protocol\n")
    assert info.value.status_code == 400
    assert "invalid field format" in info.value.server_message


async def test_field_type_conflict_is_rejected(influx_db: InfluxV1Client) -> None:
    await influx_db.write_points([Point("m", {}, {"v": 1.0}, 1)])
    with pytest.raises(InfluxRejected, match="field type conflict"):
        await influx_db.write_points([Point("m", {}, {"v": "text"}, 2)])


async def test_write_to_missing_database(influxdb: PrivateInfluxDB) -> None:
    async with InfluxV1Client(influxdb.url, "no_such_database") as influx:
        with pytest.raises(InfluxDatabaseNotFound, match="database not found") as info:
            await influx.write(b"m v=1 1\n")
    assert info.value.status_code == 404


async def test_query_errors(influx_db: InfluxV1Client) -> None:
    with pytest.raises(InfluxQueryError, match="error parsing query") as info:
        await influx_db.query("SELEKT 1")
    assert info.value.status_code == 400
    with pytest.raises(InfluxQueryError, match="retention policy not found"):
        await influx_db.query('SELECT * FROM "no_rp"."m"')


async def test_stopped_server_is_unavailable_then_back(
    fresh_influxdb: Callable[..., PrivateInfluxDB],
) -> None:
    server = fresh_influxdb()
    async with InfluxV1Client(server.url, "db", timeout=5.0) as influx:
        await influx.create_database()
        server.stop()
        with pytest.raises(InfluxUnavailable) as info:
            await influx.write(b"m v=1 1\n")
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert info.value.status_code is None
        with pytest.raises(InfluxUnavailable):
            await influx.ping()
        server.start()
        await influx.write(b"m v=1 1\n")


async def test_silent_server_times_out_as_unavailable() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind((LOOPBACK, 0))
        silent.listen()
        url = f"http://{LOOPBACK}:{silent.getsockname()[1]}"
        async with InfluxV1Client(url, "db", timeout=0.3) as influx:
            with pytest.raises(InfluxUnavailable, match="timed out") as info:
                await influx.ping()
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


async def test_credentials(fresh_influxdb: Callable[..., PrivateInfluxDB]) -> None:
    server = fresh_influxdb(auth_enabled=True)
    async with InfluxV1Client(server.url, "db") as anonymous:
        await anonymous.query("CREATE USER admin WITH PASSWORD 's3cret' WITH ALL PRIVILEGES")
        with pytest.raises(InfluxAuthError) as info:
            await anonymous.create_database()
        assert info.value.status_code == 401
    async with InfluxV1Client(server.url, "db", username="admin", password="s3cret") as admin:
        await admin.create_database()
        await admin.write(b"m v=1 1\n")
    async with InfluxV1Client(server.url, "db", username="admin", password="wrong") as wrong:
        with pytest.raises(InfluxAuthError):
            await wrong.write(b"m v=1 1\n")


async def test_token_goes_in_the_authorization_header(influx_db: InfluxV1Client) -> None:
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with InfluxV1Client(influx_db.url, influx_db.database, token="t0k3n") as influx:
        influx._http.event_hooks["request"].append(record)
        await influx.ping()  # 1.x without auth ignores the header
    assert sent[0].headers["Authorization"] == "Token t0k3n"


def test_constructor_refuses_ambiguous_credentials() -> None:
    with pytest.raises(ValueError, match="either token or username"):
        InfluxV1Client("http://127.0.0.1:1", "db", token="t", username="u")
    with pytest.raises(ValueError, match="http:// or https://"):
        InfluxV1Client("127.0.0.1:8086", "db")
