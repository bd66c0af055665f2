"""The gateway with an OCPP tap: simulated chargers over real websockets on loopback, through the
gateway's tap to the stand-in CSMS, become interval records and session records.

- interval deltas per connector add up to ground truth (within 0.5 %);
- every completed session is one ``session`` record whose energy is the true energy between its
  start and stop (1 Wh: the chargers report whole Wh);
- honest signing chargers' sessions are ``meter_signed``, with every signed value kept as carried;
  the dishonest charger's are ``gateway_signed`` and flagged ``signature_failed``; unsigned ones
  ``gateway_signed``;
- the records encode and decode back to the same bytes (the reference decoder accepts them);
- the site config refuses an OCPP meter without the endpoint, a second meter on one connector,
  and a meter id the endpoint names otherwise, naming the field.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from common.clock import FastClock
from drivers.modbus.profiles import load_profiles
from evidence.records import IntervalRecord, SessionRecord, decode_record, encode_record
from firmware_sim.ocpp_fleet import OcppFleet
from gateway.config import parse_site
from gateway.errors import ConfigError
from gateway.runtime import Gateway, MemorySink
from testbed.csms import StandInCsms
from tests.gateway.ocpp_site import charger_specs, ocpp_site

EPOCH = 1_741_536_000.0  # 2025-03-09T16:00:00Z
DAY = 86_400.0
PROFILES = load_profiles()

pytestmark = pytest.mark.integration


async def test_chargers_through_the_gateways_tap_become_intervals_and_sessions() -> None:
    clock = FastClock(EPOCH, 3_000)
    end = EPOCH + DAY
    specs = charger_specs()
    sink = MemorySink()
    async with StandInCsms() as csms:
        fleet = OcppFleet(specs, clock, "ws://unused", until=end, start=EPOCH)
        site = parse_site(ocpp_site(specs, fleet.meter_keys(), csms.url), "site.yaml", PROFILES)
        async with Gateway(site, clock=clock, sink=sink) as gateway:
            assert gateway.ocpp is not None
            for c in fleet.chargers.values():
                c.url = f"ws://127.0.0.1:{gateway.ocpp.port}/{c.spec.name}"
            async with fleet, asyncio.timeout(60):
                await fleet.wait_sent_through(end)
            await clock.sleep_until(end + 900 + site.grace_seconds + 1)  # the last interval closes
    for name, c in fleet.chargers.items():  # the tap forwarded every frame unchanged
        assert csms.frames[name].received == c.wire.sent, name
        assert csms.frames[name].sent == c.wire.received, name

    got, truth = check_intervals(fleet, sink.records)
    print(f"\nintervals: {got:.0f} Wh vs {truth:.0f} Wh true; {len(sink.sessions)} session records")
    by_charger = check_sessions(fleet, sink.sessions)
    assert {r.assurance for r in by_charger["CP-A16"]} == {"meter_signed"}
    assert {r.assurance for r in by_charger["CP-B201"]} == {"meter_signed"}
    assert {r.assurance for r in by_charger["CP-C16"]} == {"gateway_signed"}
    liar = by_charger["CP-LIE"]
    assert {r.assurance for r in liar} == {"gateway_signed"}
    assert all("signature_failed" in r.flags for r in liar)
    assert all(v.status == "verified" for r in by_charger["CP-A16"] for v in r.signed_values)
    assert all(r.meter_key == fleet.meter_keys()["CP-A16"] for r in by_charger["CP-A16"])
    for r in sink.sessions:
        raw = encode_record(r)
        assert decode_record(raw) == r and encode_record(decode_record(raw)) == raw


def check_intervals(fleet: OcppFleet, records: list[IntervalRecord]) -> tuple[float, float]:
    """Per connector: the interval deltas add up to the true energy between the first and last
    bounding readings (0.5 %). Returns (sealed, true) Wh over the honest chargers."""
    totals = [0.0, 0.0]
    by_meter: dict[str, list[IntervalRecord]] = defaultdict(list)
    for r in records:
        by_meter[r.meter].append(r)
    assert set(by_meter) == {f"{n}.{c}" for n, ch in fleet.chargers.items() for c in ch.meters}
    for meter, recs in by_meter.items():
        charger, connector = meter.rsplit(".", 1)
        if fleet.chargers[charger].spec.tamper_wh:
            continue  # a charger that lies in its plain values lies in its intervals too (docs/ocpp.md)
        counted = [r for r in recs if r.delta is not None]
        got = sum(r.delta or 0.0 for r in counted)
        t0 = min(r.counter_start_time_ms or 0 for r in counted) / 1000
        t1 = max(r.counter_end_time_ms or 0 for r in counted) / 1000
        truth = fleet.true_wh(charger, int(connector), t0, t1)
        assert abs(got - truth) <= 0.005 * truth + 2.0, f"{meter}: intervals {got} Wh, truth {truth} Wh"
        assert truth > 10_000, meter
        totals[0] += got
        totals[1] += truth
    return totals[0], totals[1]


def check_sessions(fleet: OcppFleet, sessions: list[SessionRecord]) -> dict[str, list[SessionRecord]]:
    """Each charger's completed sessions are records; each record's energy is the truth."""
    by_charger: dict[str, list[SessionRecord]] = defaultdict(list)
    for r in sessions:
        by_charger[r.charger].append(r)
    for name, c in fleet.chargers.items():
        completed = c.sessions_started - len(c._open)
        assert len(by_charger[name]) == completed >= 2, name
    for r in sessions:
        assert r.start_time_ms is not None and r.energy_wh is not None and r.connector is not None, r
        truth = fleet.true_wh(r.charger, r.connector, r.start_time_ms / 1000, r.stop_time_ms / 1000)
        lie = fleet.chargers[r.charger].spec.tamper_wh
        assert abs(r.energy_wh - lie - truth) <= 1.0, (r.charger, r.transaction_id, r.energy_wh, truth)
    return by_charger


def test_the_site_config_checks_ocpp_meters() -> None:
    specs = charger_specs()[:1]
    good = ocpp_site(specs, {}, "ws://127.0.0.1:1")
    site = parse_site(good, "site.yaml", PROFILES)
    assert site.ocpp is not None and site.ocpp.mode == "tap"

    no_endpoint = {**good}
    del no_endpoint["ocpp"]
    with pytest.raises(ConfigError, match=r"meters\[0\]\.driver: an ocpp meter needs the site's 'ocpp'"):
        parse_site(no_endpoint, "site.yaml", PROFILES)

    twice = {**good, "meters": [good["meters"][0], {**good["meters"][1], "id": "other"}]}
    twice["meters"][1]["connection"] = dict(good["meters"][0]["connection"])
    with pytest.raises(
        ConfigError, match=r"meters\[1\]\.connection: charger 'CP-A16' connector 1 is already"
    ):
        parse_site(twice, "site.yaml", PROFILES)

    named = ocpp_site(specs, {}, "ws://127.0.0.1:1")
    named["ocpp"]["tap"]["chargers"] = {"CP-A16": {"meter_ids": {1: "left"}}}
    with pytest.raises(ConfigError, match=r"meters\[0\]\.id: ocpp\.tap\.chargers\.CP-A16\.meter_ids names"):
        parse_site(named, "site.yaml", PROFILES)

    both = ocpp_site(specs, {}, "ws://127.0.0.1:1")
    both["ocpp"]["controller"] = {}
    with pytest.raises(ConfigError, match=r"ocpp: .*'controller' is given but mode is 'tap'"):
        parse_site(both, "site.yaml", PROFILES)
