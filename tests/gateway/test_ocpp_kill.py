"""SIGKILL the gateway (``puhui gateway run``, its OCPP tap in front of the stand-in CSMS) while
chargers are mid-session; restart it: the chargers reconnect through it, every session that
spans the kill is one sealed session record whose energy is the ground truth, and the sealed
intervals' energy per connector is the ground truth too (within 0.5 %). The sealed batches
then go through the aggregator's own ingest (BatchIngest into SQLite): it keeps every session
record, with the same energies.

Real websockets on loopback, a real gateway process, its real evidence store; the chargers and
the CSMS run in the test process on the same fast clock (``clock: {mode: fast, wall_start}``).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store import SQLiteEvidenceStore
from common.clock import FastClock, SystemClock
from drivers.modbus.profiles import load_profiles
from evidence.batch import SealedBatch, parse_batch, verify_batch
from evidence.chain import verify_chain
from evidence.keys import generate_key, load_private_key, save_private_key
from evidence.records import IntervalRecord, SessionRecord, decode_record
from evidence.wire import Ack, batch_topic
from firmware_sim.ocpp_fleet import OcppFleet
from gateway.cli import enrolment_for
from gateway.config import parse_site
from gateway.store import EvidenceStore
from testbed.csms import StandInCsms
from tests.gateway.ocpp_site import charger_specs, ocpp_site
from tests.gateway.test_ocpp_gateway import check_intervals

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EPOCH = 1_741_536_000.0  # 2025-03-09T16:00:00Z
DAY = 86_400.0
FACTOR = 3_000.0  # a day in 29 s of wall time
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def start_gateway(config: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "puhui", "gateway", "run", "--config", str(config),
            stdout=err, stderr=err, cwd=REPO,
        )  # fmt: skip


async def wait_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Poll the tap's port until it accepts (the gateway is up), with a deadline."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"gateway exited {proc.returncode}:\n{log.read_text()[-3000:]}")  # noqa: ASYNC240
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"gateway not listening on {port} within 30 s:\n{log.read_text()[-3000:]}")  # noqa: ASYNC240


def outbox(state_dir: Path) -> list[SealedBatch]:
    """The batches the gateway sealed (no uplink: all still in its outbox), by seq."""
    store = EvidenceStore.open(state_dir, gateway_id="gw-ocpp")
    try:
        return [parse_batch(store.batch_data(b.seq)) for b in sorted(store.outbox(), key=lambda b: b.seq)]
    finally:
        store.close()


def sealed(state_dir: Path) -> tuple[list[IntervalRecord], list[SessionRecord], int]:
    """Every record the gateway sealed, the batches and chain checked."""
    batches = outbox(state_dir)
    key = load_private_key(state_dir.parent / "gateway-key.pem")
    for b in batches:
        verify_batch(b, key.public_key)
    report = verify_chain((b.header, b.header_sha256) for b in batches)
    assert report.ok, report
    intervals: list[IntervalRecord] = []
    sessions: list[SessionRecord] = []
    for b in batches:
        for raw in b.records:
            rec = decode_record(raw)
            if isinstance(rec, IntervalRecord):
                intervals.append(rec)
            elif isinstance(rec, SessionRecord):
                sessions.append(rec)
    return intervals, sessions, len(batches)


async def test_gateway_killed_mid_session_loses_no_session_energy(tmp_path: Path) -> None:
    specs = charger_specs()
    key = generate_key()
    save_private_key(key, tmp_path / "gateway-key.pem")
    port = free_port()
    wall_start = time.time()
    clock = FastClock(EPOCH, FACTOR, wall_start)
    end = EPOCH + DAY
    log = tmp_path / "gateway.log"
    config = tmp_path / "site.yaml"
    kills: list[float] = []
    async with StandInCsms() as csms:
        fleet = OcppFleet(specs, clock, f"ws://127.0.0.1:{port}", until=end, start=EPOCH)
        site = ocpp_site(
            specs, fleet.meter_keys(), csms.url, port=port,
            clock={"mode": "fast", "epoch": EPOCH, "factor": FACTOR, "wall_start": wall_start},
            state_dir=str(tmp_path / "state"), key_file=str(tmp_path / "gateway-key.pem"),
        )  # fmt: skip
        config.write_text(yaml.safe_dump(site))
        proc = await start_gateway(config, log)
        try:
            await wait_listening(port, proc, log)
            async with fleet:
                for _ in range(2):
                    await mid_session(fleet)
                    kills.append(clock.now())
                    proc.send_signal(signal.SIGKILL)
                    assert await proc.wait() == -signal.SIGKILL
                    await clock.sleep(1800)  # half an hour of charging with the gateway gone
                    proc = await start_gateway(config, log)
                    await wait_listening(port, proc, log)
                async with asyncio.timeout(120):
                    await fleet.wait_sent_through(end)
                await clock.sleep_until(end + 900 + 300 + 60)  # the last interval closes
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]

    for c in fleet.chargers.values():  # they reconnected through the restarted gateway
        assert c.connections >= 2, (c.spec.name, c.connections)
    intervals, sessions, batches = sealed(tmp_path / "state")
    interval_wh, interval_truth = check_intervals(fleet, intervals)
    spanning = check_spanning(fleet, sessions, kills)
    lied = sum(fleet.chargers[r.charger].spec.tamper_wh for r in spanning)
    total = sum(r.energy_wh or 0.0 for r in spanning) - lied
    truth = sum(
        fleet.true_wh(r.charger, r.connector or 0, (r.start_time_ms or 0) / 1000, r.stop_time_ms / 1000)
        for r in spanning
    )
    at_aggregator = await aggregator_sessions(tmp_path, site)
    assert {k: at_aggregator[k] for k in ((r.charger, r.transaction_id) for r in spanning)} == {
        (r.charger, r.transaction_id): r.energy_wh for r in spanning
    }
    assert len(at_aggregator) == len(sessions)
    print(
        f"\n{len(kills)} SIGKILLs mid-session: {len(spanning)} session(s) spanning a kill, "
        f"{total:.0f} Wh sealed (less {lied} Wh a dishonest charger added) vs {truth:.0f} Wh true; "
        f"{len(sessions)} session records, {len(intervals)} intervals in {batches} batches; "
        f"the aggregator's ingest kept {len(at_aggregator)} chain sessions, the same energies; "
        f"intervals {interval_wh:.0f} Wh vs {interval_truth:.0f} Wh true"
    )


async def aggregator_sessions(tmp_path: Path, site: dict[str, object]) -> dict[tuple[str, str], float | None]:
    """The sealed batches through the aggregator's own ingest into its SQLite store: the chain
    sessions it keeps, (charger, transaction) -> energy."""
    key = load_private_key(tmp_path / "gateway-key.pem")
    enrolment = enrolment_for(parse_site(site, "site.yaml", load_profiles()), key, created_ms=0)
    config = AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(tmp_path / "agg.db")},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"},
         "key_file": str(tmp_path / "unused.pem")}
    )  # fmt: skip
    with StoreThreads() as threads:
        store = SQLiteEvidenceStore(tmp_path / "agg.db")
        try:
            registry = GatewayRegistry(store)
            registry.enrol(enrolment, at_ms=0)
            ingest = BatchIngest(config, store=store, registry=registry, key=generate_key(),
                                 clock=SystemClock(), run_db=threads.run_db)  # fmt: skip
            for batch in outbox(tmp_path / "state"):
                answer = await ingest.process(batch_topic("gw-ocpp"), batch.to_bytes())
                assert answer is not None and isinstance(answer[1], Ack), answer
            out: dict[tuple[str, str], float | None] = {}
            for _, _, raw in store.chain_sessions(gateway="gw-ocpp"):
                record = decode_record(raw)
                assert isinstance(record, SessionRecord)
                out[(record.charger, record.transaction_id)] = record.energy_wh
            return out
        finally:
            store.close()


async def mid_session(fleet: OcppFleet) -> None:
    """Wait until at least two chargers have a session open whose start the CSMS answered."""
    async with asyncio.timeout(60):
        while sum(1 for c in fleet.chargers.values() if c._open and c.connected.is_set()) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # polling the simulators' state, with the deadline above
        await asyncio.sleep(0.05)  # a few more readings into those sessions


def check_spanning(
    fleet: OcppFleet, sessions: list[SessionRecord], kills: list[float]
) -> list[SessionRecord]:
    """One record per completed session (none twice); those spanning a kill equal the truth."""
    keys = [(r.charger, r.transaction_id) for r in sessions]
    assert len(keys) == len(set(keys)), "a session sealed twice"
    by_charger: dict[str, int] = defaultdict(int)
    for r in sessions:
        by_charger[r.charger] += 1
    for name, c in fleet.chargers.items():
        assert by_charger[name] == c.sessions_started - len(c._open), name
    spanning = []
    for r in sessions:
        assert r.start_time_ms is not None and r.energy_wh is not None and r.connector is not None, r
        truth = fleet.true_wh(r.charger, r.connector, r.start_time_ms / 1000, r.stop_time_ms / 1000)
        lie = fleet.chargers[r.charger].spec.tamper_wh
        assert abs(r.energy_wh - lie - truth) <= 1.0, (r, truth)
        if any(r.start_time_ms / 1000 < k < r.stop_time_ms / 1000 for k in kills):
            spanning.append(r)
    assert len(spanning) >= 2, "no session spanned a kill"
    assert any("gateway_restart" in r.flags for r in spanning)
    return spanning
