"""The generated broker configuration against a real Mosquitto: who may connect, publish,
subscribe and receive (issue 16, item 2).

Mosquitto drops a publish the access list denies and still answers PUBACK, so absence is
asserted only after a control message sent afterwards on the same path has arrived.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import aiomqtt
import pytest

from common.clock import ManualClock
from evidence.wire import ack_topic, batch_subscription, batch_topic, reject_topic
from puhui.pki import PkiLayout, issue_client, load_ca, make_ca
from testbed.servers import mqtt_connack_ok

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
    until_payload,
)

pytestmark = pytest.mark.integration
SHARED = batch_subscription()
N_BATCHES = 50  # per gateway


# -- who may connect -------------------------------------------------------------------------


async def test_anonymous_plain_text_client_cannot_connect(cert_site: SecureSite) -> None:
    broker = cert_site.broker
    assert not mqtt_connack_ok(broker.host, broker.port)  # MQTT without TLS: no CONNACK
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, identifier="anonymous", timeout=2):
            pass


async def test_tls_client_without_a_certificate_cannot_connect(cert_site: SecureSite) -> None:
    broker = cert_site.broker
    assert not mqtt_connack_ok(broker.host, broker.port, ssl_context=cert_site.context(None))
    with pytest.raises(aiomqtt.MqttError):
        async with cert_site.client(None, timeout=2):
            pass
    assert mqtt_connack_ok(broker.host, broker.port, ssl_context=cert_site.context(GW_A))  # control


async def test_certificate_of_another_ca_is_refused(cert_site: SecureSite, tmp_path: Path) -> None:
    """A self-made CA that issues itself 'gw-a' is not the site's CA."""
    issue_client(make_ca(tmp_path / "forger"), GW_A)
    forged = cert_site.context(None)
    forged.load_cert_chain(*_cert_and_key(PkiLayout(tmp_path / "forger"), GW_A))
    assert not mqtt_connack_ok(cert_site.broker.host, cert_site.broker.port, ssl_context=forged)


async def test_expired_certificate_is_refused(cert_site: SecureSite, tmp_path: Path) -> None:
    """Validity periods are enforced: a 'gw-a' certificate that expired yesterday is refused."""
    pki = tmp_path / "pki"
    pki.mkdir()
    for name in ("ca.crt", "ca.key"):  # the site's own CA, issuing into a scratch directory
        (pki / name).write_bytes((cert_site.layout.root / name).read_bytes())
    (pki / "ca.key").chmod(0o600)
    two_days_ago = ManualClock(dt.datetime.now(dt.UTC).timestamp() - 2 * 86400)
    issue_client(load_ca(pki), GW_A, validity=dt.timedelta(hours=25), clock=two_days_ago)
    expired = cert_site.context(None)
    expired.load_cert_chain(*_cert_and_key(PkiLayout(pki), GW_A))
    assert not mqtt_connack_ok(cert_site.broker.host, cert_site.broker.port, ssl_context=expired)


def _cert_and_key(layout: PkiLayout, identity: str) -> tuple[Path, Path]:
    return layout.client_cert(identity), layout.client_key(identity)


# -- what a gateway may do ---------------------------------------------------------------------


async def test_gateway_cannot_publish_as_another_gateway(cert_site: SecureSite) -> None:
    async with clients(cert_site, AGGREGATOR, GW_A) as (aggregator, gw_a):
        assert await granted(aggregator, SHARED)
        await gw_a.publish(batch_topic(GW_B), b"forged by gw-a", qos=1)  # PUBACK, then dropped
        await gw_a.publish(batch_topic(GW_A), b"control", qos=1)
        received = await receive_until(aggregator, until_payload("control"))
    assert [(str(m.topic), payload(m)) for m in received] == [(batch_topic(GW_A), "control")]


@pytest.mark.parametrize(
    "topic",
    [
        batch_topic(GW_B),
        ack_topic(GW_B),
        reject_topic(GW_B),
        "puhui/v1/+/batch",
        "puhui/v1/+/ack",
        "puhui/v1/#",
        "#",
        SHARED,
        "$share/another-group/puhui/v1/+/batch",
        f"$share/x/{ack_topic(GW_B)}",
        batch_topic(GW_A),  # not even its own batches: only the aggregator reads batches
    ],
)
async def test_gateway_cannot_subscribe_beyond_its_own_replies(cert_site: SecureSite, topic: str) -> None:
    async with cert_site.client(GW_A) as gw_a:
        assert not await granted(gw_a, topic)
        assert await granted(gw_a, ack_topic(GW_A))  # control: its own replies


async def test_gateway_reads_only_its_own_replies_and_cannot_forge_them(cert_site: SecureSite) -> None:
    async with clients(cert_site, AGGREGATOR, GW_A, GW_B) as (aggregator, gw_a, gw_b):
        for gateway, client in ((GW_A, gw_a), (GW_B, gw_b)):
            assert await granted(client, ack_topic(gateway))
            assert await granted(client, reject_topic(gateway))
        await gw_a.publish(reject_topic(GW_B), b"reject forged by gw-a", qos=1)
        await gw_a.publish(ack_topic(GW_A), b"gw-a acks itself", qos=1)
        await aggregator.publish(ack_topic(GW_B), b"ack for gw-b", qos=1)
        await aggregator.publish(reject_topic(GW_B), b"reject for gw-b", qos=1)
        await aggregator.publish(ack_topic(GW_A), b"ack for gw-a", qos=1)
        got_b = await receive_until(gw_b, until_payload("reject for gw-b"))
        got_a = await receive_until(gw_a, until_payload("ack for gw-a"))
    assert [payload(m) for m in got_b] == ["ack for gw-b", "reject for gw-b"]
    assert [payload(m) for m in got_a] == ["ack for gw-a"]


# -- the aggregator's batches ------------------------------------------------------------------


async def test_aggregator_gets_every_batch_while_a_rogue_tries(cert_site: SecureSite) -> None:
    """A rogue (valid certificate, identity not on the roster) and a gateway try to join the
    shared subscription, subscribe to every batch, and publish as gw-a; the aggregator
    still receives exactly the gateways' N batches each."""
    async with clients(cert_site, AGGREGATOR, GW_A, GW_B, ROGUE) as (aggregator, gw_a, gw_b, rogue):
        assert await granted(aggregator, SHARED)
        for thief in (rogue, gw_b):
            for topic in (SHARED, "$share/other/puhui/v1/+/batch", "puhui/v1/+/batch", "#"):
                assert not await granted(thief, topic), topic
        expected = set()
        for i in range(N_BATCHES):
            for gateway, client in ((GW_A, gw_a), (GW_B, gw_b)):
                await client.publish(batch_topic(gateway), f"{gateway} batch {i}".encode(), qos=1)
                expected.add(f"{gateway} batch {i}")
            await rogue.publish(batch_topic(GW_A), f"rogue as gw-a {i}".encode(), qos=1)
            await rogue.publish(batch_topic(ROGUE), f"rogue as itself {i}".encode(), qos=1)
        await gw_a.publish(batch_topic(GW_A), b"end", qos=1)  # after every rogue publish was acked
        received = await receive_until(aggregator, until_payload("end"))
    payloads = [payload(m) for m in received[:-1]]
    assert len(payloads) == len(set(payloads)) == 2 * N_BATCHES
    assert set(payloads) == expected  # 100 %, and nothing from the rogue


async def test_aggregator_may_also_subscribe_without_sharing(cert_site: SecureSite) -> None:
    async with clients(cert_site, AGGREGATOR, GW_B) as (aggregator, gw_b):
        assert await granted(aggregator, "puhui/v1/+/batch")
        assert not await granted(aggregator, "#")  # its rights are the batches, not everything
        await gw_b.publish(batch_topic(GW_B), b"one", qos=1)
        [message] = await receive_until(aggregator, until_payload("one"))
    assert str(message.topic) == batch_topic(GW_B)


async def test_aggregator_cannot_publish_batches(cert_site: SecureSite) -> None:
    """Only a gateway speaks for itself, not even the aggregator's identity."""
    async with clients(cert_site, AGGREGATOR, GW_B) as (aggregator, gw_b):
        assert await granted(aggregator, SHARED)
        await aggregator.publish(batch_topic(GW_A), b"from the aggregator", qos=1)
        await gw_b.publish(batch_topic(GW_B), b"control", qos=1)
        received = await receive_until(aggregator, until_payload("control"))
    assert [payload(m) for m in received] == ["control"]
