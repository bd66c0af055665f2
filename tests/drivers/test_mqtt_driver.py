"""MQTT driver: payload paths, timestamps and topic filters (fast tier); the subscriber
against the real Mosquitto and firmware_sim MQTT meters (real tier)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import math
import re
import ssl
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.contract import Invalid, Sample
from drivers.mqtt import MqttHealth, MqttSubscriber
from drivers.mqtt.config import MqttConnection, MqttField, MqttSource, MqttTimestamp
from drivers.mqtt.driver import (
    MqttCredentialsError,
    PayloadError,
    field_value,
    filter_covers,
    lookup,
    parse_path,
    subscription_filters,
    timestamp_of,
)
from firmware_sim import Fleet, parse_fleet
from gateway.config import MqttMeter
from testbed.servers import LOOPBACK, PrivateMosquitto, free_ports

README = Path(__file__).parents[2] / "drivers" / "mqtt" / "README.md"
DEADLINE = 10.0
EPOCH = "2025-01-15T00:00:00+00:00"
Predicate = Callable[[Mapping[str, MqttHealth]], bool]


# -- fast tier: payloads ----------------------------------------------------------------


def test_paths_walk_keys_and_list_indexes() -> None:
    doc = {"data": {"energy": {"import": 12.5}}, "ch": [{"p": 1}, {"p": [3, 4]}], "a-b": {"c_d": 0}}
    assert parse_path("ch[1].p[0]") == ("ch", 1, "p", 0)
    assert lookup(doc, "data.energy.import") == 12.5
    assert lookup(doc, "ch[1].p[1]") == 4
    assert lookup(doc, "a-b.c_d") == 0
    for path, reason in [("data.power", "no key 'power'"), ("ch[2].p", r"no item \[2\]"),
                         ("data[0]", r"no item \[0\]"), ("data.energy.import.x", "no key 'x'")]:  # fmt: skip
        with pytest.raises(PayloadError, match=reason):
            lookup(doc, path)


def test_field_values_scale_and_reject_non_numbers() -> None:
    doc = {"w": 1500, "s": "12", "b": True, "n": None, "nan": math.nan, "inf": -math.inf}
    assert field_value(doc, MqttField(path="w", scale=0.001)) == 1.5
    for path in ("s", "b", "n"):
        with pytest.raises(PayloadError, match="is not a number"):
            field_value(doc, MqttField(path=path))
    assert field_value(doc, MqttField(path="nan", scale=2)) == Invalid("nan", "nan")
    assert field_value(doc, MqttField(path="inf")) == Invalid("infinite", "inf")


def test_timestamp_formats() -> None:
    t = 1736899200.25
    assert timestamp_of({"ts": t}, MqttTimestamp(path="ts")) == t
    assert timestamp_of({"m": {"ts": 1736899200250}}, MqttTimestamp(path="m.ts", format="epoch_ms")) == t
    iso = MqttTimestamp(path="t", format="iso8601")
    assert timestamp_of({"t": "2025-01-15T00:00:00.25Z"}, iso) == t
    assert timestamp_of({"t": "2025-01-15T08:00:00.25+08:00"}, iso) == t
    assert timestamp_of({"t": "2025-01-15T00:00:00.25"}, iso) == t  # no offset: UTC
    tasmota = MqttTimestamp(path="Time", format="iso8601", tz="Asia/Shanghai")  # local time, no offset
    assert timestamp_of({"Time": "2025-01-15T08:00:00.25"}, tasmota) == t
    assert timestamp_of({"Time": "2025-01-15T00:00:00.25Z"}, tasmota) == t  # an offset wins
    epoch = MqttTimestamp(path="ts")
    bad = [({"t": "yesterday"}, iso), ({"t": 5}, iso), ({"ts": "5"}, epoch), ({"ts": math.inf}, epoch)]
    for doc, spec in [*bad, ({}, epoch)]:
        with pytest.raises(PayloadError):
            timestamp_of(doc, spec)


def test_covered_filters_are_not_subscribed_twice() -> None:
    assert filter_covers("a/#", "a/b/c") and filter_covers("a/+/c", "a/b/c") and filter_covers("#", "a/+")
    assert filter_covers("a/+", "a/+") and filter_covers("a/#", "a")
    assert not filter_covers("a/b", "a/+") and not filter_covers("a/+", "a/b/c")
    assert not filter_covers("a/+/c", "a/b/+") and not filter_covers("a/+", "a/#")
    assert subscription_filters(["s/x", "s/+", "t/#", "t/y/z", "s/+", "a/+/c", "a/b/+"]) == [
        "s/+", "t/#", "a/+/c", "a/b/+",
    ]  # fmt: skip


_LEVEL = st.sampled_from(["a", "b", "+"])


@given(
    wide=st.lists(_LEVEL, min_size=1, max_size=4).map(lambda ls: [*ls, "#"] if ls[-1] == "b" else ls),
    narrow=st.lists(st.sampled_from(["a", "b", "+"]), min_size=1, max_size=4),
    fill=st.sampled_from(["a", "b", "zz"]),
)
def test_cover_means_every_matching_topic_matches(wide: list[str], narrow: list[str], fill: str) -> None:
    w, n = "/".join(wide), "/".join(narrow)
    topic = aiomqtt.Topic("/".join(fill if level == "+" else level for level in narrow))
    if filter_covers(w, n):
        assert topic.matches(n) and topic.matches(w)


# -- real tier helpers --------------------------------------------------------------------


def _fleet(broker: PrivateMosquitto, *devices: dict[str, Any], site: str = "site") -> Any:
    return parse_fleet(
        {
            "clock": {"epoch": EPOCH, "factor": 1},
            "mqtt": {"host": broker.host, "port": broker.port, "qos": 1},
            "sites": [{"name": site, "devices": list(devices)}],
        },
        "mqtt-driver-test",
    )


def _plain(name: str, topic: str | None = None, model: str = "heating") -> dict[str, Any]:
    return {
        "kind": "mqtt_plain",
        "name": name,
        "interval_s": 900,
        "topic": topic,
        "physics": {"model": model},
    }


def _tasmota(name: str, topic: str | None = None) -> dict[str, Any]:
    return {
        "kind": "mqtt_tasmota",
        "name": name,
        "interval_s": 900,
        "topic": topic,
        "physics": {"model": "load"},
    }


def _conn(broker: PrivateMosquitto, **extra: Any) -> MqttConnection:
    return MqttConnection(host=broker.host, port=broker.port, **extra)


PLAIN_FIELDS = {
    "energy_import": MqttField(path="energy_kwh", unit="kWh", kind="counter"),
    "power": MqttField(path="power_w", unit="W"),
}


def _plain_source(topic: str, max_skew_s: float = 30) -> MqttSource:
    return MqttSource(topic=topic, fields=PLAIN_FIELDS, time=MqttTimestamp(path="ts", max_skew_s=max_skew_s))


async def _until(sub: MqttSubscriber, predicate: Predicate) -> None:
    async with asyncio.timeout(DEADLINE):
        await sub.wait_until(predicate)


def _connected(health: Mapping[str, MqttHealth]) -> bool:
    return all(h.connected for h in health.values())


def _messages_are(expected: Mapping[str, int]) -> Predicate:
    return lambda health: all(health[m].messages == n for m, n in expected.items())


def _by_quantity(samples: list[Sample], meter: str) -> list[dict[str, Sample]]:
    """Samples of ``meter`` grouped per message (consecutive samples with one time)."""
    out: list[dict[str, Sample]] = []
    for s in (s for s in samples if s.meter == meter):
        if not out or s.quantity in out[-1]:
            out.append({})
        out[-1][s.quantity] = s
    return out


async def _raw_messages(client: aiomqtt.Client, n: int) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(DEADLINE):
        async for msg in client.messages:
            got.append(msg)
            if len(got) == n:
                break
    return got


# -- real tier: firmware_sim meters -----------------------------------------------------


def _readme_meters() -> list[MqttMeter]:
    (block,) = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return [MqttMeter.model_validate(m) for m in yaml.safe_load(block)["meters"]]


@pytest.mark.integration
async def test_readme_sample_reads_what_the_simulator_publishes(
    fresh_mosquitto: Callable[..., PrivateMosquitto], tmp_path: Path
) -> None:
    broker = fresh_mosquitto()  # the sample's fixed topics need a broker of our own
    (tmp_path / "password").write_text("secret\n")
    meters = _readme_meters()
    assert [m.id for m in meters] == ["boiler-2", "plug-7"]
    connection = meters[0].connection.model_copy(
        update={"host": broker.host, "port": broker.port, "password_file": str(tmp_path / "password")}
    )
    cfg = _fleet(broker, _plain("boiler-2"), _tasmota("plug-7"), site="village")
    clock = ManualClock(cfg.clock.epoch_s)
    samples: list[Sample] = []
    async with (
        aiomqtt.Client(broker.host, broker.port) as spy,
        MqttSubscriber(connection, [(m.id, m.source) for m in meters], samples.extend, clock) as sub,
    ):
        await spy.subscribe("#", qos=1)
        await _until(sub, _connected)
        async with Fleet(cfg, clock=clock) as fleet:
            async with asyncio.timeout(DEADLINE):
                await fleet.wait_mqtt_connected()
            for cycle in range(1, 4):
                await clock.advance(900)
                raw = await _raw_messages(spy, 2)
                published = {m.topic.value: json.loads(m.payload) for m in raw}
                await _until(sub, _messages_are({"boiler-2": cycle, "plug-7": cycle}))

                boiler = _by_quantity(samples, "boiler-2")[-1]
                truth = fleet.devices["boiler-2"].ground_truth().intervals[-1]
                body = published["puhui/village/boiler-2/reading"]
                assert boiler["energy_import"].value == truth.counter_end_wh / 1000 == body["energy_kwh"]
                assert boiler["power"].value == body["power_w"]
                assert boiler["energy_import"].time == boiler["power"].time == truth.end == clock.now()
                assert boiler["power"].source == "mqtt:payload"

                plug = _by_quantity(samples, "plug-7")[-1]
                ptruth = fleet.devices["plug-7"].ground_truth().intervals[-1]
                energy = published["tele/plug-7/SENSOR"]["ENERGY"]
                assert (
                    plug["energy_import"].value == round(ptruth.counter_end_wh / 1000, 3) == energy["Total"]
                )
                assert plug["power"].value == energy["Power"]
                # The simulator publishes Tasmota's local time (UTC+8, no offset); tz reads it right.
                assert plug["power"].time == clock.now() and plug["power"].source == "mqtt:payload"
    health = sub.health["boiler-2"]
    assert (health.messages, health.samples, health.malformed, health.skewed) == (3, 6, 0, 0)
    assert health.last_error is None and health.last_message_at == clock.now()
    assert not health.connected  # after exit


@pytest.mark.integration
async def test_wildcard_filters_route_each_message_to_every_matching_meter(
    mosquitto: PrivateMosquitto,
) -> None:
    prefix = f"mqtt-driver/{id(object())}"
    cfg = _fleet(
        mosquitto,
        _plain("plain-1", prefix + "/s/{name}"),
        _plain("plain-2", prefix + "/s/{name}", model="load"),
        _tasmota("plug", prefix + "/tele/{name}/SENSOR"),
    )
    tasmota = MqttSource(topic=prefix + "/tele/+/SENSOR", fields={"power": MqttField(path="ENERGY.Power")})
    meters = [
        ("all", _plain_source(prefix + "/s/+")),
        ("one", _plain_source(prefix + "/s/plain-1")),
        ("plug", tasmota),
        ("none", _plain_source(prefix + "/nothing/#")),
    ]
    clock = ManualClock(cfg.clock.epoch_s)
    samples: list[Sample] = []
    async with MqttSubscriber(_conn(mosquitto), meters, samples.extend, clock) as sub:
        assert sub.filters == [prefix + "/s/+", prefix + "/tele/+/SENSOR", prefix + "/nothing/#"]
        await _until(sub, _connected)
        async with Fleet(cfg, clock=clock) as fleet:
            async with asyncio.timeout(DEADLINE):
                await fleet.wait_mqtt_connected()
            for cycle in range(1, 3):
                await clock.advance(900)
                await _until(sub, _messages_are({"all": 2 * cycle, "one": cycle, "plug": cycle}))
                one = _by_quantity(samples, "one")[-1]["energy_import"]
                assert one.value == fleet.devices["plain-1"].ground_truth().counter_wh / 1000
            everything = {s.value for s in samples if s.meter == "all" and s.quantity == "energy_import"}
            assert everything == {
                fleet.devices[d].ground_truth().intervals[i].counter_end_wh / 1000
                for d in ("plain-1", "plain-2") for i in (0, 1)
            }  # fmt: skip
        assert sub.health["none"].messages == 0 and sub.connects == 1
        assert not any(h.malformed for h in sub.health.values())


@pytest.mark.integration
async def test_simulator_faults_malformed_nan_and_clock_jump(
    mosquitto: PrivateMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"mqtt-driver/{id(object())}/boiler"
    cfg = _fleet(mosquitto, _plain("boiler", topic))
    clock = ManualClock(cfg.clock.epoch_s)
    samples: list[Sample] = []
    meters = [("boiler", _plain_source(topic, max_skew_s=60))]
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    async with MqttSubscriber(_conn(mosquitto), meters, samples.extend, clock) as sub:
        await _until(sub, _connected)
        async with Fleet(cfg, clock=clock) as fleet:
            async with asyncio.timeout(DEADLINE):
                await fleet.wait_mqtt_connected()
            dev = fleet.devices["boiler"]
            health = sub.health["boiler"]

            async def publish(**faults: Any) -> None:
                dev.clear_faults()
                dev.set_faults(**faults)
                n = health.messages + 1
                await clock.advance(900)
                await _until(sub, lambda h: h["boiler"].messages == n)

            await publish(mqtt_malformed=True)
            assert (health.malformed, health.samples) == (1, 0)
            assert topic in caplog.text and "not JSON" in caplog.text

            await publish(value="nan")
            assert health.malformed == 2 and "energy_kwh: nan" in (health.last_error or "")
            nan = _by_quantity(samples, "boiler")[-1]
            assert nan["energy_import"].value == Invalid("nan", "energy_kwh")
            assert nan["power"].value == Invalid("nan", "power_w")

            await publish(clock_jump_s=-3600)  # beyond the 60 s limit: rejected, not moved
            assert health.skewed == 1 and health.samples == 2 and "-3600.0 s" in (health.last_error or "")

            await publish(clock_jump_s=45)  # within the limit: kept at the payload's time
            late = _by_quantity(samples, "boiler")[-1]["energy_import"]
            assert late.time == clock.now() + 45

            await publish()
            good = _by_quantity(samples, "boiler")[-1]
            assert good["energy_import"].value == dev.ground_truth().counter_wh / 1000
            assert good["energy_import"].time == clock.now()
    assert (health.messages, health.malformed, health.skewed, health.samples) == (5, 2, 1, 6)


@pytest.mark.integration
async def test_malformed_variants_are_counted_and_other_fields_kept(mosquitto: PrivateMosquitto) -> None:
    topic = f"mqtt-driver/{id(object())}/logger"
    clock = ManualClock(1_736_899_200.0)
    t_ms = int(clock.now() * 1000)
    source = MqttSource(
        topic=topic,
        fields={
            "energy_import": MqttField(path="data.energy.import", unit="kWh", kind="counter"),
            "power": MqttField(path="ch[0].p", unit="W", scale=1000),
        },
        time=MqttTimestamp(path="ts", format="epoch_ms"),
    )
    variants: list[tuple[bytes, dict[str, float | Invalid], str]] = [
        (b"{'ts': 1", {}, "not JSON"),
        (b"[1, 2]", {}, "not a JSON object but list"),
        (b"\xff\xfe", {}, "not JSON"),
        (json.dumps({"data": {"energy": {"import": 5}}}).encode(), {}, "ts: no key 'ts'"),
        (json.dumps({"ts": t_ms, "data": {"energy": {"import": 5}}}).encode(), {"energy_import": 5},
         "ch[0].p: no key 'ch'"),
        (json.dumps({"ts": t_ms, "data": {"energy": {"import": "12"}}, "ch": [{"p": 1.5}]}).encode(),
         {"power": 1500}, 'data.energy.import: "12" is not a number'),
        (json.dumps({"ts": t_ms, "data": {"energy": {"import": True}}, "ch": []}).encode(),
         {}, r"true is not a number; ch[0].p: no item [0]"),
        (f'{{"ts": {t_ms}, "data": {{"energy": {{"import": NaN}}}}, "ch": [{{"p": 2}}]}}'.encode(),
         {"energy_import": Invalid("nan", "data.energy.import"), "power": 2000}, "data.energy.import: nan"),
    ]  # fmt: skip
    samples: list[Sample] = []
    async with (
        MqttSubscriber(_conn(mosquitto), [("logger", source)], samples.extend, clock) as sub,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher,
    ):
        await _until(sub, _connected)
        health = sub.health["logger"]
        for n, (payload, expected, reason) in enumerate(variants, 1):
            before = len(samples)
            await publisher.publish(topic, payload, qos=1)
            await _until(sub, _messages_are({"logger": n}))
            assert health.malformed == n and reason in (health.last_error or ""), health.last_error
            assert {s.quantity: s.value for s in samples[before:]} == expected
        good = {"ts": t_ms + 500, "data": {"energy": {"import": 1234.5}}, "ch": [{"p": 0.25}]}
        await publisher.publish(topic, json.dumps(good), qos=1)
        await _until(sub, lambda h: h["logger"].messages == len(variants) + 1)
    assert samples[-2:] == [
        Sample("logger", "energy_import", 1234.5, clock.now() + 0.5, "mqtt:payload"),
        Sample("logger", "power", 250.0, clock.now() + 0.5, "mqtt:payload"),
    ]
    assert health.malformed == len(variants) and health.skewed == 0


# -- real tier: broker loss, credentials, TLS ---------------------------------------------


@pytest.mark.integration
async def test_subscriber_resumes_after_the_broker_restarts(
    fresh_mosquitto: Callable[..., PrivateMosquitto],
) -> None:
    broker = fresh_mosquitto()
    topic = "site/meter/reading"
    clock = ManualClock(1_736_899_200.0)
    samples: list[Sample] = []
    meters = [("m", _plain_source(topic))]
    sub = MqttSubscriber(
        _conn(broker), meters, samples.extend, clock, reconnect_base_s=0.05, reconnect_max_s=0.5
    )

    async def publish(energy: float) -> None:
        async with aiomqtt.Client(broker.host, broker.port) as publisher:
            body = {"ts": clock.now(), "energy_kwh": energy, "power_w": 1.0}
            await publisher.publish(topic, json.dumps(body), qos=1)

    async with sub:
        await _until(sub, _connected)
        await publish(10.0)
        await _until(sub, lambda h: h["m"].samples == 2)

        await asyncio.to_thread(broker.stop)
        await _until(sub, lambda h: not h["m"].connected)
        assert sub.health["m"].last_error is not None
        await asyncio.to_thread(broker.start)  # same port
        await _until(sub, lambda h: h["m"].connected)
        assert sub.connects == 2

        await publish(11.0)
        await _until(sub, lambda h: h["m"].samples == 4)
    assert [s.value for s in samples if s.quantity == "energy_import"] == [10.0, 11.0]


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "puhui test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().issuer_name(ca_name).public_key(key.public_key())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.mark.integration
async def test_tls_listener_with_password_file(
    fresh_mosquitto: Callable[..., PrivateMosquitto], tmp_path: Path
) -> None:
    ca, cert, key = _tls_files(tmp_path)
    passwords = tmp_path / "mosquitto.passwd"
    command = ["mosquitto_passwd", "-b", "-c", str(passwords), "gw-01", "s3cret"]
    await asyncio.to_thread(subprocess.run, command, check=True)
    (tls_port,) = free_ports(1)
    broker = fresh_mosquitto(
        extra_config=f"password_file {passwords}\n"
        f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    (tmp_path / "good").write_text("s3cret\n")
    (tmp_path / "bad").write_text("guess\n")
    context = ssl.create_default_context(cafile=str(ca))
    topic = "site/tls/reading"
    clock = ManualClock(1_736_899_200.0)

    def connection(password_file: str) -> MqttConnection:
        return MqttConnection(
            host="127.0.0.1", port=tls_port, tls=True, username="gw-01", password_file=password_file
        )

    samples: list[Sample] = []
    good = MqttSubscriber(connection(str(tmp_path / "good")), [("m", _plain_source(topic))], samples.extend,
                          clock, tls_context=context)  # fmt: skip
    bad = MqttSubscriber(connection(str(tmp_path / "bad")), [("m", _plain_source(topic))], samples.extend,
                         clock, tls_context=context, reconnect_base_s=5)  # fmt: skip
    async with good, bad:
        await _until(good, _connected)
        await _until(bad, lambda h: h["m"].last_error is not None)
        assert "not authori" in (bad.health["m"].last_error or "").lower() and bad.connects == 0
        async with aiomqtt.Client(broker.host, broker.port) as publisher:  # anonymous, plain listener
            await publisher.publish(
                topic, json.dumps({"ts": clock.now(), "energy_kwh": 1, "power_w": 2}), qos=1
            )
        await _until(good, lambda h: h["m"].samples == 2)
    assert {s.value for s in samples} == {1.0, 2.0}

    missing = MqttSubscriber(
        connection(str(tmp_path / "absent")), [("m", _plain_source(topic))], print, clock
    )
    with pytest.raises(MqttCredentialsError, match="absent"):
        async with missing:
            pass


def test_meter_ids_must_be_distinct() -> None:
    source = _plain_source("a/b")
    conn = MqttConnection(host="127.0.0.1")
    with pytest.raises(ValueError, match="distinct meter ids"):
        MqttSubscriber(conn, [("m", source), ("m", source)], print, ManualClock())
    with pytest.raises(ValueError, match="distinct meter ids"):
        MqttSubscriber(conn, [], print, ManualClock())
