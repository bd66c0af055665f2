"""The one MQTT reconnect loop: connect, run a session, and on a lost connection wait with
backoff and connect again.

Every long-lived MQTT component (gateway uplink, MQTT meter driver, aggregator ingest,
simulated MQTT meters) hands :func:`run_reconnecting` how to build its client and what to
do while connected; the loop owns the policy: which errors mean "connection lost"
(:class:`aiomqtt.MqttError`, also inside the ``ExceptionGroup`` of a session's
``TaskGroup``), one log line per loss, backoff that starts over after every successful
connect, and cancellation that always ends the loop.

A component may name several brokers (the nodes of a cluster, :class:`BrokerList`): its
``connect()`` builds the client for ``brokers.current``, and the loop moves on to the next
address after every attempt that fails to connect (a lost connection first tries its own
broker again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field

from common.backoff import Backoff

log = logging.getLogger(__name__)

Session = Callable[[aiomqtt.Client], Awaitable[None]]
OnLost = Callable[[aiomqtt.MqttError, float], Awaitable[None]]


class SubscriptionRefused(aiomqtt.MqttError):
    """The broker answered SUBACK with a failure code: the connection is up and deaf to the
    topic (an ACL, or NATS while JetStream elects leaders after a node died)."""


async def subscribe(client: aiomqtt.Client, topic: str, qos: int) -> None:
    """Subscribe and check the SUBACK: a refusal raises :class:`SubscriptionRefused`, an
    MQTT error, so the reconnect loop reconnects and subscribes again instead of waiting
    forever on a subscription that does not exist."""
    codes = await client.subscribe(topic, qos=qos)
    for code in codes:
        failed = code >= 0x80 if isinstance(code, int) else code.is_failure
        if failed:
            raise SubscriptionRefused(f"broker refused the subscription to {topic!r} (SUBACK {code})")


class BrokerAddress(BaseModel):
    """One broker (a node of a cluster): ``host`` and ``port``, in a config file's
    ``failover`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class BrokerList:
    """Broker addresses tried in order, wrapping around: ``current`` is the one to connect
    to; ``advance()`` moves to the next (the reconnect loop calls it when a connect fails)."""

    def __init__(self, addresses: Sequence[BrokerAddress]) -> None:
        if not addresses:
            raise ValueError("a broker list needs at least one address")
        self._addresses = tuple(addresses)
        self._index = 0

    @classmethod
    def of(cls, host: str, port: int, failover: Sequence[BrokerAddress] = ()) -> BrokerList:
        """The configured ``host:port`` first, then the ``failover`` addresses."""
        return cls([BrokerAddress(host=host, port=port), *failover])

    @property
    def current(self) -> BrokerAddress:
        return self._addresses[self._index]

    @property
    def addresses(self) -> tuple[BrokerAddress, ...]:
        return self._addresses

    def advance(self) -> None:
        self._index = (self._index + 1) % len(self._addresses)

    def __str__(self) -> str:
        return ", ".join(map(str, self._addresses))


async def run_reconnecting(
    connect: Callable[[], aiomqtt.Client],
    session: Session,
    *,
    backoff: Backoff,
    name: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_lost: OnLost | None = None,
    brokers: BrokerList | None = None,
) -> None:
    """Run ``session(client)`` on a client from ``connect()``, reconnecting forever.

    An :class:`aiomqtt.MqttError` (connecting, or raised by the session, alone or in an
    exception group) is logged once with ``name``, passed to ``on_lost(error, delay)`` and
    followed by ``sleep(delay)`` (wall or injected clock: the caller's choice) and a new
    connection. Any other exception propagates (with the MQTT errors of its group); so
    does cancellation, also when closing the client turns it into an MQTT error. Returns
    only if the session returns. With ``brokers`` (which ``connect()`` reads), a failed
    connect moves on to the next broker before the wait.
    """
    attempt, cancels = 0, _cancelling()
    while True:
        round_ = _Connection(connect, session)
        try:
            # The session runs in a task of its own: on Python 3.11 a TaskGroup whose child
            # fails while the group waits in __aexit__ leaves a cancel request counted on the
            # group's task (CPython gh-116720). Kept out of this task, a rise of cancelling()
            # here is a real cancellation.
            task = asyncio.create_task(round_.run(), name=f"{name}: session")
            await _until_done(task)
            task.result()
            return
        except* aiomqtt.MqttError as group:
            errors = _leaves(group)
        if _cancelling() > cancels:
            raise asyncio.CancelledError  # cancelled, and closing the client raised an MQTT error
        attempt = 0 if round_.connected else attempt
        delay = backoff.delay(attempt)
        attempt += 1
        where = ""
        if brokers is not None and len(brokers.addresses) > 1:
            where = f" to {brokers.current}"
            if not round_.connected:
                brokers.advance()
            where += f"; next: {brokers.current}"
        log.warning("%s: %s%s (%s); reconnecting in %.1f s", name,
                    "connection lost" if round_.connected else "cannot connect", where,
                    "; ".join(map(str, errors)), delay)  # fmt: skip
        if on_lost is not None:
            await on_lost(errors[0], delay)
        await sleep(delay)


class _Connection:
    """One connection and its session; remembers whether the connection was made."""

    def __init__(self, connect: Callable[[], aiomqtt.Client], session: Session) -> None:
        self._connect, self._session = connect, session
        self.connected = False

    async def run(self) -> None:
        client = self._connect()
        try:
            async with client:
                self.connected = True
                await self._session(client)
        finally:
            _read_disconnect_error(client)


def _read_disconnect_error(client: aiomqtt.Client) -> None:
    """aiomqtt sets the broker's disconnect on the client's ``_disconnected`` future, at times
    after the session already failed (a publish timed out, then the socket closed); nothing
    awaits it then, and asyncio logs "Future exception was never retrieved" when the client is
    collected (the demo's log at the broker outage). The loop handles that loss: read the
    error whenever it is set."""
    future = getattr(client, "_disconnected", None)
    if isinstance(future, asyncio.Future):
        future.add_done_callback(_read)


def _read(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


async def _until_done(task: asyncio.Task[None]) -> None:
    """Wait for ``task``; cancelled, cancel it until it ends, then raise the cancellation.

    Awaiting the task directly would pass a cancel on and wait for the task to honour it:
    Python 3.11's ``asyncio.wait_for`` drops a cancel that lands as its future completes
    (CPython gh-86296), and aiomqtt waits for CONNACK and SUBACK with it, so a session
    cancelled as the broker answered went on receiving and the closing gateway hung. Here
    the cancel ends this wait at once and the session is cancelled again until it stops."""
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        while not task.done():
            task.cancel()
            try:
                await asyncio.wait({task}, timeout=0.05)
            except asyncio.CancelledError:
                continue  # cancelled again: the session still has to stop first
        if not task.cancelled():
            task.exception()  # read: the cancellation is what this task reports
        raise


def _cancelling() -> int:
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


def _leaves(group: BaseExceptionGroup[aiomqtt.MqttError]) -> list[aiomqtt.MqttError]:
    out: list[aiomqtt.MqttError] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
