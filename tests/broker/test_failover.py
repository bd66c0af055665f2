"""The broker failover list: config models, the order addresses are tried in, and the
reconnect loop moving to the next broker when one cannot be reached (real Mosquitto)."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from pydantic import ValidationError

from aggregator.config import parse_config
from common.backoff import Backoff
from common.mqtt import BrokerAddress, BrokerList, run_reconnecting
from gateway.evidence_config import UplinkSettings
from testbed.servers import PrivateMosquitto, free_ports

AGG = {"store": {"path": "e.sqlite3"}, "influx": {"url": "http://127.0.0.1:8086", "database": "p"},
       "key_file": "k.pem"}  # fmt: skip


def test_brokers_are_tried_in_order_and_wrap_around() -> None:
    brokers = BrokerList.of("a", 1, [BrokerAddress(host="b", port=2), BrokerAddress(host="c", port=3)])
    seen = []
    for _ in range(4):
        seen.append(str(brokers.current))
        brokers.advance()
    assert seen == ["a:1", "b:2", "c:3", "a:1"]
    with pytest.raises(ValueError, match="at least one"):
        BrokerList([])


def test_failover_entries_are_closed_models_in_both_configs() -> None:
    mqtt = {"insecure": True, "failover": [{"host": "n2", "port": 8883}], "share_group": None}
    config = parse_config({**AGG, "mqtt": mqtt}, "a.yaml")
    assert config.mqtt.failover == (BrokerAddress(host="n2", port=8883),)
    assert config.mqtt.share_group is None
    with pytest.raises(Exception, match="prot"):
        parse_config({**AGG, "mqtt": {**mqtt, "failover": [{"host": "n2", "prot": 1}]}}, "a.yaml")
    uplink = {"host": "n1", "aggregator_public_key": "agg.pem"}
    assert UplinkSettings.model_validate({**uplink, "failover": [{"host": "n2", "port": 1}]}).failover
    with pytest.raises(ValidationError):
        UplinkSettings.model_validate({**uplink, "failover": [{"host": "n2", "port": 0}]})


@pytest.mark.integration
async def test_the_loop_moves_to_the_next_broker_when_one_cannot_be_reached(
    mosquitto: PrivateMosquitto,
) -> None:
    [dead] = free_ports(1)  # nothing listens there
    brokers = BrokerList.of("127.0.0.1", dead, [BrokerAddress(host=mosquitto.host, port=mosquitto.port)])
    reached: list[str] = []

    async def session(client: aiomqtt.Client) -> None:
        reached.append(str(brokers.current))

    def connect() -> aiomqtt.Client:
        return aiomqtt.Client(brokers.current.host, brokers.current.port, timeout=2)

    async with asyncio.timeout(15):
        await run_reconnecting(connect, session, backoff=Backoff(0.01, 0.05), name="probe", brokers=brokers)
    assert reached == [f"127.0.0.1:{mosquitto.port}"]
