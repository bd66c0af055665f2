"""MQTT meters on a secured broker: a meter's identity publishes only its own topics, only
the gateway that meters it reads them; the simulator's publisher and the gateway's MQTT
driver both connect with TLS and their client certificates (the way ``puhui demo`` runs)."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.clock import ManualClock
from common.tls import TlsSettings
from drivers.contract import Sample
from drivers.mqtt.config import MqttConnection, MqttField, MqttSource, MqttTimestamp
from drivers.mqtt.driver import MqttCredentialsError, MqttSubscriber
from evidence.wire import ack_topic, batch_subscription, batch_topic
from firmware_sim import Fleet
from firmware_sim.errors import ServeError
from puhui.broker import BrokerSite, MeterTopic, access_document, write_broker_config
from puhui.cli import main
from puhui.pki import PkiLayout, issue_client, issue_password, issue_server, make_ca
from tests.sim.helpers import fleet_config

from .conftest import (
    AGGREGATOR,
    GW_A,
    GW_B,
    ROGUE,
    SecureSite,
    clients,
    granted,
    payload,
    receive_until,
    start_broker,
    until_payload,
)

PLUG_A, PLUG_B = "plug-a", "plug-b"
TOPIC_A, TOPIC_B = "tele/plug-a/SENSOR", "tele/plug-b/SENSOR"
METERS = (
    MeterTopic(topic=TOPIC_A, publisher=PLUG_A, gateway=GW_A),
    MeterTopic(topic=TOPIC_B, publisher=PLUG_B, gateway=GW_B),
)


def _site(root: Path, auth: str = "certificate") -> BrokerSite:
    ca = make_ca(root / "pki")
    issue_server(ca)
    for identity in (AGGREGATOR, GW_A, GW_B, PLUG_A, PLUG_B, ROGUE):
        issue_client(ca, identity)
        issue_password(ca.layout, identity)
    return BrokerSite(pki=root / "pki", gateways=(GW_A, GW_B), meters=METERS, auth=auth)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def meter_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureSite]:
    root = tmp_path_factory.mktemp("meter-site")
    site = _site(root)
    files = write_broker_config(site, root / "broker")
    broker = start_broker(root, site, files)
    try:
        yield SecureSite(site, files, PkiLayout(site.pki), broker)
    finally:
        broker.close()


# -- the access list -------------------------------------------------------------------------------


def test_access_list_gives_meters_their_topics_and_gateways_their_meters(tmp_path: Path) -> None:
    doc = access_document(_site(tmp_path))
    rules = {
        r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"] if a["allow"]} for r in doc["roles"]
    }
    assert rules["meter:plug-a"] == {("publishClientSend", TOPIC_A)}
    assert rules["gateway:gw-a"] == {
        ("publishClientSend", batch_topic(GW_A)),
        *((kind, t) for t in (ack_topic(GW_A), "puhui/v1/gw-a/reject", TOPIC_A)
          for kind in ("subscribeLiteral", "publishClientReceive")),
    }  # fmt: skip
    assert not any(TOPIC_A in t or TOPIC_B in t for _, t in rules["aggregator:aggregator"])
    assert [c["username"] for c in doc["clients"]] == [AGGREGATOR, GW_A, GW_B, PLUG_A, PLUG_B]


def test_password_mode_gives_meter_publishers_passwords(tmp_path: Path) -> None:
    doc = access_document(_site(tmp_path, auth="password"))
    plug = next(c for c in doc["clients"] if c["username"] == PLUG_A)
    assert {"password", "salt", "iterations"} <= set(plug)


@pytest.mark.parametrize(
    ("meter", "message"),
    [
        ({"topic": "tele/+/SENSOR", "publisher": PLUG_A, "gateway": GW_A}, "literal topic"),
        ({"topic": "tele/#", "publisher": PLUG_A, "gateway": GW_A}, "literal topic"),
        ({"topic": "$SYS/broker", "publisher": PLUG_A, "gateway": GW_A}, "literal topic"),
        ({"topic": batch_topic(GW_A), "publisher": PLUG_A, "gateway": GW_A}, "inside the evidence topics"),
        ({"topic": TOPIC_A, "publisher": PLUG_A, "gateway": "gw-c"}, "not one of the site's gateways"),
        ({"topic": TOPIC_A, "publisher": GW_B, "gateway": GW_A}, "an identity of its own"),
        ({"topic": TOPIC_A, "publisher": AGGREGATOR, "gateway": GW_A}, "an identity of its own"),
        ({"topic": TOPIC_A, "publisher": "plug/a", "gateway": GW_A}, "identity 'plug/a' must match"),
    ],
)
def test_bad_meter_is_refused(tmp_path: Path, meter: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrokerSite(pki=tmp_path, gateways=(GW_A, GW_B), meters=(meter,))  # type: ignore[arg-type]


def test_a_topic_has_one_publisher(tmp_path: Path) -> None:
    twice = (METERS[0], MeterTopic(topic=TOPIC_A, publisher=PLUG_B, gateway=GW_B))
    with pytest.raises(ValueError, match="listed twice"):
        BrokerSite(pki=tmp_path, gateways=(GW_A, GW_B), meters=twice)


def test_broker_config_command_takes_meters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _site(tmp_path)
    argv = ["broker", "config", "--pki", str(tmp_path / "pki"), "--out", str(tmp_path / "broker"),
            "--gateway", GW_A, "--meter", f"{PLUG_A}:{GW_A}:a/b:c"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((tmp_path / "broker" / "dynamic-security.json").read_text())
    assert {
        "rolename": "meter:plug-a",
        "acls": [{"acltype": "publishClientSend", "topic": "a/b:c", "allow": True}],
    } in doc["roles"]
    assert main([*argv[:-1], f"{PLUG_A}:{GW_B}:a/b"]) == 1
    assert "gateway 'gw-b' is not one of the site's gateways" in capsys.readouterr().err
    assert main([*argv[:-1], "plug-a-only"]) == 1
    assert "expected PUBLISHER:GATEWAY:TOPIC" in capsys.readouterr().err


# -- on a real Mosquitto ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_reading_reaches_only_the_gateway_of_its_meter(meter_site: SecureSite) -> None:
    async with clients(meter_site, GW_A, GW_B, AGGREGATOR, ROGUE, PLUG_A) as (gw_a, gw_b, agg, rogue, plug):
        assert await granted(gw_a, TOPIC_A)
        for outsider in (gw_b, agg, rogue, plug):  # not even the meter reads its own topic
            for topic in (TOPIC_A, "tele/+/SENSOR", "#"):
                assert not await granted(outsider, topic), topic
        assert not await granted(gw_a, TOPIC_B)  # a gateway reads its own meters only
        await plug.publish(TOPIC_A, b"reading 1", qos=1)
        [message] = await receive_until(gw_a, until_payload("reading 1"))
    assert str(message.topic) == TOPIC_A


@pytest.mark.integration
async def test_a_meter_publishes_only_on_its_own_topic(meter_site: SecureSite) -> None:
    """plug-a tries plug-b's topic, a batch topic, a reply topic; a gateway tries its meter's
    topic. Each path's control message, sent afterwards, arrives alone."""
    async with clients(meter_site, AGGREGATOR, GW_A, GW_B, PLUG_A, PLUG_B) as (
        agg,
        gw_a,
        gw_b,
        plug_a,
        plug_b,
    ):
        assert await granted(agg, batch_subscription())
        assert await granted(gw_a, TOPIC_A) and await granted(gw_a, ack_topic(GW_A))
        assert await granted(gw_b, TOPIC_B)
        await plug_a.publish(TOPIC_B, b"plug-a as plug-b", qos=1)
        await plug_a.publish(batch_topic(GW_A), b"plug-a as a batch", qos=1)
        await plug_a.publish(ack_topic(GW_A), b"plug-a as an ack", qos=1)
        await gw_b.publish(TOPIC_A, b"gw-b as plug-a", qos=1)
        await gw_a.publish(TOPIC_A, b"gw-a as its own meter", qos=1)
        await plug_b.publish(TOPIC_B, b"control b", qos=1)
        await plug_a.publish(TOPIC_A, b"control a", qos=1)
        await gw_a.publish(batch_topic(GW_A), b"control batch", qos=1)
        got_b = await receive_until(gw_b, until_payload("control b"))
        got_a = await receive_until(gw_a, until_payload("control a"))
        got_agg = await receive_until(agg, until_payload("control batch"))
    assert [payload(m) for m in got_b] == ["control b"]
    assert [payload(m) for m in got_a] == ["control a"]
    assert [payload(m) for m in got_agg] == ["control batch"]


def _plain_source(topic: str) -> MqttSource:
    fields = {
        "energy": MqttField(path="energy_kwh", unit="kWh", kind="counter"),
        "power": MqttField(path="power_w", unit="W"),
    }
    return MqttSource(topic=topic, fields=fields, time=MqttTimestamp(path="ts"), expected_period_s=900)


def _tls(layout: PkiLayout, identity: str) -> TlsSettings:
    return TlsSettings(
        ca_file=str(layout.ca_cert),
        cert_file=str(layout.client_cert(identity)),
        key_file=str(layout.client_key(identity)),
    )


@pytest.mark.integration
async def test_simulated_meter_to_gateway_driver_over_tls(meter_site: SecureSite) -> None:
    """firmware_sim publishes as plug-a (MqttConfig.tls), the gateway's MQTT driver reads as
    gw-a (MqttConnection.tls): both TLS with client certificates, through the access list."""
    broker, layout = meter_site.broker, meter_site.layout
    cfg = fleet_config(
        {"kind": "mqtt_plain", "name": PLUG_A, "interval_s": 900, "topic": "tele/{name}/SENSOR",
         "physics": {"model": "pv", "kwp": 1.0}},
        mqtt={"host": broker.host, "port": broker.port, "qos": 1, "tls": _tls(layout, PLUG_A).model_dump()},
    )  # fmt: skip
    clock = ManualClock(cfg.clock.epoch_s + 12 * 3600)
    connection = MqttConnection(host=broker.host, port=broker.port, tls=_tls(layout, GW_A))
    samples: list[Sample] = []
    subscriber = MqttSubscriber(connection, [(PLUG_A, _plain_source(TOPIC_A))], samples.extend, clock)
    async with subscriber, Fleet(cfg, clock=clock) as fleet:
        async with asyncio.timeout(15):
            await subscriber.wait_until(lambda h: h[PLUG_A].connected)
            await fleet.wait_mqtt_connected()
        for n in (1, 2):
            await clock.advance(900)
            async with asyncio.timeout(15):
                await subscriber.wait_until(lambda h, n=n: h[PLUG_A].messages == n)  # type: ignore[misc]
        truth = fleet.devices[PLUG_A].ground_truth().counter_wh
    health = subscriber.health[PLUG_A]
    assert (health.malformed, health.skewed, health.last_error) == (0, 0, None)
    energy = [s.value for s in samples if s.quantity == "energy"]
    assert len(energy) == 2 and energy[-1] == pytest.approx(truth / 1000, rel=1e-12)


def test_tls_files_are_checked_at_start_and_named(tmp_path: Path) -> None:
    """A key that others may read is refused by both clients, naming the file."""
    ca = make_ca(tmp_path / "pki")
    issue_client(ca, PLUG_A)
    key = ca.layout.client_key(PLUG_A)
    key.chmod(0o644)
    assert stat.S_IMODE(key.stat().st_mode) == 0o644
    settings = _tls(ca.layout, PLUG_A)
    connection = MqttConnection(host="127.0.0.1", port=1, tls=settings)
    subscriber = MqttSubscriber(connection, [("m", _plain_source(TOPIC_A))], print, ManualClock(0))
    with pytest.raises(MqttCredentialsError, match=f"connection.tls.key_file: {key} is mode 644"):
        asyncio.run(subscriber.__aenter__())
    cfg = fleet_config(
        {"kind": "mqtt_plain", "name": PLUG_A, "physics": {"model": "pv", "kwp": 1.0}},
        mqtt={"host": "127.0.0.1", "port": 1, "tls": settings.model_dump()},
        control=None,
    )

    async def start_fleet() -> None:
        async with Fleet(cfg, clock=ManualClock(0)):
            pass

    with pytest.raises(ServeError, match=f"MQTT meters: mqtt.tls.key_file: {key} is mode 644"):
        asyncio.run(start_fleet())


def test_meter_connection_takes_tls_settings_or_a_switch() -> None:
    assert MqttConnection(host="h", tls=True).tls is True
    assert MqttConnection(host="h").tls is False
    with_files = MqttConnection.model_validate({"host": "h", "tls": {"ca_file": "ca.crt"}})
    assert with_files.tls == TlsSettings(ca_file="ca.crt")
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        MqttConnection.model_validate({"host": "h", "tls": {"cert_file": "c.crt"}})
    with pytest.raises(ValueError, match="tls"):
        MqttConnection.model_validate({"host": "h", "tls": {"ca_fle": "ca.crt"}})
