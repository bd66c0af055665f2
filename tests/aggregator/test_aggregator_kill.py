"""SIGKILL the aggregator process mid-stream: no accepted batch lost, none stored twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aggregator.influx import InfluxV1Client
from aggregator.registry import GatewayRegistry
from aggregator.store import SQLiteEvidenceStore
from evidence import SealedBatch, generate_key, save_private_key
from evidence.wire import Ack
from testbed.servers import PrivateMosquitto
from tests.aggregator.ingest_support import GatewayPeer, SimGateway, gateway_peer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N_BATCHES = 400  # many small batches: with group commit, 40 were all acked at once


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "puhui", "-v", "aggregator", "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )


async def _resend_until_acked(peer: GatewayPeer, batches: dict[str, list[SealedBatch]], goal: int) -> None:
    """What a gateway does: resend what has no ack yet, until ``goal`` batches are acked."""
    async with asyncio.timeout(40):
        while True:
            acked = {(r.gateway, r.seq) for r in peer.replies if isinstance(r, Ack)}
            if len(acked) >= goal:
                return
            for gateway, sealed in batches.items():
                for b in sealed:
                    if (gateway, b.header.seq) not in acked:
                        await peer.publish(gateway, b.to_bytes())
            try:
                async with asyncio.timeout(0.5):  # the gateway's resend interval
                    await peer.wait_replies(len(peer.replies) + 1)
            except TimeoutError:
                pass


async def test_sigkill_mid_stream_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: InfluxV1Client
) -> None:
    agg_key = generate_key()
    save_private_key(agg_key, tmp_path / "agg.pem")
    config = tmp_path / "aggregator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "reconnect_initial_s": 0.05},
                "store": {"path": "evidence.sqlite3"},
                "influx": {"url": influx_db.url, "database": influx_db.database, "retry_initial_s": 0.05},
                "key_file": "agg.pem",
            }
        )
    )
    gws = [SimGateway("gw-k1"), SimGateway("gw-k2")]
    store = SQLiteEvidenceStore(tmp_path / "evidence.sqlite3")
    for gw in gws:
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    batches = {gw.gateway: [gw.next_batch(4) for _ in range(N_BATCHES // 2)] for gw in gws}

    log = tmp_path / "aggregator.log"
    proc = _start(config, log)
    try:
        async with gateway_peer(mosquitto.port, agg_key.public_key) as peer:
            await _resend_until_acked(peer, batches, goal=1)
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the rest are in flight
            proc.wait()
            acked_before = {(r.gateway, r.seq, r.header_sha256) for r in peer.replies if isinstance(r, Ack)}
            assert len(acked_before) < N_BATCHES, "the kill came too late to be mid-stream"

            proc = _start(config, log)
            await _resend_until_acked(peer, batches, goal=N_BATCHES)
            async with asyncio.timeout(20):  # poll the outbox with a deadline
                while store.influx_backlog() != (0, 0):  # noqa: ASYNC110 (another process: no event)
                    await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"aggregator ignored SIGTERM; log tail:\n{log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]

    for gw in gws:  # every batch once, exactly the bytes sealed, every ack before the kill kept
        assert [seq for seq, _, _ in store.chain_links(gw.gateway)] == list(range(1, N_BATCHES // 2 + 1))
        for b in batches[gw.gateway]:
            assert store.batch_bytes(gw.gateway, b.header.seq) == b.to_bytes()
    stored = {(g, s, h) for g in batches for s, h, _ in store.chain_links(g)}
    assert acked_before <= stored
    assert store.influx_backlog() == (0, 0)
    store.close()
    [count] = await influx_db.query("SELECT count(delta) FROM puhui_interval")
    assert count["values"][0][1] == N_BATCHES * 4 * 2
