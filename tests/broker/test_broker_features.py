"""What puhui needs from an MQTT broker (docs/scale.md), probed on each broker with real
clients: QoS 1, a persistent session that keeps QoS 1 messages while its subscriber is
away, shared subscriptions, per-user ACLs over TLS, and, for a cluster, a session that
survives the node it lived on.

Where a broker lacks a feature the test records it (``EXPECTED``) rather than skipping:
if a new version gains or loses one, the test fails and docs/scale.md's table is redone.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import pytest

from common.mqtt import SubscriptionRefused, subscribe
from evidence.wire import TOPIC_ROOT, ack_topic, batch_subscription, batch_topic
from tests.security.conftest import AGGREGATOR, GW_A, GW_B

from .conftest import Broker

pytestmark = pytest.mark.integration
PLAIN = f"{TOPIC_ROOT}/+/batch"
DEADLINE = 20.0

# Measured (this file): which broker delivers through a shared subscription.
EXPECTED_SHARED = {"mosquitto": True, "nats": False, "rabbitmq": False}


async def _collect(
    client: aiomqtt.Client, want: int, within: float = DEADLINE, *, mine: list[bytes] | None = None
) -> list[bytes]:
    """Payloads as they arrive until ``want`` of them; fewer if ``within`` runs out. With
    ``mine``, only those payloads count: a NATS cluster may still deliver the resends of an
    earlier test's node kill on the shared topic."""
    got: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if mine is not None and message.payload not in mine:
                    continue
                got.append(message.payload)
                if len(got) >= want:
                    break
    return got


async def _publish(broker: Broker, gateway: str, payloads: list[bytes], node: int = 0) -> None:
    async with broker.client(gateway, node) as gw:
        for data in payloads:
            await gw.publish(batch_topic(gateway), data, qos=1)  # returns at PUBACK


async def _forget(broker: Broker, identifier: str, node: int = 0) -> None:
    """End a persistent session (a clean-session login under its id)."""
    async with broker.client(AGGREGATOR, node, identifier=identifier, clean_session=True):
        pass


def _msgs(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


async def test_qos1_publish_and_subscribe(broker: Broker) -> None:
    sent = _msgs("q", 20)
    async with broker.client(AGGREGATOR) as agg:
        await agg.subscribe(PLAIN, qos=1)
        await _publish(broker, GW_A, sent, node=1)
        got = await _collect(agg, len(sent))
    assert got == sent  # in order, each once


async def test_persistent_session_keeps_qos1_messages_while_the_subscriber_is_away(broker: Broker) -> None:
    """clean_session=False under a fixed id: what is published while it is offline arrives
    at its reconnect (on another node of a cluster)."""
    session = f"agg-persist-{broker.kind}"
    async with broker.client(AGGREGATOR, identifier=session, clean_session=False) as agg:
        await agg.subscribe(PLAIN, qos=1)
    sent = _msgs("away", 10)
    await _publish(broker, GW_A, sent, node=1)
    try:
        async with broker.client(AGGREGATOR, 2, identifier=session, clean_session=False) as agg:
            got = await _collect(agg, len(sent))
    finally:
        await _forget(broker, session)
    assert got == sent


async def test_shared_subscription_splits_messages_or_is_recorded_missing(broker: Broker) -> None:
    """Two members of one share group and a plain subscriber as the control: once the
    control has every message, the members together have them all once (a broker with
    shared subscriptions) or none (a broker that takes ``$share/...`` as a plain topic)."""
    sent = _msgs("shared", 20)
    async with (
        broker.client(AGGREGATOR) as member_1,
        broker.client(AGGREGATOR, 1) as member_2,
        broker.client(AGGREGATOR, 2) as control,
    ):
        for member in (member_1, member_2):
            await member.subscribe(batch_subscription(), qos=1)
        await control.subscribe(PLAIN, qos=1)
        await _publish(broker, GW_A, sent)
        assert await _collect(control, len(sent)) == sent
        shared_1, shared_2 = await asyncio.gather(
            _collect(member_1, len(sent), within=2.0), _collect(member_2, len(sent), within=2.0)
        )
    delivered = sorted(shared_1 + shared_2)
    if EXPECTED_SHARED[broker.kind]:
        assert delivered == sorted(sent)
        assert shared_1 and shared_2, "one member took every message"
    else:
        assert delivered == [], f"{broker.kind} now delivers shared subscriptions: update docs/scale.md"


async def test_acl_a_gateway_cannot_publish_as_another(broker: Broker) -> None:
    """gw-a's publish on gw-b's batch topic never reaches the aggregator; gw-b's own does."""
    async with broker.client(AGGREGATOR) as agg:
        await agg.subscribe(PLAIN, qos=1)
        with contextlib.suppress(aiomqtt.MqttError):  # a broker may also close the session
            async with broker.client(GW_A) as gw_a:
                await gw_a.publish(batch_topic(GW_B), b"forged", qos=1)
        await _publish(broker, GW_B, [b"control"])
        got = await _collect(agg, 1)
    assert got == [b"control"]


async def test_wrong_password_and_plain_tcp_are_refused(broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.ports[0], username=GW_A, password="wrong",
                                  tls_context=broker.context, timeout=5):  # fmt: skip
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.ports[0], username=GW_A,
                                  password=broker.passwords[GW_A], timeout=5):  # fmt: skip
            pass


async def test_session_and_its_queue_survive_the_node_it_lived_on(broker: Broker) -> None:
    """Cluster only: the session made on node 0, messages queued before and after node 0 is
    SIGKILLed, the subscriber back on node 2: everything arrives."""
    if broker.cluster is None:
        pytest.skip("one Mosquitto does not cluster: its node is the single point of failure")
    session = f"agg-survive-{broker.kind}"
    async with broker.client(AGGREGATOR, 0, identifier=session, clean_session=False) as agg:
        await agg.subscribe(PLAIN, qos=1)
    before, after = _msgs("before", 5), _msgs("after", 5)
    await _publish(broker, GW_A, before, node=1)
    broker.cluster.kill(0)
    try:
        await _publish_as_a_gateway_does(broker, GW_A, after, node=1)
        async with broker.client(AGGREGATOR, 2, identifier=session, clean_session=False) as agg:
            got = await _collect_distinct(agg, 10)
    finally:
        await asyncio.to_thread(broker.cluster.restart, 0)
        await _forget(broker, session, node=2)
    assert [m for m in got if m in before] == before  # queued before the kill: kept, in order
    assert sorted(set(got) - set(before)) == sorted(after)  # resends may repeat one (QoS 1)


async def _publish_as_a_gateway_does(broker: Broker, gateway: str, payloads: list[bytes], node: int) -> None:
    """Publish each until its PUBACK, reconnecting and resending when the connection drops
    (RabbitMQ 3.10 closes a publisher's connection when a quorum queue refuses a message
    while it elects a new leader: the gateway's uplink resends, as here)."""
    pending = list(payloads)
    async with asyncio.timeout(60):
        while pending:
            try:
                async with broker.client(gateway, node) as gw:
                    while pending:
                        await gw.publish(batch_topic(gateway), pending[0], qos=1)
                        pending.pop(0)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)  # the uplink's reconnect backoff


async def _collect_distinct(client: aiomqtt.Client, want: int) -> list[bytes]:
    got: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DEADLINE):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload)
                if len(set(got)) >= want:
                    break
    return got


async def test_a_gateway_cannot_read_other_sessions_through_broker_internals(broker: Broker) -> None:
    """NATS delivers a session's QoS 1 messages on ``$MQTT.sub.<id>``, which every subscriber
    may subscribe to (it needs it for its own session): a gateway subscribing to the MQTT
    topic ``$MQTT/sub/#`` must still not see the batches delivered to the aggregator."""
    async with broker.client(AGGREGATOR, clean_session=True) as agg, broker.client(GW_A) as spy:
        await agg.subscribe(PLAIN, qos=1)
        with contextlib.suppress(aiomqtt.MqttError):  # refused outright is fine too
            await spy.subscribe("$MQTT/sub/#", qos=1)
        sent = _msgs("private", 5)
        await _publish(broker, GW_B, sent)
        assert await _collect(agg, len(sent), mine=sent) == sent
        try:
            leaked = await _collect(spy, 1, within=2.0)
        except aiomqtt.MqttError:
            leaked = []  # the broker closed the spy's connection (RabbitMQ: read refused)
        assert leaked == []


async def test_a_refused_subscription_is_an_error_not_silence(broker: Broker) -> None:
    """gw-a may not read gw-b's acks: the broker refuses (SUBACK failure, or it closes the
    connection), and :func:`common.mqtt.subscribe` turns a refusal into an MQTT error the
    reconnect loop handles (NATS also refuses while JetStream elects leaders after a node
    died; a client that ignored the SUBACK stayed deaf until its next reconnect)."""
    with pytest.raises(aiomqtt.MqttError) as refused:
        async with broker.client(GW_A) as gw_a:
            await subscribe(gw_a, ack_topic(GW_B), qos=1)
            await gw_a.publish(batch_topic(GW_A), b"control", qos=1)  # a closed link fails here
    if broker.kind in ("mosquitto", "nats"):
        assert isinstance(refused.value, SubscriptionRefused)
