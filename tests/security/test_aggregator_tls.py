"""The aggregator on a secured site: TLS with its client certificate (or a password from a
0600 file), through the generated access list, batches of a gateway stored and acknowledged;
InfluxDB with authentication, its password from the environment. Secrets are never inline."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from aggregator.config import AggregatorConfig, parse_config
from aggregator.errors import ConfigError
from aggregator.influx import InfluxV1Client
from aggregator.influx.errors import InfluxAuthError
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from common.tls import SecretError, SecretSource, read_secret
from evidence.keys import generate_key
from evidence.wire import Ack, batch_topic, decode_reply
from puhui.pki import PkiLayout
from testbed.servers import PrivateInfluxDB
from tests.aggregator.ingest_support import SimGateway

from .conftest import AGGREGATOR, GW_A, SecureSite

pytestmark = pytest.mark.integration
AGG_KEY = generate_key()


def _config(tmp_path: Path, site: SecureSite, influx: dict[str, Any]) -> AggregatorConfig:
    layout = PkiLayout(site.site.pki)
    mqtt: dict[str, Any] = {"host": site.broker.host, "port": site.broker.port, "client_id": "agg-tls",
                            "tls": {"ca_file": str(layout.ca_cert)}}  # fmt: skip
    if site.site.auth == "password":
        mqtt |= {
            "username": site.site.aggregator,
            "password": {"file": str(layout.client_password(AGGREGATOR))},
        }
    else:
        mqtt["tls"] |= {"cert_file": str(layout.client_cert(AGGREGATOR)),
                        "key_file": str(layout.client_key(AGGREGATOR))}  # fmt: skip
    return AggregatorConfig.model_validate(
        {"mqtt": mqtt, "store": {"path": str(tmp_path / "e.sqlite3")}, "influx": influx,
         "key_file": str(tmp_path / "unused.pem")}
    )  # fmt: skip


async def _forget_session(site: SecureSite, config: AggregatorConfig) -> None:
    """End the aggregator's persistent session (a clean connect under its id) for later tests."""
    async with aiomqtt.Client(site.broker.host, site.broker.port, identifier=config.mqtt.client_id,
                              clean_session=True, tls_context=site.context(AGGREGATOR)):  # fmt: skip
        pass


@asynccontextmanager
async def _gateway(site: SecureSite, gateway: str) -> AsyncIterator[aiomqtt.Client]:
    async with site.client(gateway) as client:
        await client.subscribe(f"puhui/v1/{gateway}/ack", qos=1)
        yield client


async def _acks(client: aiomqtt.Client, n: int) -> list[Ack]:
    acks: list[Ack] = []
    async with asyncio.timeout(20):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            reply = decode_reply(message.payload, AGG_KEY.public_key)
            assert isinstance(reply, Ack), reply
            acks.append(reply)
            if len(acks) == n:
                return acks
    raise AssertionError("reply stream ended")


async def test_batches_over_tls_with_the_aggregators_certificate(
    tmp_path: Path, cert_site: SecureSite, influx_db: InfluxV1Client
) -> None:
    config = _config(tmp_path, cert_site, {"url": influx_db.url, "database": influx_db.database})
    gw = SimGateway(GW_A)
    store = SQLiteEvidenceStore(config.store.path)
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    store.close()
    async with Aggregator(config, key=AGG_KEY) as agg, _gateway(cert_site, GW_A) as client:
        async with asyncio.timeout(15):
            await agg.connected.wait()
        batches = [gw.next_batch(2) for _ in range(5)]
        for b in batches:
            await client.publish(batch_topic(GW_A), b.to_bytes(), qos=1)
        acks = await _acks(client, 5)
        assert [a.seq for a in acks] == [1, 2, 3, 4, 5]
        assert agg.store.batch_count(GW_A) == 5
    await _forget_session(cert_site, config)


async def test_influxdb_with_authentication_its_password_from_the_environment(
    tmp_path: Path, cert_site: SecureSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """InfluxDB started with auth-enabled: the aggregator writes with its own user, whose
    password comes from an environment variable; an anonymous client is refused."""
    with PrivateInfluxDB(tmp_path / "influxd", auth_enabled=True) as server:
        async with InfluxV1Client(server.url, "puhui") as anonymous:
            await anonymous.query("CREATE USER admin WITH PASSWORD 'adm1n-pw' WITH ALL PRIVILEGES")
        async with InfluxV1Client(server.url, "puhui", username="admin", password="adm1n-pw") as admin:
            await admin.query("CREATE DATABASE puhui")
            await admin.query("CREATE USER puhui WITH PASSWORD 'agg-pw'")
            await admin.query('GRANT ALL ON "puhui" TO "puhui"')
        monkeypatch.setenv("PUHUI_TEST_INFLUX_PASSWORD", "agg-pw")
        influx = {"url": server.url, "database": "puhui", "username": "puhui",
                  "password": {"env": "PUHUI_TEST_INFLUX_PASSWORD"}, "create_database": False}  # fmt: skip
        config = _config(tmp_path, cert_site, influx)
        gw = SimGateway(GW_A)
        store = SQLiteEvidenceStore(config.store.path)
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
        store.close()
        async with Aggregator(config, key=AGG_KEY) as agg, _gateway(cert_site, GW_A) as client:
            async with asyncio.timeout(15):
                await agg.connected.wait()
            batch = gw.next_batch(3)
            await client.publish(batch_topic(GW_A), batch.to_bytes(), qos=1)
            await _acks(client, 1)
            async with asyncio.timeout(20):
                await agg.wait_for(lambda a: a.store.influx_backlog() == (0, 0))
        async with InfluxV1Client(server.url, "puhui", username="puhui", password="agg-pw") as reader:
            [series] = await reader.query("SELECT count(delta) FROM puhui_interval")
            assert series["values"][0][1] == batch.header.count
        async with InfluxV1Client(server.url, "puhui") as anonymous:
            with pytest.raises(InfluxAuthError):
                await anonymous.query("SELECT count(delta) FROM puhui_interval")
    await _forget_session(cert_site, config)


def test_secrets_are_never_inline_and_files_must_be_private(tmp_path: Path) -> None:
    base = {"store": {"path": "e"}, "influx": {"url": "http://x", "database": "d"}, "key_file": "k"}
    for mqtt in ({"insecure": True, "username": "u", "password": "s3cret"}, {"host": "b"}):
        with pytest.raises(ConfigError, match=r"agg\.yaml: mqtt"):
            parse_config({**base, "mqtt": mqtt}, "agg.yaml")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(SecretError, match=re.escape(f"{secret} is mode 644")):
        read_secret(SecretSource(file=str(secret)), "mqtt.password")
    secret.chmod(0o600)
    assert read_secret(SecretSource(file=str(secret)), "mqtt.password") == "s3cret"
    os.environ.pop("PUHUI_NO_SUCH_VARIABLE", None)
    with pytest.raises(SecretError, match="PUHUI_NO_SUCH_VARIABLE is not set"):
        read_secret(SecretSource(env="PUHUI_NO_SUCH_VARIABLE"), "influx.password")
