"""Ingest end to end: real Mosquitto, real InfluxDB, batches sealed with real gateway keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from aggregator.config import AggregatorConfig
from aggregator.influx import InfluxV1Client
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from evidence import IntervalRecord, KeyRotationRecord, decode_record, encode_record, generate_key
from evidence.keys import GatewayKey, public_key_b64
from evidence.wire import Ack, Reject
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


@pytest.fixture
def config(tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: InfluxV1Client) -> AggregatorConfig:
    return make_config(
        tmp_path, mqtt_port=mosquitto.port, influx_url=influx_db.url, database=influx_db.database
    )


@pytest.fixture
def registry(config: AggregatorConfig) -> Iterator[GatewayRegistry]:
    """The registry as the CLI sees it: its own connection to the aggregator's store."""
    store = SQLiteEvidenceStore(config.store.path)
    yield GatewayRegistry(store)
    store.close()


@pytest_asyncio.fixture
async def running(
    config: AggregatorConfig, mosquitto: PrivateMosquitto
) -> AsyncIterator[tuple[Aggregator, GatewayPeer]]:
    async with (
        Aggregator(config, key=AGG_KEY) as agg,
        gateway_peer(mosquitto.port, AGG_KEY.public_key) as peer,
    ):
        async with asyncio.timeout(10):
            await agg.connected.wait()
        yield agg, peer
    await forget_session(config.mqtt)


async def _send(peer: GatewayPeer, gateway: str, data: bytes) -> Ack | Reject:
    before = len(peer.replies)
    await peer.publish(gateway, data)
    replies = await peer.wait_replies(before + 1)
    return replies[before]


async def _drained(agg: Aggregator) -> None:
    async with asyncio.timeout(20):
        await agg.wait_for(lambda a: a.store.influx_backlog() == (0, 0))


async def test_two_gateways_verified_stored_once_and_queryable(
    running: tuple[Aggregator, GatewayPeer], registry: GatewayRegistry, influx_db: InfluxV1Client
) -> None:
    agg, peer = running
    gws = [SimGateway("gw-a"), SimGateway("gw-b", meters=("ev-01",))]
    sealed: dict[str, list[IntervalRecord]] = {}
    for gw in gws:
        registry.enrol(gw.enrolment(), at_ms=0)
    for _ in range(3):
        for gw in gws:
            batch = gw.next_batch(2)
            sealed.setdefault(gw.gateway, []).extend(decode_record(r) for r in batch.records)  # type: ignore[misc]
            reply = await _send(peer, gw.gateway, batch.to_bytes())
            assert isinstance(reply, Ack) and reply.status == "stored", reply
            assert (reply.seq, reply.header_sha256) == (batch.header.seq, batch.header_sha256)
    replay = await _send(peer, "gw-a", agg.store.batch_bytes("gw-a", 2) or b"")
    assert isinstance(replay, Ack) and replay.status == "duplicate"
    assert agg.store.batch_count("gw-a") == agg.store.batch_count("gw-b") == 3
    await _drained(agg)

    for gw in gws:
        stored = [a.record for a in agg.store.attested_intervals(gateway=gw.gateway)]
        assert stored == sealed[gw.gateway]
        series = await influx_db.query(
            "SELECT delta, counter_start, counter_end, samples, batch_seq, plausible FROM puhui_interval"
            f" WHERE gateway = '{gw.gateway}' GROUP BY meter, quantity",
            epoch="s",
        )
        got = {(s["tags"]["meter"], row[0]): row[1:] for s in series for row in s["values"]}
        want = {
            (r.meter, r.start): [r.delta, r.counter_start, r.counter_end, r.samples]
            for r in sealed[gw.gateway]
        }
        assert {k: v[:4] for k, v in got.items()} == want
        assert all(v[5] is True for v in got.values())
    [count] = await influx_db.query("SELECT count(delta) FROM puhui_interval")
    assert count["values"][0][1] == 4 * 3 + 2 * 3  # each interval once, the replay added nothing


async def test_refusals_are_answered_counted_kept_and_isolated(
    running: tuple[Aggregator, GatewayPeer], registry: GatewayRegistry
) -> None:
    agg, peer = running
    gw = SimGateway("gw-r")
    registry.enrol(gw.enrolment(), at_ms=0)
    first = gw.next_batch(1)
    assert isinstance(await _send(peer, "gw-r", first.to_bytes()), Ack)
    second = gw.next_batch(2)
    data = second.to_bytes()
    positions = sorted({*range(0, len(data) - 1, max(1, len(data) // 25)), 30, 120, 200, len(data) - 2})
    for pos in positions:  # one flipped bit anywhere: header, signature line, records, newlines
        altered = bytearray(data)
        altered[pos] ^= 0x04
        reply = await _send(peer, "gw-r", bytes(altered))
        assert isinstance(reply, Reject), f"byte {pos} flipped was accepted"
        assert reply.reason in {
            "malformed",
            "bad_signature",
            "merkle_mismatch",
            "unknown_key",
            "key_mismatch",
        }
    assert agg.store.batch_count("gw-r") == 1
    assert isinstance(await _send(peer, "gw-r", data), Ack)  # the genuine batch is unaffected

    replay = await _send(peer, "gw-r", first.to_bytes())
    assert isinstance(replay, Ack) and replay.status == "duplicate"

    stranger = gw.seal(gw.intervals(1), key=generate_key())
    reply = await _send(peer, "gw-r", stranger.to_bytes())
    assert isinstance(reply, Reject) and reply.reason == "unknown_key" and reply.seq == 3
    gw.seq, gw.prev = 2, second.header_sha256  # the gateway never really sent that one

    intruder = SimGateway("gw-x")
    reply = await _send(peer, "gw-x", intruder.next_batch(1).to_bytes())
    assert isinstance(reply, Reject) and reply.reason == "not_enrolled"

    before = gw.next_batch(1)  # sealed before the revocation time
    after = gw.next_batch(1)
    registry.revoke("gw-r", from_ms=after.header.created_ms)
    reply = await _send(peer, "gw-r", after.to_bytes())
    assert isinstance(reply, Reject) and reply.reason == "revoked_key" and reply.seq == 4
    reply = await _send(peer, "gw-r", before.to_bytes())
    assert isinstance(reply, Ack) and reply.status == "stored"  # still in the outbox, sealed in time

    assert agg.store.batch_count("gw-r") == 3
    reasons = [r.reason for r in agg.store.rejections()]
    assert [r.seq for r in agg.store.rejections() if r.reason == "unknown_key"][-1] == 3
    assert "not_enrolled" in reasons and "revoked_key" in reasons
    assert sum(agg.ingest.stats.rejected.values()) == sum(r.repeats for r in agg.store.rejections())
    assert [r.seq for r in agg.store.rejections() if r.reason == "revoked_key"] == [4]


async def test_gap_reorder_fork_and_key_rotation(
    running: tuple[Aggregator, GatewayPeer], registry: GatewayRegistry
) -> None:
    agg, peer = running
    gw = SimGateway("gw-c", meters=("pv-01",))
    registry.enrol(gw.enrolment(), at_ms=0)
    b1, b2, b3 = gw.next_batch(1), gw.next_batch(1), gw.next_batch(1)
    assert isinstance(await _send(peer, "gw-c", b1.to_bytes()), Ack)
    assert isinstance(await _send(peer, "gw-c", b3.to_bytes()), Ack)
    [gap] = agg.store.gaps("gw-c")
    assert (gap.seq, gap.filled_ms) == (2, None)
    assert isinstance(await _send(peer, "gw-c", b2.to_bytes()), Ack)
    [gap] = agg.store.gaps("gw-c")
    assert gap.filled_ms is not None
    assert (agg.ingest.stats.gaps, agg.ingest.stats.reorders) == (1, 1)

    gw.seq, gw.prev = 2, b2.header_sha256
    other3 = gw.next_batch(1)  # same seq 3, other content: a second history
    reply = await _send(peer, "gw-c", other3.to_bytes())
    assert isinstance(reply, Reject) and reply.reason == "fork"
    gw.prev = b3.header_sha256

    new_key: GatewayKey = generate_key()
    rotation = KeyRotationRecord(new_key.key_id, public_key_b64(new_key.public_key), effective_seq=5)
    b4 = gw.seal([*gw.intervals(1), rotation])
    assert isinstance(await _send(peer, "gw-c", b4.to_bytes()), Ack)
    b5 = gw.seal(gw.intervals(1), key=new_key)
    reply = await _send(peer, "gw-c", b5.to_bytes())
    assert isinstance(reply, Ack) and reply.status == "stored"
    stale = gw.seal(gw.intervals(1))  # the old key after the rotation took effect
    reply = await _send(peer, "gw-c", stale.to_bytes())
    assert isinstance(reply, Reject) and reply.reason == "revoked_key"
    registry.refresh()
    keys = registry.get("gw-c")
    assert keys is not None and [(k.key_id, k.valid_from_seq) for k in keys.keys][-1] == (new_key.key_id, 5)


async def test_implausible_intervals_are_stored_and_flagged(
    running: tuple[Aggregator, GatewayPeer], registry: GatewayRegistry, influx_db: InfluxV1Client
) -> None:
    agg, peer = running
    gw = SimGateway("gw-p", meters=("pv-01",))
    registry.enrol(gw.enrolment(rated_kw=2.0), at_ms=0)  # 2 kW x 0.25 h x 1.2 = 0.6 kWh allowed
    good = gw.intervals(1, delta=0.5)
    bad = gw.intervals(1, delta=5.0)
    s = gw.next_start
    backwards = IntervalRecord("pv-01", "energy_import", "kWh", s, s + STEP, "counter", 10.0, s * 1000,
                               10.5, (s + STEP) * 1000 - 1, 0.5, None, 90, 90)  # fmt: skip
    gw.next_start += STEP
    batch = gw.seal([*good, *bad, encode_record(backwards)])
    reply = await _send(peer, "gw-p", batch.to_bytes())
    assert isinstance(reply, Ack) and reply.status == "stored"
    issues = [a.issues for a in agg.store.attested_intervals(gateway="gw-p")]
    assert issues == [(), ("energy_above_nameplate", "power_above_nameplate"), ("counter_decrease",)]
    await _drained(agg)
    [series] = await influx_db.query("SELECT plausible, issues FROM puhui_interval WHERE gateway = 'gw-p'")
    assert [row[1:] for row in series["values"]] == [
        [True, ""],
        [False, "energy_above_nameplate,power_above_nameplate"],
        [False, "counter_decrease"],
    ]
