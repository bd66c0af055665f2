"""Eight DL/T 645 meters on one simulated RS-485 line behind one simulated transparent serial
server, read by the gateway on schedule; and a dead meter on that line.

The fleet keeps true cumulative energy per 60 s step (``truth_steps``), so the energy that
flowed between the two readings bounding an interval is known: a counter read at clock
time t shows the energy integrated up to the step boundary before t.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from common.clock import FastClock, ManualClock
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet, parse_fleet
from firmware_sim.meter import MWS_PER_WH
from gateway.config import SiteConfig, parse_site
from gateway.runtime import Gateway, MemorySink

EPOCH = "2025-01-15T00:00:00+00:00"
STEP = 60
METERS = 8
RATED_KW = 15.0


def _fleet(*, factor: float, dead: bool = False) -> Any:
    devices = [
        {"kind": "dlt645_meter", "name": "house-{i:02d}", "count": METERS, "line": "east",
         "address": "000000000101", "physics": {"model": "heating", "rated_kw": 12.0}},
    ]  # fmt: skip
    data = {
        "clock": {"epoch": EPOCH, "factor": factor},
        "step_s": STEP,
        "truth_interval_s": 900,
        "truth_steps": True,
        "control": None,
        "sites": [
            {"name": "village", "lines": [{"name": "east", "serve": "tcp_server"}], "devices": devices}
        ],
    }
    return parse_fleet(data, "test-fleet")


def _site(
    fleet: Fleet, *, poll: dict[str, float], timeout_s: float, interval_minutes: int = 15
) -> SiteConfig:
    server = fleet.line_servers["village/east"]
    meters = [
        {"id": name, "driver": "dlt645", "scenario": "clean_heating",
         "connection": {"line": "east", "address": dev.endpoint.address},
         "read": ["energy_import", "power"], "counts": ["energy_import"], "poll": poll,
         "nameplate": {"rated_power_kw": RATED_KW, "meter_class": "1"}}
        for name, dev in fleet.devices.items()
    ]  # fmt: skip
    data = {
        "gateway": {"id": "gw-village-1", "site": "village"},
        "interval_minutes": interval_minutes,
        "grace_seconds": 120,
        "boundary_seconds": 60,
        "lines": [{"id": "east", "kind": "tcp_server", "host": server.host, "port": server.port,
                   "baudrate": 9600, "parity": "E", "timeout_s": timeout_s, "inter_frame_delay_ms": 1}],
        "meters": meters,
        "status": {"enabled": False},
    }  # fmt: skip
    return parse_site(data, "village.yaml", load_profiles())


@pytest.mark.integration
async def test_eight_meters_on_one_serial_server_for_a_simulated_day_match_ground_truth() -> None:
    cfg = _fleet(factor=1440)  # a day in a minute
    clock = FastClock(cfg.clock.epoch_s, cfg.clock.factor)
    day_end = cfg.clock.epoch_s + 86_400
    async with Fleet(cfg, clock=clock) as fleet:
        site = _site(fleet, poll={"fast": 300}, timeout_s=0.5)
        sink = MemorySink()
        async with Gateway(site, clock=clock, sink=sink) as gateway:
            await clock.sleep_until(day_end + 150)  # the day's last interval closes at end + grace
            health = dict(gateway.poller.health) if gateway.poller else {}
        logs = fleet.step_logs()
    assert len(health) == METERS
    for meter, h in health.items():
        assert h.failed == 0 and h.ok >= 288, (meter, h)  # every 300 s slot of the day read
    by_meter: dict[str, list[Any]] = {}
    for r in sink.records:
        by_meter.setdefault(r.meter, []).append(r)
    step_kwh = RATED_KW * STEP / 3600  # the most a reading stamped one step late can be off
    for meter, records in by_meter.items():
        log = logs[(meter, "main")]
        counted = [r for r in records if r.delta is not None and "first" not in r.flags]
        assert len(counted) >= 95, meter  # 96 quarter hours a day, the first has no start reading
        total = truth_total = 0.0
        for r in counted:
            t0, t1 = r.counter_start_time_ms / 1000, r.counter_end_time_ms / 1000
            truth = (log.at(t1)[0] - log.at(t0)[0]) / MWS_PER_WH / 1000
            # two readings truncated to 0.01 kWh, and the step a reading straddles
            assert r.delta == pytest.approx(truth, abs=0.02 + step_kwh), (meter, r)
            total += r.delta
            truth_total += truth
        assert truth_total > 10  # a winter day of heating
        assert total == pytest.approx(truth_total, rel=0.005)


async def _round(clock: ManualClock, gateway: Gateway, period: float) -> dict[str, float]:
    """Advance one poll period and wait until every meter has polled; their latencies (s)."""
    assert gateway.poller is not None
    before = {m: h.polls for m, h in gateway.poller.health.items()}
    await clock.advance(period)
    async with asyncio.timeout(20):
        await gateway.poller.wait_until(lambda h: all(h[m].polls > before[m] for m in before))
    return {m: h.last_latency_s or 0.0 for m, h in gateway.poller.health.items()}


@pytest.mark.integration
async def test_a_dead_meter_delays_the_others_by_no_more_than_its_own_timeout() -> None:
    timeout = 0.4
    cfg = _fleet(factor=1)
    clock = ManualClock(cfg.clock.epoch_s)
    async with Fleet(cfg, clock=clock) as fleet:
        dead = "house-03"
        fleet.devices[dead].set_faults(timeout=True)
        site = _site(fleet, poll={"fast": 10}, timeout_s=timeout)
        async with Gateway(site, clock=clock, sink=MemorySink()) as gateway:
            with_dead = [await _round(clock, gateway, 10) for _ in range(3)]  # then its breaker opens
            without = [await _round(clock, gateway, 10) for _ in range(3)]
            health = dict(gateway.poller.health) if gateway.poller else {}
    alive = [m for m in health if m != dead]
    assert health[dead].failed == 3 and health[dead].skipped == 3 and health[dead].requests == 3
    assert all(r[dead] >= timeout for r in with_dead)
    assert all(health[m].failed == 0 and health[m].ok == 6 for m in alive)
    baseline = max(r[m] for r in without for m in alive)  # the line's own queue of 7 meters
    worst = max(r[m] for r in with_dead for m in alive)
    assert worst > timeout / 2  # the meters queued behind the dead one did wait for it ...
    assert worst <= timeout + baseline + 0.1  # ... but for its one timeout only
