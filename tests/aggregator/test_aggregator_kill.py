"""SIGKILL the aggregator process mid-stream, again and again: no accepted batch lost, none
stored twice; and what was published while it was down arrives at its restart (persistent
MQTT session), not only at the gateway's resend."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from aggregator.config import load_config, parse_config
from aggregator.influx import InfluxV1Client
from aggregator.registry import GatewayRegistry
from aggregator.store import SQLiteEvidenceStore
from evidence import GatewayKey, SealedBatch, generate_key, save_private_key
from testbed.servers import PrivateMosquitto
from tests.aggregator.ingest_support import (
    GatewayPeer,
    SimGateway,
    forget_session,
    gateway_peer,
    isolated_mqtt,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N_BATCHES = 400  # many small batches: with group commit, 40 were all acked at once
KILLS = 20
WINDOW = 8  # batches per gateway published and not yet acked (the uplink's default inflight)
RESEND_S = 1.0  # the gateways' resend_after_s: short, so batches a kill lost come back quickly


def _write_config(tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: InfluxV1Client) -> Path:
    config = tmp_path / "aggregator.yaml"
    mqtt = {**isolated_mqtt(mosquitto.port), "reconnect_initial_s": 0.05}
    influx = {"url": influx_db.url, "database": influx_db.database, "retry_initial_s": 0.05}
    data = {"mqtt": mqtt, "store": {"path": "evidence.sqlite3"}, "influx": influx, "key_file": "agg.pem"}
    config.write_text(yaml.safe_dump(data))
    return config


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "puhui", "-v", "aggregator", "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


class Aggregator:
    """The aggregator as a process: started, SIGKILLed, restarted, finally stopped."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.mqtt = load_config(config).mqtt
        self.proc = _start(config, log)

    def kill_and_restart(self) -> None:
        _kill(self.proc)
        self.proc = _start(self.config, self.log)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            pytest.fail(f"aggregator ignored SIGTERM; log tail:\n{self.log.read_text()[-3000:]}")


@asynccontextmanager
async def _aggregator(tmp_path: Path, mosquitto: PrivateMosquitto, config: Path) -> AsyncIterator[Aggregator]:
    agg = Aggregator(config, tmp_path / "aggregator.log")
    try:
        yield agg
    finally:
        code = agg.stop()
        await forget_session(agg.mqtt)
    assert code == 0, agg.log.read_text()[-3000:]


def _enrolled(tmp_path: Path, *gateways: SimGateway) -> tuple[GatewayKey, SQLiteEvidenceStore]:
    agg_key = generate_key()
    save_private_key(agg_key, tmp_path / "agg.pem")
    store = SQLiteEvidenceStore(tmp_path / "evidence.sqlite3")
    for gw in gateways:
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    return agg_key, store


async def _gateways(peer: GatewayPeer, batches: dict[str, list[SealedBatch]]) -> None:
    """What the gateways do: keep up to WINDOW batches each unacknowledged, oldest first, and
    publish one again RESEND_S after its last publish, until every batch is acknowledged."""
    loop = asyncio.get_running_loop()
    sent_at: dict[tuple[str, int], float] = {}
    total = sum(len(sealed) for sealed in batches.values())
    while len(acked := {(g, s) for g, s, _ in peer.acked()}) < total:
        now = loop.time()
        for gateway, sealed in batches.items():
            for b in [b for b in sealed if (gateway, b.header.seq) not in acked][:WINDOW]:
                if now - sent_at.get((gateway, b.header.seq), -math.inf) >= RESEND_S:
                    sent_at[gateway, b.header.seq] = now
                    await peer.publish(gateway, b.to_bytes())
        try:
            async with asyncio.timeout(0.1):  # the next reply, or time to look at resends
                await peer.wait_replies(len(peer.replies) + 1)
        except TimeoutError:
            pass


async def test_twenty_sigkills_mid_stream_lose_nothing_and_store_nothing_twice(
    tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: InfluxV1Client
) -> None:
    gws = [SimGateway("gw-k1"), SimGateway("gw-k2")]
    agg_key, store = _enrolled(tmp_path, *gws)
    batches = {gw.gateway: [gw.next_batch(4) for _ in range(N_BATCHES // 2)] for gw in gws}
    config = _write_config(tmp_path, mosquitto, influx_db)
    acked_before_kills: set[tuple[str, int, str]] = set()

    async with (
        _aggregator(tmp_path, mosquitto, config) as agg,
        gateway_peer(mosquitto.port, agg_key.public_key) as peer,
        asyncio.TaskGroup() as group,
    ):
        sending = group.create_task(_gateways(peer, batches), name="simulated-gateways")
        for kill in range(1, KILLS + 1):
            progress = kill * N_BATCHES // (KILLS + 1)  # each run acknowledges some batches first
            async with asyncio.timeout(20):
                await peer.wait_acked(progress)
            agg.kill_and_restart()
            acked_before_kills |= peer.acked()
            assert len(acked_before_kills) < N_BATCHES, f"kill {kill} came too late to be mid-stream"
        async with asyncio.timeout(30):
            await sending
        async with asyncio.timeout(20):  # poll the outbox with a deadline
            while store.influx_backlog() != (0, 0):  # noqa: ASYNC110 (another process: no event)
                await asyncio.sleep(0.05)

    for gw in gws:  # every batch once, exactly the bytes sealed, every ack before a kill kept
        assert [seq for seq, _, _ in store.chain_links(gw.gateway)] == list(range(1, N_BATCHES // 2 + 1))
        for b in batches[gw.gateway]:
            assert store.batch_bytes(gw.gateway, b.header.seq) == b.to_bytes()
    stored = {(g, s, h) for g in batches for s, h, _ in store.chain_links(g)}
    assert acked_before_kills <= stored
    assert store.influx_backlog() == (0, 0)
    store.close()
    [count] = await influx_db.query("SELECT count(delta) FROM puhui_interval")
    assert count["values"][0][1] == N_BATCHES * 4 * 2


async def test_a_batch_published_while_the_aggregator_is_down_is_stored_at_its_restart(
    tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: InfluxV1Client
) -> None:
    """Published once and never again (a gateway whose resend is far away): only the broker,
    keeping it for the aggregator's persistent session, can deliver it."""
    gw = SimGateway("gw-p1")
    agg_key, store = _enrolled(tmp_path, gw)
    first, second = gw.next_batch(2), gw.next_batch(2)
    config = _write_config(tmp_path, mosquitto, influx_db)

    async with (
        _aggregator(tmp_path, mosquitto, config) as agg,
        gateway_peer(mosquitto.port, agg_key.public_key) as peer,
    ):
        async with asyncio.timeout(20):  # resent until the aggregator is subscribed and answers
            while not peer.acked():
                await peer.publish(gw.gateway, first.to_bytes())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await peer.wait_until(lambda _: bool(peer.acked()))
        _kill(agg.proc)
        await peer.publish(gw.gateway, second.to_bytes())  # QoS 1: the broker has it now
        agg.proc = _start(agg.config, agg.log)
        try:
            async with asyncio.timeout(15):  # the gateway's default resend_after_s is 60 s
                await peer.wait_until(lambda _: (gw.gateway, 2, second.header_sha256) in peer.acked())
        except TimeoutError:
            pytest.fail("seq 2, published while the aggregator was down, not stored 15 s after its restart")
    assert [seq for seq, _, _ in store.chain_links(gw.gateway)] == [1, 2]
    store.close()


def test_without_a_client_id_the_session_still_has_a_fixed_one() -> None:
    """A broker-assigned id would be new at every restart: nothing queued would find us."""
    data = {"mqtt": {"insecure": True}, "store": {"path": "e.sqlite3"},
            "influx": {"url": "http://127.0.0.1:8086", "database": "p"}, "key_file": "k.pem"}  # fmt: skip
    first, second = parse_config(data, "a.yaml"), parse_config(data, "a.yaml")
    assert first.mqtt.client_id == second.mqtt.client_id == "puhui-aggregator"
