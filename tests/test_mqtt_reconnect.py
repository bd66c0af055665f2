"""common.mqtt.run_reconnecting against a real Mosquitto that is stopped and restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiomqtt
import pytest

from common.backoff import Backoff
from common.mqtt import run_reconnecting
from testbed.servers import PrivateMosquitto

pytestmark = pytest.mark.integration
NAME = "probe-client"


def _connect(broker: PrivateMosquitto) -> Callable[[], aiomqtt.Client]:
    return lambda: aiomqtt.Client(broker.host, broker.port, timeout=2)


class Recorder:
    """What the loop did, in order: ("connected", n) and ("lost", delay)."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self.connects = 0
        self.errors: list[aiomqtt.MqttError] = []

    async def connected(self) -> None:
        self.connects += 1
        await self.events.put(("connected", self.connects))

    async def on_lost(self, error: aiomqtt.MqttError, delay: float) -> None:
        self.errors.append(error)
        await self.events.put(("lost", delay))

    async def next(self) -> tuple[str, float]:
        async with asyncio.timeout(15):
            return await self.events.get()


async def _until_connected(rec: Recorder) -> list[float]:
    """The delays of the losses reported before the next connection."""
    delays = []
    while (event := await rec.next())[0] != "connected":
        delays.append(event[1])
    return delays


async def test_reconnects_after_broker_restarts_and_backoff_starts_over(
    fresh_mosquitto: Callable[..., PrivateMosquitto], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="common.mqtt")
    broker = fresh_mosquitto()
    rec = Recorder()

    async def session(client: aiomqtt.Client) -> None:
        await rec.connected()
        async for _ in client.messages:
            pass

    backoff = Backoff(base_s=0.05, max_s=0.4, jitter=0.0)
    loop = run_reconnecting(_connect(broker), session, backoff=backoff, name=NAME, on_lost=rec.on_lost)
    task = asyncio.create_task(loop, name="reconnect-under-test")
    try:
        assert await rec.next() == ("connected", 1)
        for outage in (1, 2):
            await asyncio.to_thread(broker.stop)
            firsts = [(await rec.next())[1] for _ in range(4)]
            assert firsts == [0.05, 0.1, 0.2, 0.4], f"outage {outage}: backoff did not start over"
            await asyncio.to_thread(broker.start)
            later = await _until_connected(rec)
            assert set(later) <= {0.4} and rec.connects == outage + 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert all(isinstance(e, aiomqtt.MqttError) for e in rec.errors)
    warnings = [r.getMessage() for r in caplog.records if r.name == "common.mqtt"]
    assert len(warnings) == len(rec.errors), "one log line per loss"
    assert all(w.startswith(f"{NAME}: ") for w in warnings)
    assert "connection lost" in warnings[0] and "cannot connect" in warnings[1]


async def test_an_mqtt_error_inside_a_task_group_is_a_lost_connection(mosquitto: PrivateMosquitto) -> None:
    rec = Recorder()

    async def failing_task() -> None:
        raise aiomqtt.MqttError("publish failed: the connection went away")

    async def session(client: aiomqtt.Client) -> None:
        await rec.connected()
        if rec.connects == 1:
            async with asyncio.TaskGroup() as group:
                group.create_task(failing_task())
                group.create_task(asyncio.Event().wait())
        raise LookupError("stop here")

    with pytest.raises(LookupError, match="stop here"):
        async with asyncio.timeout(15):
            await run_reconnecting(_connect(mosquitto), session, backoff=Backoff(0.01, 0.01), name=NAME,
                                   on_lost=rec.on_lost)  # fmt: skip
    assert rec.connects == 2
    assert [str(e) for e in rec.errors] == ["publish failed: the connection went away"]


async def test_other_errors_propagate_without_a_retry(mosquitto: PrivateMosquitto) -> None:
    rec = Recorder()

    async def session(client: aiomqtt.Client) -> None:
        await rec.connected()
        raise ExceptionGroup("session", [aiomqtt.MqttError("lost"), LookupError("a bug, not the network")])

    with pytest.raises(ExceptionGroup) as raised:
        async with asyncio.timeout(15):
            await run_reconnecting(_connect(mosquitto), session, backoff=Backoff(0.01, 0.01), name=NAME,
                                   on_lost=rec.on_lost)  # fmt: skip
    assert raised.group_contains(LookupError, match="a bug, not the network")
    assert rec.connects == 1 and rec.errors == []


async def test_cancellation_ends_the_loop_while_connected_and_while_waiting(
    fresh_mosquitto: Callable[..., PrivateMosquitto],
) -> None:
    broker = fresh_mosquitto()
    rec = Recorder()

    async def session(client: aiomqtt.Client) -> None:
        await rec.connected()
        await asyncio.Event().wait()

    for down in (False, True):
        backoff = Backoff(base_s=60.0, max_s=60.0)
        loop = run_reconnecting(_connect(broker), session, backoff=backoff, name=NAME, on_lost=rec.on_lost)
        task = asyncio.create_task(loop)
        event = await rec.next()
        assert event[0] == ("lost" if down else "connected")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
        broker.stop()


async def test_a_cancellation_that_ends_in_an_mqtt_error_still_ends_the_loop(
    mosquitto: PrivateMosquitto,
) -> None:
    """Closing a client while cancelled can raise an MqttError; that is no lost connection."""
    rec = Recorder()

    async def session(client: aiomqtt.Client) -> None:
        await rec.connected()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if rec.connects == 1:  # only the first time: a loop that swallowed it can still be ended
                raise aiomqtt.MqttError("could not disconnect cleanly") from None
            raise

    loop = run_reconnecting(_connect(mosquitto), session, backoff=Backoff(0.01, 0.01), name=NAME,
                            on_lost=rec.on_lost)  # fmt: skip
    task = asyncio.create_task(loop)
    assert await rec.next() == ("connected", 1)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
    assert done, f"cancelled, yet it went on: {rec.connects} connections"
    assert task.cancelled() and rec.connects == 1


async def test_a_cancellation_the_session_drops_still_ends_the_loop(mosquitto: PrivateMosquitto) -> None:
    """Python 3.11's ``asyncio.wait_for`` drops a cancel that lands as its future completes
    (CPython gh-86296); aiomqtt waits for CONNACK and SUBACK with it. A session that swallows
    the first cancel, as such a wait does, must not keep the loop (and a closing gateway)
    waiting: this hung the clock-guard test one run in two."""
    rec = Recorder()
    swallowed = 0

    async def session(client: aiomqtt.Client) -> None:
        nonlocal swallowed
        await rec.connected()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed += 1  # dropped, as wait_for's race drops it
        await asyncio.Event().wait()  # then on to receiving, as a session would

    task = asyncio.create_task(run_reconnecting(_connect(mosquitto), session, backoff=Backoff(0.01, 0.01),
                                                name=NAME, on_lost=rec.on_lost))  # fmt: skip
    assert await rec.next() == ("connected", 1)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "cancelled, yet the loop still waits for a session that dropped the cancel"
    assert task.cancelled() and swallowed == 1 and rec.connects == 1
