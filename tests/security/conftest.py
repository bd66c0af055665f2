"""A secured site for the security tests: a PKI, the broker files ``puhui broker`` writes,
and a private Mosquitto that runs them (module scope: one broker per test module).

Identities: the aggregator, gateways ``gw-a`` and ``gw-b`` on the roster, and ``rogue``, a
valid certificate of the same CA whose identity the roster does not name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from puhui.broker import BrokerFiles, BrokerSite, listener_text, write_broker_config
from puhui.pki import PkiLayout, issue_client, issue_password, issue_server, make_ca, read_password
from testbed.servers import PrivateMosquitto, mqtt_connack_ok

AGGREGATOR = "aggregator"
GW_A, GW_B, ROGUE = "gw-a", "gw-b", "rogue"
# 64 characters, the longest id: the readiness probe's CONNECT then needs a two-byte length.
LONG_AGGREGATOR = "aggregator-" + "x" * 53
DEADLINE = 15.0


@dataclass(frozen=True)
class SecureSite:
    """A running broker with the site's PKI and generated files."""

    site: BrokerSite
    files: BrokerFiles
    layout: PkiLayout
    broker: PrivateMosquitto

    def context(self, identity: str | None) -> ssl.SSLContext:
        """Trusts the site CA; presents ``identity``'s certificate unless None."""
        return client_context(self.layout, identity)

    def client(
        self, identity: str | None, *, password_of: str | None = None, **options: object
    ) -> aiomqtt.Client:
        """A TLS client; certificate mode presents ``identity``'s certificate, password mode
        logs in as ``identity`` with the password file of ``password_of`` (default: its own)."""
        name = f"t-{identity}-{next(_client_numbers)}"
        if self.site.auth == "password":
            secret = read_password(self.layout.client_password(password_of or identity)) if identity else None
            return aiomqtt.Client(self.broker.host, self.broker.port, identifier=name, username=identity,
                                  password=secret, tls_context=self.context(None), **options)  # type: ignore[arg-type]  # fmt: skip
        return aiomqtt.Client(self.broker.host, self.broker.port, identifier=name,
                              tls_context=self.context(identity), **options)  # type: ignore[arg-type]  # fmt: skip


_client_numbers = iter(range(1, 1_000_000))


def client_context(layout: PkiLayout, identity: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    if identity is not None:
        context.load_cert_chain(layout.client_cert(identity), layout.client_key(identity))
    return context


def make_site(
    root: Path, *, auth: str = "certificate", aggregator: str = AGGREGATOR
) -> tuple[BrokerSite, BrokerFiles]:
    """A PKI with every identity of this module's docstring, and the broker files for it."""
    ca = make_ca(root / "pki")
    issue_server(ca)
    for identity in (aggregator, GW_A, GW_B, ROGUE):
        issue_client(ca, identity)
        issue_password(ca.layout, identity)
    site = BrokerSite(pki=root / "pki", gateways=(GW_A, GW_B), aggregator=aggregator, auth=auth)  # type: ignore[arg-type]
    return site, write_broker_config(site, root / "broker")


def start_broker(root: Path, site: BrokerSite, files: BrokerFiles) -> PrivateMosquitto:
    """Mosquitto running the generated listener and access list on a free loopback port."""
    layout = PkiLayout(site.pki)
    if site.auth == "password":
        probe = functools.partial(
            mqtt_connack_ok,
            ssl_context=client_context(layout, None),
            username=site.aggregator,
            password=read_password(layout.client_password(site.aggregator)),
        )
    else:
        probe = functools.partial(mqtt_connack_ok, ssl_context=client_context(layout, site.aggregator))
    broker = PrivateMosquitto(
        root / "mosquitto",
        listener=lambda port, host: listener_text(site, files, port=port, bind=host),
        ready_probe=probe,
    )
    return broker.start()


@contextlib.contextmanager
def running_site(root: Path, **options: str) -> Iterator[SecureSite]:
    site, files = make_site(root, **options)
    broker = start_broker(root, site, files)
    try:
        yield SecureSite(site, files, PkiLayout(site.pki), broker)
    finally:
        broker.close()


@pytest.fixture(scope="module")
def cert_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureSite]:
    """Certificate mode: the default a site gets from ``puhui broker config``."""
    with running_site(tmp_path_factory.mktemp("cert-site")) as secure:
        yield secure


@pytest.fixture(scope="module")
def password_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureSite]:
    """Password mode, with a 64-character aggregator identity."""
    with running_site(
        tmp_path_factory.mktemp("password-site"), auth="password", aggregator=LONG_AGGREGATOR
    ) as s:
        yield s


# -- helpers for the tests ------------------------------------------------------------------


async def granted(client: aiomqtt.Client, topic: str) -> bool:
    """Subscribe; whether the broker granted it (SUBACK 0x80 is a refusal)."""
    [code] = await client.subscribe(topic, qos=1)  # type: ignore[misc]
    return not code.is_failure


async def receive_until(
    client: aiomqtt.Client, done: Callable[[list[aiomqtt.Message]], bool], within: float = DEADLINE
) -> list[aiomqtt.Message]:
    """Messages as they arrive until ``done(received)``; fails after ``within`` seconds."""
    received: list[aiomqtt.Message] = []
    try:
        async with asyncio.timeout(within):
            async for message in client.messages:
                received.append(message)
                if done(received):
                    return received
    except TimeoutError:
        pytest.fail(f"not done after {within} s; received {[payload(m) for m in received]}")
    raise AssertionError("message stream ended")


def payload(message: aiomqtt.Message) -> str:
    assert isinstance(message.payload, bytes)
    return message.payload.decode()


def until_payload(expected: str) -> Callable[[list[aiomqtt.Message]], bool]:
    return lambda received: payload(received[-1]) == expected


@contextlib.asynccontextmanager
async def clients(secure: SecureSite, *identities: str) -> AsyncIterator[list[aiomqtt.Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(secure.client(i)) for i in identities]
