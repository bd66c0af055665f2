"""Simulated OCPP chargers over real websockets on loopback, on a fast clock.

- A week of 20 chargers (1.6J and 2.0.1, some signing OCMF) through the tap to the stand-in
  CSMS: every frame delivered unchanged both ways, each charger's energy from the samples
  within 0.5 % of ground truth, signed readings meter-signed.
- Dishonest chargers that inflate signed End readings: flagged, never meter-signed.
- The local controller: the same chargers give the same samples and sessions as through the tap.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from common.clock import FastClock
from drivers.contract import Sample
from drivers.ocpp import (
    ENERGY,
    ChargerConfig,
    CollectingSink,
    ControllerConfig,
    OcppController,
    OcppTap,
    TapConfig,
    is_meter_signed,
)
from drivers.ocpp.config import Listen
from firmware_sim.ocpp_charger import OcppChargerSpec
from firmware_sim.ocpp_fleet import OcppFleet
from testbed.csms import StandInCsms
from tests.gateway.ocpp_site import ALGORITHMS, week_fleet

EPOCH = 1_741_536_000.0  # 2025-03-09T16:00:00Z, midnight in China
DAY = 86_400.0

pytestmark = pytest.mark.integration


def energy_by_meter(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.quantity == ENERGY:
            out[s.meter].append(s)
    for readings in out.values():
        readings.sort(key=lambda s: s.time)
    return out


def check_energy(fleet: OcppFleet, samples: Iterable[Sample]) -> dict[str, tuple[float, float]]:
    """Per charger: (energy from the samples, true energy) over the span of its readings, Wh."""
    by_meter = energy_by_meter(samples)
    out: dict[str, tuple[float, float]] = {}
    for name, charger in fleet.chargers.items():
        got = truth = 0.0
        for c in charger.meters:
            readings = by_meter[f"{name}.{c}"]
            values = [float(s.value) for s in readings]  # type: ignore[arg-type]
            assert values == sorted(values), f"{name}.{c}: the register went backwards"
            got += values[-1] - values[0]
            truth += fleet.true_wh(name, c, readings[0].time, readings[-1].time)
        assert abs(got - truth) <= 0.005 * truth + 1.0, f"{name}: samples {got} Wh, truth {truth} Wh"
        out[name] = (got, truth)
    return out


def pinned(fleet: OcppFleet) -> dict[str, ChargerConfig]:
    """Every charger enrolled; the signing ones with their meter's key pinned."""
    keys = fleet.meter_keys()
    return {name: ChargerConfig(meter_key=keys.get(name)) for name in fleet.chargers}


async def test_a_week_of_20_chargers_through_the_tap() -> None:
    clock = FastClock(EPOCH, 30_000)
    end = EPOCH + 7 * DAY
    sink = CollectingSink()
    started = time.monotonic()
    async with StandInCsms() as csms:
        fleet = OcppFleet(week_fleet(), clock, "ws://unused", until=end, start=EPOCH)
        config = TapConfig(listen=Listen(port=0), upstream=csms.url, chargers=pinned(fleet))
        async with OcppTap(config, sink, clock) as tap:
            for c in fleet.chargers.values():
                c.url = f"ws://127.0.0.1:{tap.port}/{c.spec.name}"
            async with fleet:
                async with asyncio.timeout(75):
                    await fleet.wait_sent_through(end)
    wall = time.monotonic() - started

    for name, c in fleet.chargers.items():  # every frame, both ways, byte for byte
        got = csms.frames[name]
        assert got.received == c.wire.sent, name
        assert got.sent == c.wire.received, name
        assert c.connections == got.connections == 1 and not c.call_errors
    energy = check_energy(fleet, sink.sample_list)
    assert sum(truth for _, truth in energy.values()) > 1_000_000  # over 1 MWh charged in the week

    signers = set(fleet.meter_keys())
    assert {v.status for v in sink.signed_values} == {"verified"}
    assert {v.charger for v in sink.signed_values} == signers
    signed_meters = {s.meter.rsplit(".", 1)[0] for s in sink.sample_list if is_meter_signed(s)}
    assert signed_meters == signers
    starts = Counter(e.charger for e in sink.sessions if e.kind == "start")
    assert starts == {n: c.sessions_started for n, c in fleet.chargers.items() if c.sessions_started}
    assert not sink.problems and all(link.reader_errors == 0 for link in tap.links.values())
    frames = sum(len(c.wire.sent) + len(c.wire.received) for c in fleet.chargers.values())
    print(
        f"\n20 chargers, 7 simulated days: {frames} frames forwarded unchanged, "
        f"{len(sink.sample_list)} samples, {len(sink.sessions)} session events in {wall:.1f} s"
    )


async def test_a_tampered_signed_reading_is_flagged_and_not_meter_signed() -> None:
    clock = FastClock(EPOCH, 20_000)
    end = EPOCH + 2 * DAY
    specs = [
        OcppChargerSpec(
            "CP-LIE16", "1.6", 1, seed=31, arrivals_per_day=10, signing=ALGORITHMS[0], tamper_wh=800
        ),
        OcppChargerSpec(
            "CP-LIE201", "2.0.1", 1, seed=32, arrivals_per_day=10, signing=ALGORITHMS[1], tamper_wh=800
        ),
        OcppChargerSpec(
            "CP-HONEST", "1.6", 1, seed=33, arrivals_per_day=10, signing=ALGORITHMS[2], signed_as="json"
        ),
    ]
    sink = CollectingSink()
    async with StandInCsms() as csms:
        fleet = OcppFleet(specs, clock, "ws://unused", until=end, start=EPOCH)
        config = TapConfig(listen=Listen(port=0), upstream=csms.url, chargers=pinned(fleet))
        async with OcppTap(config, sink, clock) as tap:
            for c in fleet.chargers.values():
                c.url = f"ws://127.0.0.1:{tap.port}/{c.spec.name}"
            async with fleet, asyncio.timeout(40):
                await fleet.wait_sent_through(end)

    by_charger: dict[str, Counter[tuple[str | None, str]]] = defaultdict(Counter)
    for v in sink.signed_values:
        by_charger[v.charger][(v.readings[0].transaction, v.status)] += 1
    for liar in ("CP-LIE16", "CP-LIE201"):
        counts = by_charger[liar]
        ends = fleet.chargers[liar].sessions_started - len(fleet.chargers[liar]._open)
        assert ends >= 3 and counts[("E", "signature_failed")] == ends, counts
        assert counts[("E", "verified")] == 0 and counts[("B", "verified")] >= ends  # only the lie fails
        flagged = {
            r.time
            for v in sink.signed_values
            if v.charger == liar and v.status != "verified"
            for r in v.readings
        }
        at_lies = [s for s in sink.sample_list if s.meter == f"{liar}.1" and s.time in flagged]
        assert at_lies and not any(is_meter_signed(s) for s in at_lies)
        assert all(
            s.quantity != ENERGY or not is_meter_signed(s) or s.time not in flagged for s in sink.sample_list
        )
        assert csms.frames[liar].received == fleet.chargers[liar].wire.sent  # forwarded as the charger lied
    assert set(by_charger["CP-HONEST"]) <= {("B", "verified"), ("C", "verified"), ("E", "verified")}
    honest_energy = [s for s in sink.sample_list if s.meter == "CP-HONEST.1" and s.quantity == ENERGY]
    assert any(is_meter_signed(s) for s in honest_energy)


async def run_day(specs: list[OcppChargerSpec], mode: str, sink: CollectingSink) -> OcppFleet:
    """One simulated day of ``specs`` through the tap (to the stand-in CSMS) or the controller."""
    clock = FastClock(EPOCH, 20_000)
    end = EPOCH + DAY
    fleet = OcppFleet(specs, clock, "ws://unused", until=end, start=EPOCH)
    async with StandInCsms() as csms:
        server: OcppTap | OcppController
        if mode == "tap":
            server = OcppTap(
                TapConfig(listen=Listen(port=0), upstream=csms.url, chargers=pinned(fleet)), sink, clock
            )
        else:
            server = OcppController(
                ControllerConfig(listen=Listen(port=0), chargers=pinned(fleet)), sink, clock
            )
        async with server:
            for c in fleet.chargers.values():
                c.url = f"ws://127.0.0.1:{server.port}/{c.spec.name}"
            async with fleet, asyncio.timeout(40):
                await fleet.wait_sent_through(end)
            if isinstance(server, OcppController):
                with pytest.raises(InvalidStatus) as info:  # not enrolled, not accepted
                    async with connect(f"ws://127.0.0.1:{server.port}/CP-STRANGER", proxy=None):
                        pass
                assert info.value.response.status_code == 404 and server.reader_errors == 0
    return fleet


async def test_the_local_controller_reads_what_the_tap_reads() -> None:
    specs = [
        OcppChargerSpec("CP-L1", "1.6", 2, seed=41, arrivals_per_day=6, signing=ALGORITHMS[0]),
        OcppChargerSpec("CP-L2", "1.6", 1, seed=42, arrivals_per_day=6),
        OcppChargerSpec("CP-L3", "2.0.1", 1, seed=43, arrivals_per_day=6, signing=ALGORITHMS[2]),
        OcppChargerSpec("CP-L4", "2.0.1", 2, seed=44, arrivals_per_day=6, quirky_json=True),
    ]
    local, tapped = CollectingSink(), CollectingSink()
    fleet = await run_day(specs, "controller", local)
    await run_day(specs, "tap", tapped)

    check_energy(fleet, local.sample_list)
    assert sorted(local.sample_list, key=repr) == sorted(tapped.sample_list, key=repr)
    key = lambda e: (e.charger, e.kind, e.connector, e.time, e.meter_wh, e.id_tag)  # noqa: E731
    assert sorted(map(key, local.sessions)) == sorted(map(key, tapped.sessions))
    assert len(local.sessions) >= 8 and not local.problems
    assert {v.status for v in local.signed_values} == {"verified"}
    assert {v.charger for v in local.signed_values} == {"CP-L1", "CP-L3"}
