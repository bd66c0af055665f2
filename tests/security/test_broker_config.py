"""``puhui broker config``: the files it writes, password mode and the insecure switch on a
real Mosquitto, and the private broker's TLS readiness probe."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evidence.wire import ack_topic, batch_subscription, batch_topic
from puhui.broker import BrokerSite, access_document, listener_text, write_broker_config
from puhui.cli import main
from puhui.pki import issue_server, make_ca
from testbed import servers
from testbed.servers import PrivateMosquitto, ServerStartError, mqtt_connack_ok

from .conftest import (
    GW_A,
    GW_B,
    LONG_AGGREGATOR,
    ROGUE,
    SecureSite,
    clients,
    granted,
    payload,
    receive_until,
    until_payload,
)

SHARED = batch_subscription()


def _site(tmp_path: Path, **options: object) -> BrokerSite:
    ca = make_ca(tmp_path / "pki")
    issue_server(ca)
    return BrokerSite(pki=tmp_path / "pki", gateways=(GW_A, GW_B), **options)  # type: ignore[arg-type]


# -- the files ----------------------------------------------------------------------------------


def test_config_is_tls_only_without_anonymous_access(tmp_path: Path) -> None:
    files = write_broker_config(_site(tmp_path), tmp_path / "broker")
    lines = files.config.read_text().splitlines()
    for line in ("allow_anonymous false", "listener 8883", "tls_version tlsv1.2", "require_certificate true",
                 "use_identity_as_username true", f"plugin_opt_config_file {files.access}"):  # fmt: skip
        assert line in lines
    assert f"keyfile {(tmp_path / 'pki' / 'broker.key').resolve()}" in lines
    assert not any(line.startswith(("allow_anonymous true", "password_file", "acl_file")) for line in lines)
    assert stat.S_IMODE(files.config.stat().st_mode) == 0o644
    assert files.access is not None and stat.S_IMODE(files.access.stat().st_mode) == 0o600


def test_access_list_grants_each_identity_exactly_its_topics(tmp_path: Path) -> None:
    doc = access_document(_site(tmp_path))
    assert doc["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    rules = {
        r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"] if a["allow"]} for r in doc["roles"]
    }
    assert rules["gateway:gw-a"] == {
        ("publishClientSend", "puhui/v1/gw-a/batch"),
        ("subscribeLiteral", "puhui/v1/gw-a/ack"),
        ("publishClientReceive", "puhui/v1/gw-a/ack"),
        ("subscribeLiteral", "puhui/v1/gw-a/reject"),
        ("publishClientReceive", "puhui/v1/gw-a/reject"),
    }
    assert rules["aggregator:aggregator"] == {
        ("subscribeLiteral", "$share/puhui-aggregators/puhui/v1/+/batch"),
        ("subscribeLiteral", "puhui/v1/+/batch"),
        ("publishClientReceive", "puhui/v1/+/batch"),
        ("publishClientSend", "puhui/v1/+/ack"),
        ("publishClientSend", "puhui/v1/+/reject"),
    }
    assert [(c["username"], c["roles"]) for c in doc["clients"]] == [
        ("aggregator", [{"rolename": "aggregator:aggregator"}]),
        ("gw-a", [{"rolename": "gateway:gw-a"}]),
        ("gw-b", [{"rolename": "gateway:gw-b"}]),
    ]
    assert all("password" not in c for c in doc["clients"])  # certificate mode


def test_rewriting_for_a_new_roster_replaces_the_files(tmp_path: Path) -> None:
    site = _site(tmp_path)
    write_broker_config(site, tmp_path / "broker")
    files = write_broker_config(
        site.model_copy(update={"gateways": (GW_A, GW_B, "gw-c")}), tmp_path / "broker"
    )
    assert files.access is not None
    users = [c["username"] for c in json.loads(files.access.read_text())["clients"]]
    assert users == ["aggregator", GW_A, GW_B, "gw-c"]
    assert stat.S_IMODE(files.access.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "broker").iterdir()) == [
        "dynamic-security.json",
        "mosquitto.conf",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gateways": ("gw-a", "a/b")}, "identity 'a/b' must match"),
        ({"gateways": ("gw-a", "gw-a")}, "listed twice"),
        ({"gateways": ("aggregator",)}, "both the aggregator and a gateway"),
        ({"gatways": ("gw-a",)}, "gatways"),
    ],
)
def test_bad_site_is_refused(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrokerSite(pki=tmp_path, **options)  # type: ignore[arg-type]


def test_cli_writes_the_files_and_names_a_missing_pki_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki, out = str(tmp_path / "pki"), str(tmp_path / "broker")
    assert main(["pki", "init", "--dir", pki]) == 0
    assert main(["broker", "config", "--pki", pki, "--out", out, "--gateway", GW_A]) == 1
    assert (
        f"{(tmp_path / 'pki' / 'broker.crt').resolve()}: cannot read certificate" in capsys.readouterr().err
    )
    assert not (tmp_path / "broker" / "dynamic-security.json").exists()
    assert main(["pki", "issue", "--dir", pki, "--server", "localhost"]) == 0
    args = ["broker", "config", "--pki", pki, "--out", out, "--port", "18883", "--gateway", GW_A]
    assert main([*args, "--gateway", GW_B]) == 0
    out_text = capsys.readouterr().out
    assert "dynamic-security.json (0600)" in out_text and "chown mosquitto:" in out_text
    assert "listener 18883" in (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert main([*args, "--gateway", "bad/id"]) == 1
    err = capsys.readouterr().err
    assert "puhui broker config: gateways: " in err and "'bad/id' must match" in err
    assert "Traceback" not in err


def test_insecure_config_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "broker"
    assert main(["broker", "config", "--pki", str(tmp_path / "none"), "--out", str(out), "--insecure"]) == 0
    assert "WARNING: insecure broker" in capsys.readouterr().err
    text = (out / "mosquitto.conf").read_text()
    assert "!! INSECURE: plain text, anonymous clients, no access list." in text
    assert "allow_anonymous true" in text.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["mosquitto.conf"]


# -- on a real broker ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_insecure_broker_lets_anyone_join_the_shared_subscription(tmp_path: Path) -> None:
    """What ``insecure`` means, shown: the tests of the secure config would fail here."""
    site = BrokerSite(pki=tmp_path, insecure=True)
    files = write_broker_config(site, tmp_path / "broker")
    with PrivateMosquitto(
        tmp_path / "mosquitto", listener=lambda p, h: listener_text(site, files, port=p, bind=h)
    ) as b:
        async with aiomqtt.Client(b.host, b.port, identifier="anyone") as anyone:
            assert await granted(anyone, SHARED)
            assert await granted(anyone, "#")


@pytest.mark.integration
async def test_password_mode_lets_in_only_the_roster_with_its_own_password(password_site: SecureSite) -> None:
    host, port = password_site.broker.host, password_site.broker.port
    tls = password_site.context(None)
    assert not mqtt_connack_ok(host, port, ssl_context=tls)  # no user name
    assert not mqtt_connack_ok(host, port)  # plain text
    for identity, password_of in ((GW_A, GW_B), (ROGUE, ROGUE)):  # another's password; not on the roster
        with pytest.raises(aiomqtt.MqttError):
            async with password_site.client(identity, password_of=password_of, timeout=2):
                pass
    async with clients(password_site, LONG_AGGREGATOR, GW_A) as (aggregator, gw_a):
        assert await granted(aggregator, SHARED)
        assert not await granted(gw_a, SHARED)
        assert not await granted(gw_a, ack_topic(GW_B))
        await gw_a.publish(batch_topic(GW_B), b"forged", qos=1)
        await gw_a.publish(batch_topic(GW_A), b"genuine", qos=1)
        received = await receive_until(aggregator, until_payload("genuine"))
    assert [payload(m) for m in received] == ["genuine"]


@pytest.mark.integration
def test_tls_broker_is_not_ready_for_a_plain_probe(tmp_path: Path) -> None:
    """The readiness probe must speak TLS to a TLS listener; the default one never gets in."""
    site = _site(tmp_path)
    files = write_broker_config(site, tmp_path / "broker")
    broker = PrivateMosquitto(
        tmp_path / "mosquitto",
        listener=lambda p, h: listener_text(site, files, port=p, bind=h),
        ready_timeout=1.0,
    )
    with pytest.raises(ServerStartError, match="not ready within 1 s"):
        broker.start()
    assert "Opening ipv4 listen socket" in broker.log_tail()
    broker.close()


@given(
    username=st.none() | st.text(min_size=0, max_size=200),
    password=st.none() | st.text(min_size=0, max_size=10000),
)
def test_probe_connect_packet_has_the_right_remaining_length(
    username: str | None, password: str | None
) -> None:
    packet = servers._connect_packet(b"probe", username, password)
    assert packet[0] == 0x10
    length, multiplier, i = 0, 1, 1
    while True:
        length += (packet[i] & 0x7F) * multiplier
        multiplier *= 128
        i += 1
        if not packet[i - 1] & 0x80:
            break
    assert length == len(packet) - i
    flags = packet[i + 7]
    assert bool(flags & 0x80) == (username is not None) and bool(flags & 0x40) == (password is not None)
    tail = b"".join(
        len(v).to_bytes(2, "big") + v for v in (x.encode() for x in (username, password) if x is not None)
    )
    assert packet.endswith(b"\x00\x05probe" + tail)
