"""A gateway whose clock jumped is flagged (issue 20): a batch created before the batch just
before it in the chain, or too long after it, has every interval flagged
``gateway_clock_jump`` (stored, never credited). Real Mosquitto and InfluxDB, real keys; the
previous batch comes from ingest's state or, after a restart, from the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator.config import AggregatorConfig, LimitSettings
from aggregator.plausibility import clock_jumped
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from evidence import generate_key
from evidence.wire import Ack
from testbed.servers import PrivateMosquitto
from tests.aggregator.ingest_support import (
    STEP,
    GatewayPeer,
    SimGateway,
    forget_session,
    gateway_peer,
    make_config,
)

pytestmark = pytest.mark.integration
AGG_KEY = generate_key()
HOUR_MS = 3_600_000


def test_back_at_all_or_forward_past_the_bound() -> None:
    limits = LimitSettings(clock_jump_s=86400)
    assert not clock_jumped(None, 5, limits)
    assert not clock_jumped(1_000, 1_000, limits)
    assert clock_jumped(1_000, 999, limits)
    assert not clock_jumped(0, 86_400_000, limits)
    assert clock_jumped(0, 86_400_001, limits)


@pytest.fixture
def config(tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: object) -> AggregatorConfig:
    url, database = influx_db.url, influx_db.database  # type: ignore[attr-defined]
    base = make_config(tmp_path, mqtt_port=mosquitto.port, influx_url=url, database=database)
    # A bound of 2 h, so a forward jump stays within the aggregator clock (T0 is 3 days ago).
    return base.model_copy(update={"limits": base.limits.model_copy(update={"clock_jump_s": 7200.0})})


async def _stored(peer: GatewayPeer, gateway: str, data: bytes) -> None:
    before = len(peer.replies)
    await peer.publish(gateway, data)
    reply = (await peer.wait_replies(before + 1))[before]
    assert isinstance(reply, Ack) and reply.status == "stored", reply


async def _running(config: AggregatorConfig, mosquitto: PrivateMosquitto) -> AsyncIterator[GatewayPeer]:
    async with (
        Aggregator(config, key=AGG_KEY) as agg,
        gateway_peer(mosquitto.port, AGG_KEY.public_key) as peer,
    ):
        async with asyncio.timeout(10):
            await agg.connected.wait()
        yield peer


def _flagged(config: AggregatorConfig, gateway: str) -> dict[int, bool]:
    """Interval start -> whether it is flagged gateway_clock_jump."""
    store = SQLiteEvidenceStore(config.store.path)
    try:
        return {
            a.record.start: "gateway_clock_jump" in a.issues
            for a in store.attested_intervals(gateway=gateway)
        }
    finally:
        store.close()


async def test_a_batch_created_before_its_predecessor_or_long_after_it_is_flagged(
    config: AggregatorConfig, mosquitto: PrivateMosquitto
) -> None:
    store = SQLiteEvidenceStore(config.store.path)
    gw = SimGateway("gw-jump", meters=("pv-01",))
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    store.close()
    starts = []
    async for peer in _running(config, mosquitto):
        first = gw.next_batch(1)  # created just after its interval: normal
        starts.append(gw.next_start - STEP)
        await _stored(peer, "gw-jump", first.to_bytes())
        back = gw.next_batch(1, created_ms=first.header.created_ms - HOUR_MS)  # clock went back 1 h
        starts.append(gw.next_start - STEP)
        await _stored(peer, "gw-jump", back.to_bytes())
        ok = gw.next_batch(1)  # later than both again: nothing to flag
        starts.append(gw.next_start - STEP)
        await _stored(peer, "gw-jump", ok.to_bytes())
        gw.next_start += 2 * STEP
        far = gw.next_batch(1, created_ms=ok.header.created_ms + 3 * HOUR_MS)  # 3 h > the 2 h bound
        starts.append(gw.next_start - STEP)
        await _stored(peer, "gw-jump", far.to_bytes())
    await forget_session(config.mqtt)
    # After a restart the predecessor's time comes from the store.
    async for peer in _running(config, mosquitto):
        again = gw.next_batch(1, created_ms=far.header.created_ms - 60_000)
        starts.append(gw.next_start - STEP)
        await _stored(peer, "gw-jump", again.to_bytes())
    await forget_session(config.mqtt)
    flagged = _flagged(config, "gw-jump")
    assert [flagged[s] for s in starts] == [False, True, False, True, True]
