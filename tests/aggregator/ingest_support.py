"""Shared pieces of the aggregator ingest tests: simulated gateways sealing real batches,
configs pointing at the real servers, and an MQTT peer that publishes and collects replies."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from aggregator.config import AggregatorConfig, MqttSettings
from evidence import GatewayKey, IntervalRecord, SealedBatch, Stats, encode_record, generate_key, seal_batch
from evidence.batch import GENESIS_PREV
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.keys import PublicKey
from evidence.wire import Ack, Reply, batch_topic, decode_reply

T0 = (int(time.time()) // 86400 - 3) * 86400  # midnight UTC three days ago: past, but recent
STEP = 900


@dataclass
class SimGateway:
    """A gateway as far as evidence goes: a key, a chain, meters with running counters."""

    gateway: str
    meters: tuple[str, ...] = ("pv-01", "hm-01")
    key: GatewayKey = field(default_factory=generate_key)
    seq: int = 0
    prev: str = GENESIS_PREV
    next_start: int = T0
    counters: dict[str, float] = field(default_factory=dict)

    def enrolment(self, rated_kw: float = 10.0) -> bytes:
        meters = [
            EnrolledMeter(m, "pv" if m.startswith("pv") else "clean_heating", rated_kw, "1")
            for m in self.meters
        ]
        doc = make_enrolment(
            self.key, gateway=self.gateway, site="site-1", meters=meters, created_ms=T0 * 1000
        )
        return doc.to_bytes()

    def intervals(self, n_steps: int, delta: float = 1.25) -> list[IntervalRecord]:
        out = []
        for _ in range(n_steps):
            s, e = self.next_start, self.next_start + STEP
            for m in self.meters:
                c0 = self.counters.get(m, 1000.0)
                c1 = c0 + delta
                self.counters[m] = c1
                out.append(
                    IntervalRecord(m, "energy_import", "kWh", s, e, "counter", c0, s * 1000 - 500, c1,
                                   e * 1000 - 500, delta, Stats("kW", delta * 2, delta * 4, delta * 4),
                                   90, 90)
                )  # fmt: skip
            self.next_start = e
        return out

    def seal(
        self, records: list[Any], *, created_ms: int | None = None, key: GatewayKey | None = None
    ) -> SealedBatch:
        encoded = [r if isinstance(r, bytes) else encode_record(r) for r in records]
        self.seq += 1
        created = created_ms if created_ms is not None else (self.next_start + 5) * 1000
        sealed = seal_batch(
            encoded,
            key=key or self.key,
            gateway=self.gateway,
            seq=self.seq,
            prev=self.prev,
            created_ms=created,
        )
        self.prev = sealed.header_sha256
        return sealed

    def next_batch(self, n_steps: int = 2, **kwargs: Any) -> SealedBatch:
        return self.seal(list(self.intervals(n_steps)), **kwargs)


def isolated_mqtt(mqtt_port: int) -> dict[str, Any]:
    """MQTT settings of an aggregator with a persistent session of its own: a client id and a
    share group no other test uses, so a session left on the shared broker takes no batches
    of later tests (:func:`forget_session` removes it)."""
    unique = uuid.uuid4().hex[:12]
    return {
        "host": "127.0.0.1",
        "port": mqtt_port,
        "client_id": f"puhui-aggregator-{unique}",
        "share_group": f"test-{unique}",
        "insecure": True,
    }  # the suite's plain broker


async def forget_session(mqtt: MqttSettings) -> None:
    """End an aggregator's persistent session on the broker (a clean-session connect under
    the same client id discards it, and what was queued for it)."""
    async with aiomqtt.Client(mqtt.host, mqtt.port, identifier=mqtt.client_id, clean_session=True):
        pass


def make_config(
    tmp_path: Path, *, mqtt_port: int, influx_url: str, database: str, **influx: Any
) -> AggregatorConfig:
    return AggregatorConfig.model_validate(
        {
            "mqtt": {**isolated_mqtt(mqtt_port), "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5},
            "store": {"path": str(tmp_path / "evidence.sqlite3")},
            "influx": {"url": influx_url, "database": database, "retry_initial_s": 0.05, "retry_max_s": 0.5,
                       "timeout_s": 5.0, **influx},
            "key_file": str(tmp_path / "aggregator-key.pem"),
        }
    )  # fmt: skip


class GatewayPeer:
    """Publishes batches over MQTT and collects the aggregator's verified replies."""

    def __init__(self, client: aiomqtt.Client, aggregator_key: PublicKey) -> None:
        self.client = client
        self.key = aggregator_key
        self.replies: list[Reply] = []
        self._changed = asyncio.Event()

    async def publish(self, gateway: str, data: bytes) -> None:
        await self.client.publish(batch_topic(gateway), data, qos=1)

    async def collect(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.replies.append(decode_reply(message.payload, self.key))  # a forged reply fails here
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def wait_replies(self, count: int) -> list[Reply]:
        async with asyncio.timeout(20):
            await self.wait_until(lambda replies: len(replies) >= count)
        return self.replies

    async def wait_until(self, predicate: Callable[[list[Reply]], bool]) -> None:
        """Return once ``predicate(replies)`` holds, checked at every reply (bound it with
        ``asyncio.timeout``)."""
        while not predicate(self.replies):
            await self._changed.wait()

    async def wait_acked(self, count: int) -> None:
        """Return once ``count`` distinct batches are acknowledged (bound it with a timeout)."""
        await self.wait_until(lambda _: len(self.acked()) >= count)

    def acked(self) -> set[tuple[str, int, str]]:
        """(gateway, seq, header_sha256) of every batch acknowledged so far."""
        return {(r.gateway, r.seq, r.header_sha256) for r in self.replies if isinstance(r, Ack)}

    def reply_for(self, gateway: str, seq: int | None) -> list[Reply]:
        return [r for r in self.replies if r.gateway == gateway and r.seq == seq]


@asynccontextmanager
async def gateway_peer(port: int, aggregator_key: PublicKey) -> AsyncIterator[GatewayPeer]:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("puhui/v1/+/ack", qos=1)
        await client.subscribe("puhui/v1/+/reject", qos=1)
        peer = GatewayPeer(client, aggregator_key)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(peer.collect(), name="gateway-peer-collect")
            try:
                yield peer
            finally:
                task.cancel()
