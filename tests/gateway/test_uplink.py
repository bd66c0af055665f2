"""Uplink against the real broker: signed acks only, rejects kept and retried, window, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.clock import ManualClock
from evidence.keys import generate_key
from evidence.wire import Ack, RejectReason, ack_topic, batch_topic, encode_reply, reject_topic
from gateway.evidence_config import BackoffSettings, SealingSettings, TlsSettings
from gateway.pipeline import EvidencePipeline
from testbed.servers import PrivateMosquitto, free_ports
from tests.gateway.ack_subscriber import AckSubscriber, eventually
from tests.gateway.evidence_helpers import T0, Keys, evidence_settings, interval, make_keys, uplink_settings

pytestmark = pytest.mark.integration
SNAP = {"version": 1, "interval_s": 900, "series": []}
ONE = SealingSettings(max_records=1, max_age_s=3600)  # one record, one batch


def subscriber(broker: PrivateMosquitto, tmp_path: Path, keys: Keys, gw: str, **kw: object) -> AckSubscriber:
    known = {gw: keys.gateway.public_key}
    return AckSubscriber(broker.host, broker.port, tmp_path / "agg.sqlite", gateway_keys=known,
                         aggregator_key=keys.aggregator, **kw)  # type: ignore[arg-type]  # fmt: skip


async def test_only_a_signed_ack_naming_seq_and_hash_removes_a_batch(
    tmp_path: Path, mosquitto: PrivateMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    gw, keys = "gw-forged", make_keys(tmp_path / "keys")
    settings = evidence_settings(tmp_path / "state", keys, sealing=ONE)
    uplink = uplink_settings(mosquitto.host, mosquitto.port, keys)
    async with (
        subscriber(mosquitto, tmp_path, keys, gw, mode="silent") as agg,
        EvidencePipeline(settings, uplink, gateway_id=gw, key=keys.gateway, clock=ManualClock(T0)) as p,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as attacker,
    ):
        await p.submit([interval(0, 0)], SNAP)
        await eventually(lambda: len(agg.batches(gw)) == 1, 10, "the batch at the subscriber")
        [batch] = agg.batches(gw)
        seq, digest = batch.header.seq, batch.header_sha256
        forged = [
            encode_reply(Ack(gw, seq, digest, "stored", 1), generate_key()),  # another key
            encode_reply(Ack("gw-other", seq, digest, "stored", 1), keys.aggregator),  # other gateway
            encode_reply(Ack(gw, seq, digest, "stored", 1), keys.aggregator).replace(
                b'"stored"', b'"stored" '
            ),
            b"not a reply",
        ]
        for payload in forged:
            await attacker.publish(ack_topic(gw), payload, qos=1)
        await attacker.publish(
            ack_topic(gw), encode_reply(Ack(gw, seq, "ab" * 32, "stored", 1), keys.aggregator)
        )
        await eventually(lambda: p.status()["forged_replies"] == 4 and p.status()["unmatched_acks"] == 1, 10)
        assert p.status()["outbox_depth_batches"] == 1 and p.status()["acks"] == 0
        await attacker.publish(
            ack_topic(gw), encode_reply(Ack(gw, seq, digest, "stored", 2), keys.aggregator)
        )
        await eventually(lambda: p.status()["outbox_depth_batches"] == 0, 10, "the genuine ack")
        status = p.status()
    assert (status["acks"], status["last_ack_seq"], status["acked_total"]) == (1, seq, 1)
    assert sum("ignored a reply" in r.getMessage() for r in caplog.records) == 4


async def test_a_reject_is_logged_kept_and_retried_until_accepted(
    tmp_path: Path, mosquitto: PrivateMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    gw, keys = "gw-rejected", make_keys(tmp_path / "keys")
    settings = evidence_settings(tmp_path / "state", keys, sealing=ONE)
    uplink = uplink_settings(mosquitto.host, mosquitto.port, keys)
    with caplog.at_level(logging.ERROR, logger="gateway.uplink"):
        async with (
            subscriber(
                mosquitto, tmp_path, keys, gw, mode="reject", reject_reason=RejectReason.NOT_ENROLLED
            ) as agg,
            EvidencePipeline(settings, uplink, gateway_id=gw, key=keys.gateway, clock=ManualClock(T0)) as p,
        ):
            await p.submit([interval(0, 0)], SNAP)
            await eventually(lambda: p.status()["rejects"] >= 3, 10, "rejects and retries")
            store = p._store
            assert store is not None
            delivery = store.delivery(1)
            assert (
                delivery is not None
                and delivery["last_reject"] == "not_enrolled"
                and delivery["rejects"] >= 3
            )
            assert p.status()["outbox_depth_batches"] == 1 and "not_enrolled" in str(
                p.status()["last_reject"]
            )
            agg.mode = "ack"  # enrolled now
            await eventually(lambda: p.status()["outbox_depth_batches"] == 0, 10, "the batch to get through")
            assert [b.header.seq for b in agg.batches(gw)] == [1]
    loud = [r.getMessage() for r in caplog.records if "BATCH REJECTED" in r.getMessage()]
    assert loud and all(gw in m and "seq 1" in m and "not_enrolled" in m for m in loud)


async def test_window_limits_unacked_batches_and_unacked_ones_are_resent(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    gw, keys = "gw-window", make_keys(tmp_path / "keys")
    settings = evidence_settings(tmp_path / "state", keys, sealing=ONE)
    uplink = uplink_settings(mosquitto.host, mosquitto.port, keys, inflight=3, resend_after_s=0.5)
    async with (
        subscriber(mosquitto, tmp_path, keys, gw, mode="silent") as agg,
        EvidencePipeline(settings, uplink, gateway_id=gw, key=keys.gateway, clock=ManualClock(T0)) as p,
    ):
        await agg.connected.wait()
        await p.submit([interval(m, 0) for m in range(10)], SNAP)
        await eventually(lambda: agg.received >= 3, 10, "the first window")
        assert p.status()["published"] == 3 and p.status()["inflight"] == 3
        agg.mode = "ack"  # the resent copies (duplicates at the subscriber) get acked now
        peak = [0]

        def drained() -> bool:
            peak[0] = max(peak[0], int(p.status()["inflight"] or 0))
            return p.status()["outbox_depth_batches"] == 0

        await eventually(drained, 20, "the outbox to drain")
        status = p.status()
        assert [b.header.seq for b in agg.batches(gw)] == list(range(1, 11))
    assert peak[0] <= 3
    assert status["resends"] >= 3 and agg.duplicates >= 3


# -- TLS with a client certificate ------------------------------------------------------------


Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Issuer | None, *, ca: bool = False,
          ip: str | None = None) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer[0] if issuer else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if ip:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = path.with_suffix(".key")
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    key_file.chmod(0o600)
    return str(path.with_suffix(".crt")), str(key_file)


async def test_tls_with_client_certificate(
    tmp_path: Path, fresh_mosquitto: Callable[..., PrivateMosquitto]
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("puhui test CA", ca_key, None, ca=True)
    ca_file, _ = _write(pki / "ca", ca, ca_key)
    server_crt, server_key_file = _write(pki / "server", _cert("broker", server_key, (ca.subject, ca_key),
                                                               ip="127.0.0.1"), server_key)  # fmt: skip
    client_crt, client_key_file = _write(
        pki / "client", _cert("gw-tls", client_key, (ca.subject, ca_key)), client_key
    )
    [tls_port] = free_ports(1)
    broker = fresh_mosquitto(extra_config=(
        f"listener {tls_port} 127.0.0.1\ncafile {ca_file}\ncertfile {server_crt}\nkeyfile {server_key_file}\n"
        "require_certificate true\n"
    ))  # fmt: skip
    gw, keys = "gw-tls", make_keys(tmp_path / "keys")
    settings = evidence_settings(tmp_path / "state", keys, sealing=ONE)
    tls = TlsSettings(ca_file=ca_file, cert_file=client_crt, key_file=client_key_file)
    uplink = uplink_settings(broker.host, tls_port, keys, tls=tls)
    async with (
        subscriber(broker, tmp_path, keys, gw) as agg,  # the plain listener
        EvidencePipeline(settings, uplink, gateway_id=gw, key=keys.gateway, clock=ManualClock(T0)) as p,
    ):
        await p.submit([interval(0, 0)], SNAP)
        await eventually(lambda: p.status()["acks"] == 1, 15, "the ack over TLS")
        assert p.status()["connected"] == 1
        assert [b.header.seq for b in agg.batches(gw)] == [1]


def test_the_client_id_is_new_per_connection_so_no_one_can_take_it_over() -> None:
    """A predictable id (``puhui-gw-<id>``) let any client of the broker knock the gateway off
    by connecting with it (issue 16): the broker closes the older session with the same id."""
    from gateway.uplink import client_identifier

    ids = {client_identifier("gw-zjk-1") for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("puhui-gw-gw-zjk-1-") and len(i) <= 64 for i in ids)


async def test_garbage_and_replayed_rejects_do_not_stall_the_gateway(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    """Issue 16 item 3. Anyone on the broker can publish garbage on our batch topic (the
    aggregator then signs a reject naming no batch) and replay a reject it captured, even
    after the gateway restarted. Neither answers a batch in flight: the gateway ignores them
    and keeps sending at full rate, under the production reject backoff (10 s .. 600 s) and
    resend (60 s), which would stall it."""
    gw, keys = "gw-flooded", make_keys(tmp_path / "keys")
    settings = evidence_settings(tmp_path / "state", keys, sealing=ONE)
    slow = BackoffSettings(initial_s=10.0, max_s=600.0)
    uplink = uplink_settings(mosquitto.host, mosquitto.port, keys, resend_after_s=60.0, reject_backoff=slow)
    async with (
        subscriber(mosquitto, tmp_path, keys, gw, mode="reject") as agg,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as attacker,
    ):
        await attacker.subscribe(reject_topic(gw), qos=1)
        async with EvidencePipeline(
            settings, uplink, gateway_id=gw, key=keys.gateway, clock=ManualClock(T0)
        ) as p:
            await p.submit([interval(0, 0)], SNAP)  # rejected (not enrolled): the attacker captures it
            captured = await _first_payload(attacker)
            await eventually(lambda: p.status()["rejects"] == 1, 10, "the genuine reject")
        await attacker.unsubscribe(reject_topic(gw))
        agg.mode = "ack"
        # the gateway restarts: batch 1 is in flight again, the captured reject names it exactly
        async with EvidencePipeline(
            settings, uplink, gateway_id=gw, key=keys.gateway, clock=ManualClock(T0)
        ) as p:
            await eventually(lambda: p.status()["connected"] == 1, 10, "the uplink subscribed to its replies")
            for _ in range(50):  # garbage: the stand-in aggregator signs a reject with seq null for each
                await attacker.publish(batch_topic(gw), b"garbage\n", qos=1)
            for k in range(1, 11):
                await p.submit([interval(0, k)], SNAP)
                for _ in range(3):
                    await attacker.publish(reject_topic(gw), captured, qos=1)
            # the 11 batches get through well before any resend (60 s) or reject backoff (10 s+)
            await eventually(lambda: p.status()["outbox_depth_batches"] == 0, 8, "every batch acked")
            await eventually(lambda: agg.rejected >= 50, 20, "the stand-in to reject the garbage")
            await eventually(lambda: p.status()["unmatched_rejects"] >= 50 + 30, 20, str(p.status()))
            status = p.status()
            assert [b.header.seq for b in agg.batches(gw)] == list(range(1, 12))
    assert status["rejects"] == 0 and status["acks"] == 11


async def _first_payload(client: aiomqtt.Client) -> bytes:
    async with asyncio.timeout(10):
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                return message.payload
    raise AssertionError("no message")
