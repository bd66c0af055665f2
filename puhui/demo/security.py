"""What ``puhui demo`` secures (issue 16; docs/security.md, "what the demo runs").

- :func:`make_demo_site`: a private CA under ``<out>/pki`` (broker certificate; a client
  certificate for the aggregator, each gateway and the simulated MQTT meters' publisher)
  and the broker's access list: gateway G publishes only its batches and reads only its
  replies and its own meters' topics, the meters' publisher publishes only its meters'
  topics, only the aggregator reads batches;
- :func:`secure_broker`: the private Mosquitto with a TLS listener that requires those
  certificates and runs the access list (the outage fault restarts it as it was);
- :func:`make_influx_users`: InfluxDB with authentication: an admin made at start, the
  aggregator's user (WRITE on the demo database) and a reader (READ), each password a
  random 0600 file that configs and commands name, never print.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.influx import InfluxV1Client
from aggregator.influx.influxql import quote_ident, quote_literal
from common.tls import SecretSource, TlsSettings, client_context, read_secret
from puhui.broker import BrokerFiles, BrokerSite, MeterTopic, listener_text, write_access_list
from puhui.pki import PkiLayout, issue_client, issue_server, make_ca, new_password_file
from puhui.sitegen import mqtt_meter_topics
from testbed.servers import PrivateMosquitto, mqtt_connack_ok

AGGREGATOR = "aggregator"
INFLUX_ADMIN = "admin"
INFLUX_WRITER = "puhui-aggregator"
INFLUX_READER = "puhui-reader"


def gateway_id(site: str) -> str:
    """The demo gateway of a fleet site: its evidence identity and its broker identity."""
    return f"gw-{site}"


@dataclass(frozen=True)
class DemoSite:
    """The demo's PKI and broker site (who may connect, and do what)."""

    site: BrokerSite
    layout: PkiLayout
    files: BrokerFiles

    @property
    def meter_publisher(self) -> str | None:
        publishers = self.site.publishers
        return publishers[0] if publishers else None

    def tls(self, identity: str) -> dict[str, str]:
        """YAML-ready TLS settings presenting ``identity``'s certificate (site CA trusted)."""
        layout = self.layout
        return {
            "ca_file": str(layout.ca_cert),
            "cert_file": str(layout.client_cert(identity)),
            "key_file": str(layout.client_key(identity)),
        }

    def tls_settings(self, identity: str) -> TlsSettings:
        return TlsSettings(**self.tls(identity))


def make_demo_site(out: Path, fleet: Any) -> DemoSite:
    """CA, certificates and access list of the demo for fleet config ``fleet``.

    The simulated MQTT meters share connections, so one identity (``sim-<fleet>``)
    publishes all of their topics; each topic is read only by its site's gateway. In the
    field every plug or data logger gets an identity of its own (one ``MeterTopic`` each).
    """
    publisher = f"sim-{fleet.name}"
    meters = tuple(
        MeterTopic(topic=topic, publisher=publisher, gateway=gateway_id(site))
        for site, topic in mqtt_meter_topics(fleet)
    )
    gateways = tuple(gateway_id(s.name) for s in fleet.sites)
    return make_site(out / "pki", out / "servers" / "mosquitto", gateways, meters)


def make_site(
    pki: Path, broker_dir: Path, gateways: tuple[str, ...], meters: tuple[MeterTopic, ...] = ()
) -> DemoSite:
    """A new CA in ``pki`` with the broker's certificate and one client certificate per
    identity (the aggregator, ``gateways``, the meters' publishers), and the access list
    (``broker_dir/dynamic-security.json``, 0600) of that roster."""
    site = BrokerSite(pki=pki, gateways=gateways, aggregator=AGGREGATOR, meters=meters)
    ca = make_ca(pki, name="puhui demo CA")
    issue_server(ca)
    for identity in site.roster:
        issue_client(ca, identity)
    broker_dir.mkdir(parents=True, exist_ok=True)
    access = write_access_list(site, broker_dir / "dynamic-security.json")
    return DemoSite(site, PkiLayout(pki), BrokerFiles(broker_dir / "mosquitto.conf", access))


def secure_broker(workdir: Path, demo: DemoSite, *, outlive_parent: bool) -> PrivateMosquitto:
    """The demo's Mosquitto: TLS with client certificates, the access list, on loopback."""
    probe = functools.partial(
        mqtt_connack_ok, ssl_context=client_context(demo.tls_settings(AGGREGATOR), "demo broker probe")
    )
    return PrivateMosquitto(
        workdir,
        listener=lambda port, host: listener_text(demo.site, demo.files, port=port, bind=host),
        ready_probe=probe,
        outlive_parent=outlive_parent,
    )


@dataclass(frozen=True)
class InfluxUsers:
    """The demo InfluxDB's users and their password files (each 0600)."""

    url: str
    database: str
    admin: Path
    writer: Path  # the aggregator's: named by its config as influx.password: {file: ...}
    reader: Path  # the report's queries and the printed curl examples

    def client(self, user: str, password_file: Path) -> InfluxV1Client:
        password = read_secret(SecretSource(file=str(password_file)), f"InfluxDB user {user}")
        return InfluxV1Client(self.url, self.database, username=user, password=password)

    def writing(self) -> InfluxV1Client:
        return self.client(INFLUX_WRITER, self.writer)

    def reading(self) -> InfluxV1Client:
        return self.client(INFLUX_READER, self.reader)

    def curl(self, query: str) -> str:
        """A curl command for ``query`` as the reader; the password stays in its file."""
        return (
            f'curl -sG -u "{INFLUX_READER}:$(cat {self.reader})" {self.url}/query '
            f"--data-urlencode db={self.database} --data-urlencode 'q={query}'"
        )


async def make_influx_users(url: str, database: str, writer: Path, folder: Path) -> InfluxUsers:
    """On a fresh InfluxDB with auth-enabled: the admin (1.x lets the first admin in without
    credentials), the database, the aggregator's writer (``writer``: its password file) and
    a reader (password files of admin and reader in ``folder``)."""
    users = InfluxUsers(
        url,
        database,
        admin=new_password_file(folder / f"{INFLUX_ADMIN}.password"),
        writer=new_password_file(writer),
        reader=new_password_file(folder / f"{INFLUX_READER}.password"),
    )
    admin_password = read_secret(SecretSource(file=str(users.admin)), "InfluxDB admin")
    async with InfluxV1Client(url, database) as anonymous:
        await anonymous.query(_create_user(INFLUX_ADMIN, admin_password) + " WITH ALL PRIVILEGES")
    async with users.client(INFLUX_ADMIN, users.admin) as admin:
        await admin.create_database()
        grants = ((INFLUX_WRITER, users.writer, "WRITE"), (INFLUX_READER, users.reader, "READ"))
        for user, path, right in grants:
            password = read_secret(SecretSource(file=str(path)), f"InfluxDB user {user}")
            await admin.query(_create_user(user, password))
            await admin.query(f"GRANT {right} ON {quote_ident(database)} TO {quote_ident(user)}")
    return users


def _create_user(user: str, password: str) -> str:
    return f"CREATE USER {quote_ident(user)} WITH PASSWORD {quote_literal(password)}"
