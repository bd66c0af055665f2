"""Simulated OCPP chargers to a signed statement, every real part between (issue 24):

firmware_sim chargers (1.6J and 2.0.1; two signing OCMF, one not, one dishonest) -> real
websockets on loopback -> the gateway's OCPP tap -> the stand-in CSMS, and the gateway's
sealed batches (intervals and session records) -> real Mosquitto (TLS, client certificates,
access list) -> the aggregator (verify, SQLite evidence store, chain sessions indexed) ->
``puhui aggregator reductions compute`` / ``verify``.

Two simulated days of four chosen chargers on a fast clock, and a week of 20 (the credited
energy per charger within 0.5 % of ground truth). The two days' statement must show:

- per honest charger, the credited kWh within 0.5 % of ground truth (``OcppFleet.true_wh``);
  the dishonest one's at most the truth (its inflated plain readings make its intervals
  flagged and excluded);
- the signing chargers' kWh at ``meter_signed`` (their sessions credited, the intervals under
  them displaced; what is left is sessions still open at the period's end), the non-signing
  charger's at ``gateway_signed``;
- the dishonest charger's sessions flagged ``signature_failed`` and none credited meter-signed;
- every credited kWh with its level (the levels add up to the statement's activity), and no
  kWh twice (per charger, meter-signed + gateway-signed = the unit's credited kWh = the truth).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import AggregatorConfig
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from common.clock import FastClock
from drivers.modbus.profiles import load_profiles
from evidence.keys import generate_key, load_private_key, public_key_pem, save_private_key
from firmware_sim.ocpp_charger import OcppChargerSpec
from firmware_sim.ocpp_fleet import OcppFleet
from gateway.cli import enrolment_for
from gateway.config import parse_site
from gateway.pipeline import EvidencePipeline
from gateway.runtime import Gateway
from puhui.cli import main
from puhui.demo.security import AGGREGATOR, DemoSite, make_site, secure_broker
from testbed.csms import StandInCsms
from testbed.servers import PrivateInfluxDB, PrivateMosquitto
from tests.gateway.ocpp_site import charger_specs, ocpp_site, week_fleet

pytestmark = pytest.mark.integration
EPOCH = 1_741_536_000.0  # 2025-03-09T16:00:00Z, midnight in Beijing
DAYS = 2
FACTOR = 4_000.0  # two days in about 45 s of wall time
# A week in about 150 s. Not faster: the simulated chargers tick every 0.05 s of wall time
# (200 s simulated at 4,000x) and a reading must reach the gateway within its 600 s grace.
WEEK_FACTOR = 4_000.0
GATEWAY = "gw-ocpp"
PARAMS = Path(__file__).resolve().parents[1] / "config" / "methodologies" / "ev-charging-jjj-2.0.0.yaml"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[DemoSite, PrivateMosquitto]]:
    demo = make_site(tmp_path / "pki", tmp_path / "mosquitto", (GATEWAY,))
    with secure_broker(tmp_path / "mosquitto", demo, outlive_parent=False) as broker:
        yield demo, broker


def _agg_config(
    tmp: Path, demo: DemoSite, broker: PrivateMosquitto, influx: PrivateInfluxDB
) -> AggregatorConfig:
    return AggregatorConfig.model_validate(
        {
            "mqtt": {"host": broker.host, "port": broker.port, "tls": demo.tls(AGGREGATOR),
                     "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5},
            "store": {"path": str(tmp / "evidence.sqlite3")},
            "influx": {"url": influx.url, "database": f"ev_e2e_{time.time_ns()}", "retry_initial_s": 0.1},
            "key_file": str(tmp / "aggregator-key.pem"),
        }
    )  # fmt: skip


def _site(
    tmp: Path, specs: Any, keys: dict[str, str], csms: str, demo: DemoSite, broker: PrivateMosquitto,
    grace_s: int,
) -> Any:  # fmt: skip
    data = ocpp_site(
        specs, keys, csms, state_dir=str(tmp / "gw-state"), key_file=str(tmp / "gw-key.pem"),
        uplink={"host": broker.host, "port": broker.port, "tls": demo.tls(GATEWAY),
                "aggregator_public_key": str(tmp / "aggregator.pub.pem"), "resend_after_s": 600,
                "reconnect": {"initial_s": 0.2, "max_s": 1.0}},
    )  # fmt: skip
    data["gateway"]["grid_region"] = "beijing"
    data["grace_seconds"] = grace_s  # at 4,000x, 600 s are 0.15 s of wall time for a reading to arrive
    for m in data["meters"]:
        m["nameplate"]["calibrated_until"] = "2026-12-31"
    return parse_site(data, "site.yaml", load_profiles())


async def run_chain(
    tmp_path: Path, demo: DemoSite, broker: PrivateMosquitto, influx: PrivateInfluxDB,
    specs: list[OcppChargerSpec], days: int, factor: float, grace_s: int,
) -> tuple[OcppFleet, StandInCsms, float]:  # fmt: skip
    """``days`` simulated days of ``specs`` through the tap, the gateway's batches verified and
    stored by the aggregator; returns when the gateway's outbox is empty (the period's end)."""
    agg_key = generate_key()
    save_private_key(agg_key, tmp_path / "aggregator-key.pem")
    (tmp_path / "aggregator.pub.pem").write_bytes(public_key_pem(agg_key.public_key))
    clock = FastClock(EPOCH, factor)
    end = EPOCH + days * 86_400
    config = _agg_config(tmp_path, demo, broker, influx)
    async with StandInCsms() as csms:
        fleet = OcppFleet(specs, clock, "ws://unused", until=end + 900, start=EPOCH)
        site = _site(tmp_path, specs, fleet.meter_keys(), csms.url, demo, broker, grace_s)
        gw_key = generate_key()
        save_private_key(gw_key, site.evidence.key_file)
        store = SQLiteEvidenceStore(config.store.path)
        try:
            GatewayRegistry(store).enrol(enrolment_for(site, gw_key, created_ms=int(EPOCH * 1000)),
                                         at_ms=int(EPOCH * 1000) - 3_600_000)  # fmt: skip
        finally:
            store.close()
        async with Aggregator(config, clock=clock):
            key = load_private_key(site.evidence.key_file)
            pipeline = EvidencePipeline(site.evidence, site.uplink, gateway_id=GATEWAY, key=key, clock=clock)
            async with pipeline:
                async with Gateway(site, clock=clock, sink=pipeline) as gateway:
                    assert gateway.ocpp is not None
                    for c in fleet.chargers.values():
                        c.url = f"ws://127.0.0.1:{gateway.ocpp.port}/{c.spec.name}"
                    async with fleet, asyncio.timeout(days * 86_400 / factor + 60):
                        await fleet.wait_sent_through(end + 900)
                    await clock.sleep_until(end + 1800 + site.grace_seconds + 1)  # intervals up to end close
                async with asyncio.timeout(60):
                    while pipeline.status()["outbox_depth_batches"] or pipeline.status()["pending_records"]:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
    for name, c in fleet.chargers.items():  # the tap forwarded every frame unchanged, both ways
        assert csms.frames[name].received == c.wire.sent, name
        assert csms.frames[name].sent == c.wire.received, name
    return fleet, csms, end


def compute_statement(
    tmp_path: Path, specs: list[OcppChargerSpec], end: float, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """``puhui aggregator reductions compute``, ``verify`` and the offline package check; the
    statement's body."""
    db, key_file = str(tmp_path / "evidence.sqlite3"), str(tmp_path / "aggregator-key.pem")
    units = [
        f"--unit={s.name}=" + "+".join(f"{s.name}.{c}" for c in range(1, s.connectors + 1)) for s in specs
    ]
    argv = ["aggregator", "reductions", "compute", "--db", db, "--key", key_file, "--params", str(PARAMS),
            "--gateway", GATEWAY, *units, "--start", str(int(EPOCH)), "--end", str(int(end))]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    statement_id = capsys.readouterr().out.split()[1]
    assert main(["aggregator", "reductions", "show", "--db", db, statement_id]) == 0
    body: dict[str, Any] = json.loads(capsys.readouterr().out)["body"]
    issuer = tmp_path / "aggregator.pub.pem"
    assert (
        main(["aggregator", "reductions", "verify", "--db", db, "--issuer", str(issuer), statement_id]) == 0
    )
    package = tmp_path / "statement.zip"  # offline: the package carries the session records' batches
    assert main(["aggregator", "reductions", "package", "--db", db, statement_id, "--out", str(package)]) == 0
    capsys.readouterr()
    assert main(["verify", str(package), "--issuer", str(issuer)]) == 0, capsys.readouterr().err
    assert "OCPP session record(s) found in the batches" in capsys.readouterr().out
    return body


async def test_chargers_to_a_statement_credit_each_kwh_once_at_its_level(
    tmp_path: Path, secured: tuple[DemoSite, PrivateMosquitto], influxdb: PrivateInfluxDB,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    demo, broker = secured
    specs = charger_specs()
    fleet, _, end = await run_chain(tmp_path, demo, broker, influxdb, specs, DAYS, FACTOR, 600)
    body = compute_statement(tmp_path, specs, end, capsys)
    check_statement(body, fleet, EPOCH, end)


async def test_a_week_of_20_chargers_through_the_proxy_is_credited_within_half_a_percent(
    tmp_path: Path, secured: tuple[DemoSite, PrivateMosquitto], influxdb: PrivateInfluxDB,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Issue 24's first proof whole: 20 chargers (1.6J and 2.0.1, 12 signing) for a simulated
    week through the gateway's tap to the stand-in CSMS, every frame unchanged both ways, each
    charger's credited kWh in the signed statement within 0.5 % of ground truth."""
    demo, broker = secured
    specs = week_fleet()
    started = time.monotonic()
    fleet, _, end = await run_chain(tmp_path, demo, broker, influxdb, specs, 7, WEEK_FACTOR, 600)
    body = compute_statement(tmp_path, specs, end, capsys)
    levels = body["assurance"]["levels"]
    total_kwh = body["activity"]["energy_mwh"] * 1000
    assert sum(lv["kwh"] for lv in levels.values()) == pytest.approx(total_kwh, rel=1e-9)
    signed_kwh: dict[str, float] = defaultdict(float)
    for item in body["evidence"]["chain_sessions"]["items"]:
        if item["status"] == "credited":
            assert item["level"] == "meter_signed"
            signed_kwh[item["charger"]] += item["energy_wh"] / 1000
    signers = set(fleet.meter_keys())
    assert {n for n, kwh in signed_kwh.items() if kwh > 0} == signers  # the meter-signed ones, only
    assert levels["meter_signed"]["kwh"] == pytest.approx(sum(signed_kwh.values()), rel=1e-9)
    truth_total = 0.0
    for unit in body["units"]:
        name = unit["id"]
        truth = sum(fleet.true_wh(name, n, EPOCH, end) for n in fleet.chargers[name].meters) / 1000
        got = unit["activity"]["energy_mwh"] * 1000
        assert truth > 20, name
        assert got == pytest.approx(truth, rel=0.005), name
        truth_total += truth
    assert {u["id"] for u in body["units"]} == set(fleet.chargers)
    assert truth_total > 1_000  # over 1 MWh charged in the week
    frames = sum(len(c.wire.sent) + len(c.wire.received) for c in fleet.chargers.values())
    print(f"\n20 chargers, 7 simulated days: {frames} frames unchanged, {total_kwh:.1f} kWh credited "
          f"(truth {truth_total:.1f}), meter-signed {levels['meter_signed']['kwh']:.1f} kWh, "
          f"in {time.monotonic() - started:.1f} s")  # fmt: skip


def check_statement(body: dict[str, Any], fleet: OcppFleet, start: float, end: float) -> None:
    levels = body["assurance"]["levels"]
    total_kwh = body["activity"]["energy_mwh"] * 1000
    assert sum(lv["kwh"] for lv in levels.values()) == pytest.approx(total_kwh, rel=1e-9)  # each kWh a level
    chain = body["evidence"]["chain_sessions"]
    assert chain["looked_up"] is True
    signed_kwh: dict[str, float] = defaultdict(float)
    by_charger: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in chain["items"]:
        by_charger[item["charger"]].append(item)
        if item["status"] == "credited":
            assert item["level"] == "meter_signed" and item["assurance"] == "meter_signed"
            signed_kwh[item["charger"]] += item["energy_wh"] / 1000
    assert levels["meter_signed"]["kwh"] == pytest.approx(sum(signed_kwh.values()), rel=1e-9)
    print(f"\nstatement: {total_kwh:.1f} kWh; by level "
          + ", ".join(f"{n} {lv['kwh']:.1f}" for n, lv in levels.items()))  # fmt: skip
    for unit in body["units"]:
        name = unit["id"]
        c = fleet.chargers[name]
        truth = sum(fleet.true_wh(name, n, start, end) for n in c.meters) / 1000
        got = unit["activity"]["energy_mwh"] * 1000
        print(f"  {name}: {got:.2f} kWh credited, truth {truth:.2f} kWh, meter-signed "
              f"{signed_kwh[name]:.2f}; sessions {dict(_count(by_charger[name]))}")  # fmt: skip
        assert truth > 50, name
        if fleet.chargers[name].spec.tamper_wh:  # its plain End readings lie: those intervals are
            assert got <= truth  # flagged (reset, invalid_value) and excluded: less, never more
        else:
            assert got == pytest.approx(truth, rel=0.005), name
    for name in ("CP-A16", "CP-B201"):  # the rest: sessions still open at the period's end
        assert {i["status"] for i in by_charger[name]} == {"credited"}, name
        assert signed_kwh[name] > 0.75 * _unit_kwh(body, name)
    assert signed_kwh["CP-C16"] == 0 and {i["status"] for i in by_charger["CP-C16"]} == {"not_meter_signed"}
    liar = by_charger["CP-LIE"]
    assert liar and signed_kwh["CP-LIE"] == 0
    assert all("signature_failed" in i["flags"] and i["status"] == "signature_failed" for i in liar)
    gateway_kwh = sum(_unit_kwh(body, u["id"]) for u in body["units"]) - sum(signed_kwh.values())
    assert levels["gateway_signed"]["kwh"] == pytest.approx(gateway_kwh, rel=1e-9)  # none counted twice


def _unit_kwh(body: dict[str, Any], unit: str) -> float:
    return float(next(u for u in body["units"] if u["id"] == unit)["activity"]["energy_mwh"]) * 1000


def _count(items: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i["status"]] += 1
    return out
