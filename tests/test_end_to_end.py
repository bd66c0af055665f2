"""The whole chain with every real part: firmware_sim -> gateway (runtime + evidence pipeline)
-> real Mosquitto -> aggregator (verify, SQLite evidence store, signed acks) -> real InfluxDB.

Secured as ``puhui demo`` runs it (:mod:`puhui.demo.security`): the broker speaks TLS only,
takes the site CA's client certificates and enforces the access list (gateway and
aggregator each with its own certificate); InfluxDB has authentication on and the
aggregator writes as its own user, its password in a 0600 file.

On a fast clock (one simulated minute per wall second), with a broker outage in the
middle (the same broker, TLS and access list, restarted): every interval the gateway
closed is stored by the aggregator exactly once, equal to what the gateway sealed, the
chain is gap-free, every counter delta equals the simulator's ground truth between its two
readings, and InfluxDB holds each interval once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from aggregator.config import AggregatorConfig
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from common.clock import FastClock
from drivers.modbus.profiles import load_profiles
from evidence.keys import generate_key, load_private_key, public_key_pem, save_private_key
from evidence.records import IntervalRecord
from firmware_sim import Fleet
from gateway.cli import enrolment_for
from gateway.config import parse_site
from gateway.pipeline import EvidencePipeline
from gateway.runtime import Gateway
from puhui.demo.security import (
    AGGREGATOR,
    INFLUX_WRITER,
    DemoSite,
    InfluxUsers,
    make_influx_users,
    make_site,
    secure_broker,
)
from testbed.servers import PrivateInfluxDB, PrivateMosquitto, mqtt_connack_ok
from tests.gateway.test_acquisition import _resolution, _truth_wh
from tests.sim.helpers import fleet_config

FACTOR = 60.0
PERIOD = 10
GATEWAY = "gw-e2e-1"


class Tee:
    """The pipeline, with a copy of every record the gateway hands it."""

    def __init__(self, pipeline: EvidencePipeline) -> None:
        self.pipeline = pipeline
        self.records: list[IntervalRecord] = []

    def builder_state(self) -> Mapping[str, Any] | None:
        return self.pipeline.builder_state()

    async def submit(self, records: Sequence[IntervalRecord], builder_state: Mapping[str, Any]) -> None:
        await self.pipeline.submit(records, builder_state)
        self.records.extend(records)


def _site(
    fleet: Fleet, clock: FastClock, tmp: Path, broker: PrivateMosquitto, tls: dict[str, str]
) -> dict[str, Any]:
    d = fleet.devices

    def tcp(name: str) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": d[name].endpoint.port, "timeout_s": 2}

    meters = [
        {"id": "elec", "driver": "modbus_tcp", "connection": tcp("elec"), "unit_id": 3, "profile": "sdm630",
         "scenario": "clean_heating", "counts": ["energy_import"]},
        {"id": "heat", "driver": "modbus_tcp", "connection": tcp("heat"), "unit_id": 1,
         "profile": "heat-meter-converter", "scenario": "clean_heating", "counts": ["heat_energy"]},
        {"id": "pv", "driver": "modbus_tcp", "connection": tcp("pv"), "unit_id": 1, "profile": "sunspec",
         "scenario": "pv", "counts": ["energy_generated"]},
    ]  # fmt: skip
    for m in meters:
        m["nameplate"] = {"rated_power_kw": 40, "meter_class": "1"}
        m["poll"] = {"fast": PERIOD, "slow": PERIOD}
    spec = clock.spec
    return {
        "gateway": {"id": GATEWAY, "site": "e2e", "grid_region": "north"},
        "clock": {"mode": "fast", "epoch": spec.epoch, "factor": spec.factor, "wall_start": spec.wall_start},
        "interval_minutes": 1,
        "grace_seconds": 5,
        "meters": meters,
        "status": {"enabled": False},
        "evidence": {
            "key_file": str(tmp / "gw-key.pem"),
            "state_dir": str(tmp / "gw-state"),
            "sealing": {"max_records": 12, "max_age_s": 60},
        },
        "uplink": {
            "host": broker.host,
            "port": broker.port,
            "tls": tls,
            "aggregator_public_key": str(tmp / "aggregator.pub.pem"),
            "resend_after_s": 120,
            "reconnect": {"initial_s": 0.2, "max_s": 1.0},
        },
    }


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[DemoSite, PrivateMosquitto]]:
    """The site PKI, the access list and its broker (TLS, certificates required)."""
    demo = make_site(tmp_path / "pki", tmp_path / "mosquitto", (GATEWAY,))
    with secure_broker(tmp_path / "mosquitto", demo, outlive_parent=False) as broker:
        yield demo, broker


@pytest_asyncio.fixture
async def influx_users(tmp_path: Path) -> AsyncIterator[InfluxUsers]:
    """InfluxDB with authentication: admin, the aggregator's writer, a reader."""
    with PrivateInfluxDB(tmp_path / "influxd", auth_enabled=True) as server:
        yield await make_influx_users(server.url, "puhui_e2e", tmp_path / "influx.password", tmp_path)


@pytest.mark.integration
async def test_sim_to_influx_through_gateway_and_aggregator_with_a_broker_outage(
    tmp_path: Path, secured: tuple[DemoSite, PrivateMosquitto], influx_users: InfluxUsers
) -> None:
    demo, broker = secured
    assert not mqtt_connack_ok(broker.host, broker.port)  # no plain text, no anonymous client
    cfg = fleet_config(
        {"kind": "sdm630", "name": "elec", "unit": 3, "physics": {"model": "heating"}},
        {"kind": "heat_meter", "name": "heat", "unit": 1, "physics": {"model": "heating"}},
        {"kind": "sunspec_inverter", "name": "pv", "unit": 1, "physics": {"model": "pv", "kwp": 10}},
        step_s=PERIOD,
        truth_interval_s=PERIOD,
    )
    epoch = cfg.clock.epoch_s + 10 * 3600  # mid-morning: the PV produces
    clock = FastClock(epoch, FACTOR, time.time())
    agg_key = generate_key()
    save_private_key(agg_key, tmp_path / "aggregator-key.pem")
    (tmp_path / "aggregator.pub.pem").write_bytes(public_key_pem(agg_key.public_key))
    agg_config = AggregatorConfig.model_validate(
        {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "tls": demo.tls(AGGREGATOR),
                "reconnect_initial_s": 0.1,
                "reconnect_max_s": 0.5,
            },
            "store": {"path": str(tmp_path / "evidence.sqlite3")},
            "influx": {
                "url": influx_users.url,
                "database": influx_users.database,
                "username": INFLUX_WRITER,
                "password": {"file": str(influx_users.writer)},
                "create_database": False,
                "retry_initial_s": 0.1,
            },
            "key_file": str(tmp_path / "aggregator-key.pem"),
        }
    )
    async with Fleet(cfg, clock=clock) as fleet:
        data = _site(fleet, clock, tmp_path, broker, demo.tls(GATEWAY))
        (tmp_path / "site.yaml").write_text(yaml.safe_dump(data))
        site = parse_site(data, "site.yaml", load_profiles())
        gw_key = generate_key()
        save_private_key(gw_key, site.evidence.key_file)
        store = SQLiteEvidenceStore(agg_config.store.path)
        try:
            GatewayRegistry(store).enrol(enrolment_for(site, gw_key, created_ms=int(clock.now() * 1000)),
                                         at_ms=int(clock.now() * 1000) - 3_600_000)  # fmt: skip
        finally:
            store.close()
        key = load_private_key(site.evidence.key_file)
        async with Aggregator(agg_config, clock=clock) as agg:
            pipeline = EvidencePipeline(site.evidence, site.uplink, gateway_id=GATEWAY, key=key, clock=clock)
            async with pipeline:
                tee = Tee(pipeline)
                async with Gateway(site, clock=clock, sink=tee) as gateway:
                    start = clock.now()
                    await clock.sleep_until(start + 3 * 60)
                    broker.stop()  # two simulated minutes without a broker
                    await clock.sleep_until(start + 5 * 60)
                    assert pipeline.status()["outbox_depth_batches"] >= 1  # waiting on disk
                    broker.start()
                    await clock.sleep_until(start + 8 * 60 + 10)
                    assert gateway.poller is not None
                    health = dict(gateway.poller.health)
                closed = list(tee.records)
                async with asyncio.timeout(60):
                    while not _drained(pipeline):  # noqa: ASYNC110 - the pipeline exposes counters, no event
                        await asyncio.sleep(0.1)
            async with asyncio.timeout(60):
                await agg.wait_for(lambda a: a.writer.stats.batches_written >= a.ingest.stats.stored)
            stored = list(agg.store.attested_intervals(gateway=GATEWAY))
            links = agg.store.chain_links(GATEWAY)
    assert all(h.failed == 0 for h in health.values()), health
    assert len(closed) >= 3 * 7
    # exactly once, equal to what was sealed, in a gap-free chain
    assert sorted((a.record for a in stored), key=_key) == sorted(closed, key=_key)
    assert [seq for seq, *_ in links] == list(range(1, len(links) + 1))
    # deltas equal ground truth between the two readings of each interval. On the fast clock
    # a reading taken at t shows the simulator's counter at its last 10 s step before t (polls
    # are slot-aligned, so t is just after a step); one stamped just before a step could show
    # either side of it: skipped.
    channel = {"elec": ("elec", 1e-3, "f32kwh"), "heat": ("heat", 1.0, 1.0), "pv": ("pv", 1.0, 1.0)}
    checked = 0
    for r in closed:
        if r.delta is None or "first" in r.flags:
            continue
        assert r.counter_start_time_ms is not None and r.counter_end_time_ms is not None
        t0, t1 = r.counter_start_time_ms / 1000, r.counter_end_time_ms / 1000
        if max(t0 % PERIOD, t1 % PERIOD) > PERIOD - 0.5:
            continue
        device, per_wh, resolution = channel[r.meter]
        truth = _truth_wh(fleet.devices[device], "main", t0 - t0 % PERIOD, t1 - t1 % PERIOD) * per_wh
        tol = _resolution(resolution, max(abs(r.counter_start or 0), abs(r.counter_end or 0)))
        assert r.delta == pytest.approx(truth, abs=tol), r
        checked += 1
    assert checked >= 3 * 6
    # InfluxDB: each interval once (read as the reader: the aggregator's user only writes)
    async with asyncio.timeout(30), influx_users.reading() as reader:
        while True:
            series = await reader.query('SELECT count("delta") FROM "puhui_interval"')
            count = series[0]["values"][0][1] if series and series[0]["values"] else 0
            if count >= sum(r.delta is not None for r in closed):
                break
            await asyncio.sleep(0.2)
    assert count == sum(r.delta is not None for r in closed)


def _drained(pipeline: EvidencePipeline) -> bool:
    status = pipeline.status()
    return not (status["outbox_depth_batches"] or status["pending_records"])


def _key(r: IntervalRecord) -> tuple[str, str, int]:
    return (r.meter, r.quantity, r.start)
