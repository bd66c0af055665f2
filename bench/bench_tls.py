"""What TLS costs per batch: sealed -> acked, over a plain and a secured broker, in one run.

Run: ``.venv/bin/python -m bench.bench_tls``. Starts two private Mosquitto brokers on free
loopback ports (one anonymous plain text, one with the site's TLS listener, client
certificates and access list from ``puhui broker``) and one InfluxDB. For each broker, the
real gateway pipeline (sealer, outbox, uplink) sends batches one at a time to the real
aggregator (verify, store, sign the ack), which sits behind the same broker: the time from
``submit`` to the ack removing the batch from the outbox, median and p95 over the batches.
The connections are long-lived (a TLS handshake per connection, not per batch), as in use.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.config import AggregatorConfig
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from bench.common import Figure
from common.clock import SystemClock
from common.tls import TlsSettings
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.keys import generate_key, public_key_pem, save_private_key
from evidence.records import IntervalRecord
from gateway.evidence_config import EvidenceSettings, OutboxSettings, SealingSettings, UplinkSettings
from gateway.pipeline import EvidencePipeline
from puhui.broker import BrokerSite, listener_text, write_broker_config
from puhui.pki import PkiLayout, issue_client, issue_server, make_ca
from testbed.servers import PrivateInfluxDB, PrivateMosquitto, mqtt_connack_ok

GATEWAY, AGGREGATOR = "gw-bench", "aggregator"
RECORDS = 100  # intervals per batch
BATCHES = 60
WARMUP = 5


def _records(k: int) -> list[IntervalRecord]:
    start = int(time.time()) // 900 * 900 - 86400 * 30 + k * 900
    return [
        IntervalRecord(
            f"m{m:03d}",
            "energy_import",
            "kWh",
            start,
            start + 900,
            "counter",
            1000.0 + k,
            start * 1000 - 500,
            1001.0 + k,
            start * 1000 + 899_500,
            1.0,
        )
        for m in range(RECORDS)
    ]


async def _measure(
    work: Path, broker: PrivateMosquitto, influx: PrivateInfluxDB, tls: PkiLayout | None
) -> list[float]:
    gw_key, agg_key = generate_key(), generate_key()
    save_private_key(gw_key, work / "gw.pem")
    (work / "agg.pub.pem").write_bytes(public_key_pem(agg_key.public_key))
    mqtt: dict[str, Any] = {"host": broker.host, "port": broker.port, "client_id": f"agg-{work.name}"}
    uplink: dict[str, Any] = {"host": broker.host, "port": broker.port,
                              "aggregator_public_key": str(work / "agg.pub.pem"), "inflight": 1}  # fmt: skip
    if tls is None:
        mqtt["insecure"] = True
        uplink["tls"] = None
    else:
        mqtt["tls"] = {"ca_file": str(tls.ca_cert), "cert_file": str(tls.client_cert(AGGREGATOR)),
                       "key_file": str(tls.client_key(AGGREGATOR))}  # fmt: skip
        uplink["tls"] = TlsSettings(ca_file=str(tls.ca_cert), cert_file=str(tls.client_cert(GATEWAY)),
                                    key_file=str(tls.client_key(GATEWAY)))  # fmt: skip
    config = AggregatorConfig.model_validate(
        {"mqtt": mqtt, "store": {"path": str(work / "agg.sqlite3")}, "key_file": str(work / "unused.pem"),
         "influx": {"url": influx.url, "database": f"bench_{work.name}"}}
    )  # fmt: skip
    store = SQLiteEvidenceStore(config.store.path)
    meters = [EnrolledMeter(f"m{m:03d}", "clean_heating", 10.0, "1") for m in range(RECORDS)]
    doc = make_enrolment(gw_key, gateway=GATEWAY, site="s", meters=meters, created_ms=0)
    GatewayRegistry(store).enrol(doc.to_bytes(), at_ms=0)
    store.close()
    evidence = EvidenceSettings(key_file=str(work / "gw.pem"), state_dir=str(work / "state"),
                                sealing=SealingSettings(max_records=RECORDS, max_age_s=3600),
                                outbox=OutboxSettings(cap_bytes=64 * 1024 * 1024))  # fmt: skip
    times: list[float] = []
    async with (
        Aggregator(config, key=agg_key) as agg,
        EvidencePipeline(
            evidence, UplinkSettings(**uplink), gateway_id=GATEWAY, key=gw_key, clock=SystemClock()
        ) as pipeline,  # fmt: skip
    ):
        async with asyncio.timeout(30):
            await agg.connected.wait()
        for k in range(WARMUP + BATCHES):
            t0 = time.perf_counter()
            await pipeline.submit(_records(k), {"version": 1, "interval_s": 900, "series": []})
            await _until(lambda: pipeline.status()["outbox_depth_batches"] == 0)
            if k >= WARMUP:
                times.append(time.perf_counter() - t0)
    return times


async def _until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not done():  # noqa: ASYNC110 - the outbox has no event to wait on
            await asyncio.sleep(0.0005)


def _secured_broker(root: Path) -> tuple[PrivateMosquitto, PkiLayout]:
    ca = make_ca(root / "pki")
    issue_server(ca)
    for identity in (AGGREGATOR, GATEWAY):
        issue_client(ca, identity)
    site = BrokerSite(pki=root / "pki", gateways=(GATEWAY,), aggregator=AGGREGATOR)
    files = write_broker_config(site, root / "broker")
    layout = PkiLayout(root / "pki")
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.load_cert_chain(layout.client_cert(AGGREGATOR), layout.client_key(AGGREGATOR))
    broker = PrivateMosquitto(
        root / "mosquitto",
        listener=lambda port, host: listener_text(site, files, port=port, bind=host),
        ready_probe=functools.partial(mqtt_connack_ok, ssl_context=context),
    )
    return broker.start(), layout


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="puhui-bench-tls-") as tmp:
        root = Path(tmp)
        with PrivateInfluxDB(root / "influxd") as influx, PrivateMosquitto(root / "plain") as plain:
            secured, layout = _secured_broker(root / "secure")
            try:
                (root / "p").mkdir()
                (root / "t").mkdir()
                plain_s = asyncio.run(_measure(root / "p", plain, influx, None))
                tls_s = asyncio.run(_measure(root / "t", secured, influx, layout))
            finally:
                secured.close()
    figures = []
    for label, pick in (("median", statistics.median), ("p95", lambda xs: sorted(xs)[int(0.95 * len(xs))])):
        figures.append(
            Figure(
                f"uplink: batch of {RECORDS} sealed -> acked over TLS with client certificates, {label}",
                pick(tls_s) * 1000,
                "ms",
                f"the same over plain MQTT ({pick(plain_s) * 1000:.2f} ms)",
                pick(plain_s) * 1000,
            )
        )
    return figures


if __name__ == "__main__":
    for f in run():
        ratio = "" if f.ratio is None else f"  ratio {f.ratio:.2f}"
        print(f"{f.name}: {f.value:.2f} {f.unit} vs {f.compared_with}{ratio}")
