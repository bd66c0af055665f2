"""Three aggregator processes over one PostgreSQL evidence store, one shared MQTT subscription
(real private Mosquitto, InfluxDB, PostgreSQL), gateways sending with a window of unacked
batches: SIGKILL one of the three 20 times (each restarted at once). Afterwards every batch is
stored exactly once with its exact bytes, every chain is contiguous with no gap left open,
every acknowledgement given before a kill is kept, and InfluxDB holds each interval once."""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggregator.config import AggregatorConfig
from aggregator.influx import InfluxV1Client
from aggregator.registry import GatewayRegistry
from aggregator.store import open_evidence_store
from evidence import generate_key, save_private_key
from testbed.servers import PrivateMosquitto, PrivatePostgres
from tests.aggregator.ingest_support import SimGateway, forget_session, gateway_peer
from tests.aggregator.test_aggregator_kill import Aggregator as AggregatorProcess
from tests.aggregator.test_aggregator_kill import _gateways
from tests.aggregator.test_postgres_aggregator import _config_data

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)
AGG_KEY = generate_key()
AGGREGATORS, KILLS, GATEWAYS, PER_GATEWAY, STEPS = 3, 20, 4, 60, 2


def _configs(tmp_path: Path, base: dict[str, Any]) -> list[Path]:
    """One config per aggregator: the same share group, database and key; its own client id
    (persistent session) and local SQLite file."""
    out = []
    for i in range(AGGREGATORS):
        data = copy.deepcopy(base)
        data["mqtt"]["client_id"] = f"{base['mqtt']['client_id']}-{i}"
        data["store"]["path"] = str(tmp_path / f"local-{i}.sqlite3")
        data["ingest"] = {"reorder_wait_s": 3.0}  # > the gateways' 1 s resend: order survives a kill
        path = tmp_path / f"aggregator-{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        out.append(path)
    return out


async def test_three_aggregators_twenty_sigkills_lose_nothing_and_store_nothing_twice(
    tmp_path: Path,
    postgres: PrivatePostgres,
    postgres_db: dict[str, Any],
    mosquitto: PrivateMosquitto,
    influx_db: InfluxV1Client,
) -> None:
    base = _config_data(
        tmp_path, postgres, postgres_db["dbname"], mosquitto.port, influx_db.url, influx_db.database
    )
    save_private_key(AGG_KEY, tmp_path / "agg.pem")
    gws = [SimGateway(f"gw-m{i}", meters=("pv-01", "hm-01")) for i in range(GATEWAYS)]
    store = open_evidence_store(AggregatorConfig.model_validate(base).store)
    for gw in gws:
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    batches = {gw.gateway: [gw.next_batch(STEPS) for _ in range(PER_GATEWAY)] for gw in gws}
    total = GATEWAYS * PER_GATEWAY
    acked_before_kills: set[tuple[str, int, str]] = set()

    aggs = [
        AggregatorProcess(c, tmp_path / f"aggregator-{i}.log") for i, c in enumerate(_configs(tmp_path, base))
    ]
    try:
        async with (
            gateway_peer(mosquitto.port, AGG_KEY.public_key) as peer,
            asyncio.TaskGroup() as group,
        ):
            sending = group.create_task(_gateways(peer, batches), name="simulated-gateways")
            for kill in range(1, KILLS + 1):
                async with asyncio.timeout(60):
                    await peer.wait_acked(kill * total // (KILLS + 1))
                aggs[kill % AGGREGATORS].kill_and_restart()
                acked_before_kills |= peer.acked()
                assert len(acked_before_kills) < total, f"kill {kill} came too late to be mid-stream"
            async with asyncio.timeout(120):
                await sending
            async with asyncio.timeout(60):  # poll the outbox with a deadline
                while store.influx_backlog() != (0, 0):  # noqa: ASYNC110 (other processes: no event)
                    await asyncio.sleep(0.1)
    finally:
        codes = [agg.stop() for agg in aggs]
        for agg in aggs:
            await forget_session(agg.mqtt)
    assert codes == [0] * AGGREGATORS, [a.log.read_text()[-3000:] for a in aggs]

    try:
        out_of_order = 0
        log_order = {(g, s): i for i, (g, s, _) in enumerate(store.batch_log())}
        for gw in gws:
            links = store.chain_links(gw.gateway)
            assert [seq for seq, _, _ in links] == list(range(1, PER_GATEWAY + 1))  # contiguous, once each
            assert store.batch_count(gw.gateway) == PER_GATEWAY
            for b in batches[gw.gateway]:
                assert store.batch_bytes(gw.gateway, b.header.seq) == b.to_bytes()
            assert [g for g in store.gaps(gw.gateway) if g.filled_ms is None] == []  # no gap left open
            order = [log_order[gw.gateway, s] for s in range(1, PER_GATEWAY + 1)]
            out_of_order += sum(1 for x, y in itertools.pairwise(order) if y < x)
        stored = {(g, s, h) for g in batches for s, h, _ in store.chain_links(g)}
        assert acked_before_kills <= stored
        gaps_recorded = sum(len(store.gaps(gw.gateway)) for gw in gws)
        print(
            f"3 aggregators, {KILLS} kills: {total} batches stored once; {gaps_recorded} gaps recorded"
            f" (all filled); {out_of_order} successors stored before their predecessor"
        )
    finally:
        store.close()
    [count] = await influx_db.query("SELECT count(delta) FROM puhui_interval")
    assert count["values"][0][1] == total * STEPS * 2  # each interval once
