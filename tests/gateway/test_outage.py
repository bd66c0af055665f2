"""Broker down for a simulated day, then back: every interval arrives, none twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from common.clock import FastClock
from evidence.chain import verify_chain
from evidence.records import IntervalRecord, encode_record
from gateway.evidence_config import SealingSettings
from gateway.pipeline import EvidencePipeline
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber, eventually
from tests.gateway.evidence_helpers import T0, L, evidence_settings, interval, make_keys, uplink_settings

pytestmark = pytest.mark.integration
GW = "gw-outage"
DAY = 86_400
FACTOR = 43_200.0  # a simulated day in two seconds
METERS = 10


async def produce(
    pipeline: EvidencePipeline, clock: FastClock, until: float, sent: list[IntervalRecord]
) -> None:
    """Every closed 15-minute interval of METERS meters, submitted when it closes."""
    k = 0
    while T0 + (k + 1) * L <= until:
        await clock.sleep_until(T0 + (k + 1) * L)
        records = [interval(m, k) for m in range(METERS)]
        await pipeline.submit(records, {"version": 1, "k": k})
        sent += records
        k += 1


async def test_broker_down_for_a_simulated_day(
    tmp_path: Path, fresh_mosquitto: Callable[..., PrivateMosquitto]
) -> None:
    broker = fresh_mosquitto()
    keys = make_keys(tmp_path / "keys")
    clock = FastClock(T0, FACTOR)
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=20, max_age_s=1800)
    )
    uplink = uplink_settings(broker.host, broker.port, keys)
    down_at, up_at, end = T0 + 0.25 * DAY, T0 + 1.25 * DAY, T0 + 1.5 * DAY
    sent: list[IntervalRecord] = []
    async with (
        AckSubscriber(broker.host, broker.port, tmp_path / "agg.sqlite",
                      gateway_keys={GW: keys.gateway.public_key}, aggregator_key=keys.aggregator) as agg,
        EvidencePipeline(settings, uplink, gateway_id=GW, key=keys.gateway, clock=clock) as p,
        asyncio.TaskGroup() as group,
    ):  # fmt: skip
        group.create_task(produce(p, clock, end, sent), name="outage-producer")
        await clock.sleep_until(down_at)
        broker.stop()
        await eventually(lambda: p.status()["connected"] == 0, 10, "the uplink to notice")
        acked_before = p.status()["acks"]  # acks already in the socket buffer are counted by now
        await clock.sleep_until(up_at - 600)
        during = p.status()
        assert during["connected"] == 0 and during["acks"] == acked_before
        assert int(during["outbox_depth_batches"] or 0) >= 40  # a day of batches waits on disk
        assert float(during["oldest_unacked_age_s"] or 0) >= 0.9 * DAY
        await asyncio.to_thread(broker.start)  # same port: the uplink reconnects by itself
        await eventually(lambda: len(sent) == METERS * int(1.5 * DAY // L), 30, "the producer to finish")
        drained = lambda: p.status()["outbox_depth_batches"] == 0 and p.status()["pending_records"] == 0  # noqa: E731
        await eventually(drained, 30, "the outbox to drain")
        batches = agg.batches(GW)
        assert p.status()["connects"] >= 2
    arrived = [r for b in batches for r in b.records]
    assert len(arrived) == len(set(arrived)) == len(sent)  # none twice
    assert sorted(arrived) == sorted(encode_record(r) for r in sent)  # every one
    assert verify_chain((b.header, b.header_sha256) for b in batches).ok
