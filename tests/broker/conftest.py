"""The brokers puhui can run on, as one interface for the feature probes and the chain test:
Mosquitto (one node, the files ``puhui broker`` writes), and three-node NATS and RabbitMQ
clusters from :mod:`testbed.brokers`. All of them TLS only, password logins, per-user ACLs.

Users: ``aggregator`` (subscribes to every gateway's batches, plain and shared; publishes
acks and rejects), ``gw-a`` and ``gw-b`` (publish their own batches, read their replies).
"""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from evidence.wire import TOPIC_ROOT, ack_topic, batch_subscription, batch_topic, reject_topic
from puhui.pki import issue_server, make_ca, read_password
from testbed.brokers import (
    BrokerCluster,
    BrokerTls,
    MqttUser,
    RabbitCluster,
    cluster_of,
    have_binary,
    new_user,
)
from tests.conftest import _session_servers
from tests.security.conftest import AGGREGATOR, GW_A, GW_B, client_context, running_site

KINDS = ("mosquitto", "nats", "rabbitmq")
_ids = itertools.count(1)


@dataclass
class Broker:
    """A running broker (or cluster) and the passwords of its users."""

    kind: str
    ports: list[int]
    context: ssl.SSLContext
    passwords: dict[str, str]
    cluster: BrokerCluster | None = None  # None: one Mosquitto, nothing to kill
    ca_file: Path = field(default=Path())

    host = "127.0.0.1"

    def client(self, user: str, node: int = 0, *, identifier: str | None = None,
               clean_session: bool = True, **options: object) -> aiomqtt.Client:  # fmt: skip
        """A TLS client of node ``node`` logged in as ``user``."""
        return aiomqtt.Client(self.host, self.ports[node % len(self.ports)], username=user,
                              password=self.passwords[user], tls_context=self.context,
                              identifier=identifier or f"t-{user}-{next(_ids)}",
                              clean_session=clean_session, timeout=10, **options)  # type: ignore[arg-type]  # fmt: skip


def cluster_users() -> list[MqttUser]:
    """The users of the module docstring, with the topic filters ``puhui broker`` gives them."""
    batches = f"{TOPIC_ROOT}/+/batch"
    aggregator = new_user(AGGREGATOR, subscribe=[batches, batch_subscription()],
                          publish=[f"{TOPIC_ROOT}/+/ack", f"{TOPIC_ROOT}/+/reject"])  # fmt: skip
    gateways = [new_user(gw, publish=[batch_topic(gw)], subscribe=[ack_topic(gw), reject_topic(gw)])
                for gw in (GW_A, GW_B)]  # fmt: skip
    return [aggregator, *gateways]


def start_broker(kind: str, root: Path) -> Iterator[Broker]:
    if kind == "mosquitto":
        with running_site(root, auth="password") as site:
            passwords = {i: read_password(site.layout.client_password(i)) for i in (AGGREGATOR, GW_A, GW_B)}
            yield Broker(kind, [site.broker.port], client_context(site.layout, None), passwords,
                         ca_file=site.layout.ca_cert)  # fmt: skip
        return
    if not have_binary(kind):
        pytest.skip(f"{kind} is not installed (make system-deps)")
    ca = make_ca(root / "pki")
    issue_server(ca)
    tls = BrokerTls(ca.layout.server_cert, ca.layout.server_key, ca.layout.ca_cert)
    users = cluster_users()
    with cluster_of(kind, root / kind, tls, users) as cluster:
        # a node a test kills and starts again is the module's, not a leak of that test
        servers = [*cluster.nodes, *([cluster.epmd] if isinstance(cluster, RabbitCluster) else [])]
        _session_servers.extend(servers)
        try:
            yield Broker(kind, cluster.mqtt_ports, cluster.client_context(),
                         {u.name: u.password for u in users}, cluster, ca_file=tls.ca_file)  # fmt: skip
        finally:
            for server in servers:
                _session_servers.remove(server)


@pytest.fixture(scope="module", params=KINDS)
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Each broker kind in turn (one per module and kind)."""
    kind: str = request.param
    yield from start_broker(kind, tmp_path_factory.mktemp(kind))
