"""The whole chain through a three-node broker cluster (NATS, RabbitMQ): sealed batches in
the gateways' outboxes -> the gateway uplink (real, with the cluster's nodes as its
failover list) -> the cluster -> the aggregator process (persistent session, no shared
subscription) -> the SQLite evidence store -> InfluxDB. Mid-stream the aggregator is
SIGKILLed and restarted, then the node every client started on is SIGKILLed: no batch lost,
none stored twice, chains contiguous, InfluxDB equal to the store.

Run: ``.venv/bin/python -m pytest tests/broker/test_cluster_chain.py -q -s`` (the figures
print with ``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aggregator.influx import InfluxV1Client
from common.clock import SystemClock
from common.mqtt import BrokerAddress
from evidence import GatewayKey
from gateway.evidence_config import BackoffSettings, UplinkSettings
from gateway.store import EvidenceStore
from gateway.uplink import Uplink
from tests.aggregator.ingest_support import SimGateway
from tests.aggregator.test_aggregator_kill import Aggregator, _enrolled
from tests.security.conftest import AGGREGATOR, GW_A, GW_B

from .conftest import Broker, start_broker

pytestmark = pytest.mark.integration
BATCHES = 60  # per gateway
STEPS = 4  # 15-minute steps per batch, two meters: 8 intervals a batch
DEADLINE = 180.0


@pytest.fixture(scope="module", params=("nats", "rabbitmq"))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    kind: str = request.param
    yield from start_broker(kind, tmp_path_factory.mktemp(f"chain-{kind}"))


def _secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _aggregator_config(tmp_path: Path, broker: Broker, influx: InfluxV1Client) -> Path:
    mqtt = {
        "host": broker.host, "port": broker.ports[0],
        "failover": [{"host": broker.host, "port": p} for p in broker.ports[1:]],
        "tls": {"ca_file": str(broker.ca_file)}, "username": AGGREGATOR,
        "password": {"file": str(_secret(tmp_path / "agg-mqtt-password", broker.passwords[AGGREGATOR]))},
        "client_id": f"puhui-aggregator-chain-{broker.kind}", "share_group": None,
        "reconnect_initial_s": 0.1, "reconnect_max_s": 1.0,
    }  # fmt: skip
    influx_cfg = {"url": influx.url, "database": influx.database, "retry_initial_s": 0.05}
    data = {"mqtt": mqtt, "store": {"path": "evidence.sqlite3"}, "influx": influx_cfg, "key_file": "agg.pem"}
    config = tmp_path / "aggregator.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


def _uplink(
    tmp_path: Path, broker: Broker, gw: SimGateway, agg_key: GatewayKey, sent: list[bytes]
) -> tuple[Uplink, EvidenceStore]:
    """The gateway's uplink over an outbox of BATCHES sealed batches (their bytes go to ``sent``)."""
    store = EvidenceStore.open(tmp_path / f"state-{gw.gateway}", gateway_id=gw.gateway)
    with store.transaction():
        for _ in range(BATCHES):
            sealed = gw.next_batch(STEPS)
            store.insert_batch(sealed, sealed.to_bytes(), "data")
            sent.append(sealed.to_bytes())
    settings = UplinkSettings(
        host=broker.host, port=broker.ports[0], tls=None, username=gw.gateway,
        failover=tuple(BrokerAddress(host=broker.host, port=p) for p in broker.ports[1:]),
        aggregator_public_key="(given below)", resend_after_s=10.0,
        reconnect=BackoffSettings(initial_s=0.1, max_s=1.0),
    )  # fmt: skip
    uplink = Uplink(settings, store, gateway_id=gw.gateway, clock=SystemClock(),
                    aggregator_key=agg_key.public_key, password=broker.passwords[gw.gateway],
                    tls_context=broker.context, rng=random.Random(1))  # fmt: skip
    return uplink, store


async def _until(condition: object, what: str, within: float = DEADLINE) -> None:
    assert callable(condition)
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 (other processes: no event to wait on)
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {within} s: {what}")


async def test_chain_through_the_cluster_with_aggregator_and_node_killed(
    tmp_path: Path, cluster: Broker, influx_db: InfluxV1Client
) -> None:
    assert cluster.cluster is not None
    gws = [SimGateway(GW_A), SimGateway(GW_B)]
    agg_key, store = _enrolled(tmp_path, *gws)
    config = _aggregator_config(tmp_path, cluster, influx_db)
    sealed: dict[str, list[bytes]] = {gw.gateway: [] for gw in gws}
    uplinks = [_uplink(tmp_path, cluster, gw, agg_key, sealed[gw.gateway]) for gw in gws]
    total = BATCHES * len(gws)

    def acked() -> int:
        return sum(up.counts.acks for up, _ in uplinks)

    started = time.monotonic()
    agg = Aggregator(config, tmp_path / "aggregator.log")
    node_killed = False
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(up.run(), name=f"uplink-{up_store.path.name}") for up, up_store in uplinks
            ]
            await _until(lambda: acked() >= total // 3, "a third acknowledged")
            agg.kill_and_restart()
            at_agg_kill = acked()
            await _until(lambda: acked() >= 2 * total // 3, "two thirds acknowledged")
            cluster.cluster.kill(0)  # the node the aggregator and both gateways started on
            node_killed = True
            at_node_kill = acked()
            await _until(lambda: all(s.stats().depth == 0 for _, s in uplinks), "every outbox empty")
            for task in tasks:
                task.cancel()
        elapsed = time.monotonic() - started
        await _until(lambda: store.influx_backlog() == (0, 0), "InfluxDB caught up", 30)
    finally:
        code = agg.stop()
        for _, gw_store in uplinks:
            gw_store.close()
        if node_killed:
            await asyncio.to_thread(cluster.cluster.restart, 0)
    assert code == 0, agg.log.read_text()[-3000:]
    assert at_agg_kill < total and at_node_kill < total, "a kill came after the end"

    for gw in gws:  # every batch once, in a contiguous chain, bytes as sealed
        links = store.chain_links(gw.gateway)
        assert [seq for seq, _, _ in links] == list(range(1, BATCHES + 1))
        assert [store.batch_bytes(gw.gateway, seq) for seq, _, _ in links] == sealed[gw.gateway]
    [count] = await influx_db.query("SELECT count(delta) FROM puhui_interval")
    intervals = total * STEPS * 2
    assert count["values"][0][1] == intervals
    store.close()
    resends = sum(up.counts.resends for up, _ in uplinks)
    reconnects = sum(up.counts.connects for up, _ in uplinks)
    print(f"\n{cluster.kind}: {total} batches ({intervals} intervals) through 3 nodes in {elapsed:.1f} s; "
          f"aggregator killed at {at_agg_kill} acked, node 0 at {at_node_kill}; gateway resends {resends}, "
          f"gateway connects {reconnects}; lost 0, stored twice 0")  # fmt: skip
    with contextlib.suppress(OSError):
        log = agg.log.read_text()
        print(f"aggregator: {log.count('cannot connect')} failed connects, "
              f"{log.count('connection lost')} connections lost")  # fmt: skip
