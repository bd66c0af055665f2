"""aiomqtt against the private Mosquitto: QoS 1, shared subscriptions, broker restarts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiomqtt
import pytest

from testbed.servers import PrivateMosquitto

pytestmark = pytest.mark.integration

DEADLINE = 10.0


def _topic() -> str:
    return f"puhui/test/{uuid.uuid4().hex}"


def _client(broker: PrivateMosquitto, **options: object) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, **options)  # type: ignore[arg-type]


async def _receive(client: aiomqtt.Client, count: int) -> list[aiomqtt.Message]:
    received: list[aiomqtt.Message] = []
    async with asyncio.timeout(DEADLINE):
        async for message in client.messages:
            received.append(message)
            if len(received) == count:
                return received
    raise AssertionError("message iteration ended")


async def test_publish_subscribe_qos1_in_order(mosquitto: PrivateMosquitto) -> None:
    topic = _topic()
    async with _client(mosquitto) as subscriber, _client(mosquitto) as publisher:
        await subscriber.subscribe(topic, qos=1)
        for n in range(20):
            await publisher.publish(topic, f"reading {n}", qos=1)
        messages = await _receive(subscriber, 20)
    assert [m.payload for m in messages] == [f"reading {n}".encode() for n in range(20)]
    assert {m.qos for m in messages} == {1}
    assert {str(m.topic) for m in messages} == {topic}


async def test_shared_subscription_splits_messages(mosquitto: PrivateMosquitto) -> None:
    topic, total = _topic(), 40
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    all_in = asyncio.Event()

    async def drain(name: str, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got[name].append(message.payload)
            if sum(map(len, got.values())) == total:
                all_in.set()

    async with (
        _client(mosquitto) as a,
        _client(mosquitto) as b,
        _client(mosquitto) as publisher,
        asyncio.TaskGroup() as group,
    ):
        await a.subscribe(f"$share/grp/{topic}", qos=1)
        await b.subscribe(f"$share/grp/{topic}", qos=1)
        readers = [group.create_task(drain(n, c), name=f"drain-{n}") for n, c in (("a", a), ("b", b))]
        for n in range(total):
            await publisher.publish(topic, str(n), qos=1)
        async with asyncio.timeout(DEADLINE):
            await all_in.wait()
        for reader in readers:
            reader.cancel()
    assert got["a"] and got["b"], f"one member got everything: {got}"
    assert sorted(got["a"] + got["b"], key=int) == [str(n).encode() for n in range(total)]


@asynccontextmanager
async def _connected(broker: PrivateMosquitto, **options: object) -> AsyncIterator[aiomqtt.Client]:
    """Connect, retrying while the broker is not accepting yet (deadline DEADLINE)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            client = _client(broker, **options)
            try:
                await client.__aenter__()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # poll pause while the broker comes back
                continue
            break
    try:
        yield client
    finally:
        await client.__aexit__(None, None, None)


async def test_client_reconnects_after_broker_restart(
    fresh_mosquitto: Callable[..., PrivateMosquitto],
) -> None:
    broker = fresh_mosquitto()
    topic = _topic()
    async with _client(broker) as subscriber:
        await subscriber.subscribe(topic, qos=1)
        broker.stop()
        with pytest.raises(aiomqtt.MqttError):
            await _receive(subscriber, 1)
    broker.start()
    async with _connected(broker) as subscriber, _connected(broker) as publisher:
        await subscriber.subscribe(topic, qos=1)
        await publisher.publish(topic, b"after restart", qos=1)
        [message] = await _receive(subscriber, 1)
    assert message.payload == b"after restart"


async def test_persistent_session_survives_broker_restart(
    fresh_mosquitto: Callable[..., PrivateMosquitto],
) -> None:
    broker = fresh_mosquitto(persistence=True)
    topic, identity = _topic(), f"aggregator-{uuid.uuid4().hex[:8]}"
    async with _client(broker, identifier=identity, clean_session=False) as subscriber:
        await subscriber.subscribe(topic, qos=1)
    async with _client(broker) as publisher:  # queued for the offline subscriber
        await publisher.publish(topic, b"while offline", qos=1)
    broker.restart()  # persistence writes the session store on a clean shutdown
    async with _connected(broker, identifier=identity, clean_session=False) as subscriber:
        [message] = await _receive(subscriber, 1)
    assert message.payload == b"while offline"
