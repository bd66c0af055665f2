"""The aggregator over PostgreSQL: real Mosquitto, InfluxDB and the session's PostgreSQL
cluster (TLS, password file). Ingest verifies, stores and answers as over SQLite; killed
with SIGKILL mid-stream, it loses nothing acknowledged and stores nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from aggregator.config import AggregatorConfig
from aggregator.influx import InfluxV1Client
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import open_evidence_store
from aggregator.store.postgres import PostgresEvidenceStore
from evidence import decode_record, generate_key, save_private_key
from evidence.wire import Ack, Reject
from puhui.cli import main
from testbed.servers import PrivateMosquitto, PrivatePostgres
from tests.aggregator.ingest_support import (
    GatewayPeer,
    SimGateway,
    forget_session,
    gateway_peer,
    isolated_mqtt,
)
from tests.aggregator.test_aggregator_kill import Aggregator as AggregatorProcess
from tests.aggregator.test_aggregator_kill import _gateways

pytestmark = pytest.mark.integration
AGG_KEY = generate_key()


def _config_data(
    tmp_path: Path, postgres: PrivatePostgres, dbname: str, mqtt_port: int, influx_url: str, database: str
) -> dict[str, Any]:
    secret = tmp_path / "pg-password"
    secret.write_text(postgres.password + "\n")
    secret.chmod(0o600)
    assert postgres.tls is not None
    pg = {"host": "127.0.0.1", "port": postgres.port, "dbname": dbname, "user": postgres.user,
          "password": {"file": str(secret)}, "sslrootcert": str(postgres.tls.ca_file)}  # fmt: skip
    return {
        "mqtt": {**isolated_mqtt(mqtt_port), "reconnect_initial_s": 0.05, "reconnect_max_s": 0.5},
        "store": {"path": str(tmp_path / "local.sqlite3"), "postgres": pg},
        "influx": {"url": influx_url, "database": database, "retry_initial_s": 0.05,
                   "retry_max_s": 0.5, "timeout_s": 5.0},
        "key_file": str(tmp_path / "agg.pem"),
    }  # fmt: skip


@pytest.fixture
def config(
    tmp_path: Path,
    postgres: PrivatePostgres,
    postgres_db: dict[str, Any],
    mosquitto: PrivateMosquitto,
    influx_db: InfluxV1Client,
) -> AggregatorConfig:
    data = _config_data(
        tmp_path, postgres, postgres_db["dbname"], mosquitto.port, influx_db.url, influx_db.database
    )
    return AggregatorConfig.model_validate(data)


@pytest.fixture
def registry(config: AggregatorConfig) -> Iterator[GatewayRegistry]:
    """The registry as the CLI sees it: its own connections to the aggregator's database."""
    store = open_evidence_store(config.store)
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


async def test_ingest_verifies_stores_and_answers_over_postgresql(
    running: tuple[Aggregator, GatewayPeer], registry: GatewayRegistry, influx_db: InfluxV1Client
) -> None:
    agg, peer = running
    assert isinstance(agg.store, PostgresEvidenceStore)
    gws = [SimGateway("gw-a"), SimGateway("gw-b", meters=("ev-01",))]
    for gw in gws:
        registry.enrol(gw.enrolment(), at_ms=0)
    sealed = {gw.gateway: [gw.next_batch(2) for _ in range(4)] for gw in gws}
    order = [(g, n) for n in (0, 1, 3) for g in sealed] + [(g, 2) for g in sealed]  # #4 before #3
    for gateway, n in order:
        reply = await _send(peer, gateway, sealed[gateway][n].to_bytes())
        assert isinstance(reply, Ack) and reply.status == "stored", reply
    replay = await _send(peer, "gw-a", sealed["gw-a"][1].to_bytes())
    assert isinstance(replay, Ack) and replay.status == "duplicate"
    forged = bytearray(sealed["gw-b"][0].to_bytes())
    forged[-3] ^= 0x04
    assert isinstance(await _send(peer, "gw-b", bytes(forged)), Reject)
    assert (agg.ingest.stats.gaps, agg.ingest.stats.reorders) == (2, 2)

    async with asyncio.timeout(20):
        await agg.wait_for(lambda a: a.store.influx_backlog() == (0, 0))
    check = open_evidence_store(agg.config.store)  # another connection: what is committed
    try:
        for gateway, batches in sealed.items():
            assert [s for s, _, _ in check.chain_links(gateway)] == [1, 2, 3, 4]
            assert [g.filled_ms is not None for g in check.gaps(gateway)] == [True]
            records = [decode_record(r) for b in batches for r in b.records]
            stored = [a.record for a in check.attested_intervals(gateway=gateway)]
            assert sorted(map(repr, stored)) == sorted(map(repr, records))
        assert sum(r.repeats for r in check.rejections("gw-b")) == 1
    finally:
        check.close()
    [count] = await influx_db.query("SELECT count(delta) FROM puhui_interval")
    assert count["values"][0][1] == 4 * 4 + 4 * 2  # each interval once


async def test_sigkills_mid_stream_lose_nothing_and_store_nothing_twice_over_postgresql(
    tmp_path: Path,
    postgres: PrivatePostgres,
    postgres_db: dict[str, Any],
    mosquitto: PrivateMosquitto,
    influx_db: InfluxV1Client,
) -> None:
    n_batches, kills = 160, 6
    data = _config_data(
        tmp_path, postgres, postgres_db["dbname"], mosquitto.port, influx_db.url, influx_db.database
    )
    config_file = tmp_path / "aggregator.yaml"
    config_file.write_text(yaml.safe_dump(data))
    save_private_key(AGG_KEY, tmp_path / "agg.pem")
    gws = [SimGateway("gw-k1"), SimGateway("gw-k2")]
    store = open_evidence_store(AggregatorConfig.model_validate(data).store)
    for gw in gws:
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    batches = {gw.gateway: [gw.next_batch(4) for _ in range(n_batches // 2)] for gw in gws}
    acked_before_kills: set[tuple[str, int, str]] = set()

    agg = AggregatorProcess(config_file, tmp_path / "aggregator.log")
    try:
        async with (
            gateway_peer(mosquitto.port, AGG_KEY.public_key) as peer,
            asyncio.TaskGroup() as group,
        ):
            sending = group.create_task(_gateways(peer, batches), name="simulated-gateways")
            for kill in range(1, kills + 1):
                async with asyncio.timeout(30):
                    await peer.wait_acked(kill * n_batches // (kills + 1))
                agg.kill_and_restart()
                acked_before_kills |= peer.acked()
                assert len(acked_before_kills) < n_batches, f"kill {kill} came too late to be mid-stream"
            async with asyncio.timeout(60):
                await sending
            async with asyncio.timeout(20):  # poll the outbox with a deadline
                while store.influx_backlog() != (0, 0):  # noqa: ASYNC110 (another process: no event)
                    await asyncio.sleep(0.05)
    finally:
        code = agg.stop()
        await forget_session(agg.mqtt)
    assert code == 0, agg.log.read_text()[-3000:]

    try:
        for gw in gws:  # every batch once, exactly the bytes sealed, every ack before a kill kept
            links = store.chain_links(gw.gateway)
            assert [seq for seq, _, _ in links] == list(range(1, n_batches // 2 + 1))
            for b in batches[gw.gateway]:
                assert store.batch_bytes(gw.gateway, b.header.seq) == b.to_bytes()
        stored = {(g, s, h) for g in batches for s, h, _ in store.chain_links(g)}
        assert acked_before_kills <= stored
    finally:
        store.close()
    [count] = await influx_db.query("SELECT count(delta) FROM puhui_interval")
    assert count["values"][0][1] == n_batches * 4 * 2


def test_the_gateways_command_enrols_and_lists_in_postgresql(
    tmp_path: Path,
    postgres: PrivatePostgres,
    postgres_db: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _config_data(tmp_path, postgres, postgres_db["dbname"], 1883, "http://127.0.0.1:9", "unused")
    config_file = tmp_path / "aggregator.yaml"
    config_file.write_text(yaml.safe_dump(data))
    document = tmp_path / "gw-cli.json"
    document.write_bytes(SimGateway("gw-cli").enrolment())
    assert main(["aggregator", "gateways", "--config", str(config_file), "add", str(document)]) == 0
    assert main(["aggregator", "gateways", "--config", str(config_file), "list"]) == 0
    assert "gw-cli\tsite=site-1\tregion=-\tbatches=0" in capsys.readouterr().out
    store = PostgresEvidenceStore(postgres_db)
    try:
        assert [g.gateway for g in store.gateways()] == ["gw-cli"]
    finally:
        store.close()
    assert not (tmp_path / "local.sqlite3").exists()  # nothing went to the SQLite file
