"""The InfluxDB outbox: an outage does not stop ingest, and every interval lands exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.influx import InfluxV1Client
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from evidence import generate_key
from evidence.wire import Ack
from testbed.servers import PrivateInfluxDB, PrivateMosquitto
from tests.aggregator.ingest_support import GatewayPeer, SimGateway, forget_session, gateway_peer, make_config

pytestmark = pytest.mark.integration
AGG_KEY = generate_key()


async def _publish_all(peer: GatewayPeer, gw: SimGateway, n: int) -> list[str]:
    digests = []
    for _ in range(n):
        batch = gw.next_batch(2)
        digests.append(batch.header_sha256)
        await peer.publish(gw.gateway, batch.to_bytes())
    return digests


async def _counts(client: InfluxV1Client) -> tuple[int, int]:
    series = await client.query("SELECT count(delta) FROM puhui_interval; SELECT count(seq) FROM puhui_batch")
    return tuple(s["values"][0][1] for s in series) if series else (0, 0)  # type: ignore[return-value]


async def test_influxdb_down_mid_stream_then_back_every_interval_exactly_once(
    tmp_path: Path, mosquitto: PrivateMosquitto, fresh_influxdb: Callable[..., PrivateInfluxDB]
) -> None:
    influx = fresh_influxdb()
    config = make_config(tmp_path, mqtt_port=mosquitto.port, influx_url=influx.url, database="puhui")
    gw = SimGateway("gw-out")
    store = SQLiteEvidenceStore(config.store.path)
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    store.close()
    async with (
        Aggregator(config, key=AGG_KEY) as agg,
        gateway_peer(mosquitto.port, AGG_KEY.public_key) as peer,
        InfluxV1Client(influx.url, "puhui") as client,
    ):
        async with asyncio.timeout(10):
            await agg.connected.wait()
        await _publish_all(peer, gw, 5)
        await peer.wait_replies(5)
        async with asyncio.timeout(20):
            await agg.wait_for(lambda a: a.store.influx_backlog() == (0, 0))

        await asyncio.to_thread(influx.stop)
        await _publish_all(peer, gw, 10)
        replies = await peer.wait_replies(15)  # ingest and acks go on without InfluxDB
        assert all(isinstance(r, Ack) and r.status == "stored" for r in replies)
        async with asyncio.timeout(20):  # the writer has tried and is backing off
            await agg.wait_for(lambda a: a.writer.stats.retries > 0)
        assert agg.store.influx_backlog()[0] > 0

        await asyncio.to_thread(influx.start)
        async with asyncio.timeout(30):
            await agg.wait_for(lambda a: a.store.influx_backlog() == (0, 0))
        assert await _counts(client) == (15 * 4, 15)

        # A crash between a write and its outbox update rewrites the same points: InfluxDB
        # overwrites identical series + timestamp, so the count does not move.
        with sqlite3.connect(config.store.path) as db:
            db.execute("UPDATE batches SET influx_state = 0")
        agg.writer.notify()
        async with asyncio.timeout(20):
            await agg.wait_for(lambda a: a.store.influx_backlog() == (0, 0))
        assert await _counts(client) == (15 * 4, 15)
        [series] = await client.query("SELECT delta, batch_seq FROM puhui_interval WHERE meter = 'pv-01'")
        assert [row[2] for row in series["values"]] == [seq for seq in range(1, 16) for _ in range(2)]
    await forget_session(config.mqtt)
