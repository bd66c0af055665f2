"""``puhui demo``: the chain on one machine, on real servers.

This is the foundation's demo: it shows the evidence path across a real Mosquitto and a
real InfluxDB (private, on free loopback ports). A gateway seals signed, hash-chained
batches of interval records and publishes them over MQTT; an aggregator verifies each
batch (signature, Merkle root, chain), acknowledges it with a signed ack, writes the
intervals to InfluxDB and reads them back with InfluxQL; finally one record is verified on
its own from its inclusion proof. The intervals are synthetic until the simulated site,
gateway acquisition and aggregator land (issues 4-9), which replace this demo.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiomqtt

from aggregator.influx import InfluxV1Client, Point, encode_points
from evidence import (
    ChainTracker,
    IntervalRecord,
    Stats,
    encode_record,
    generate_key,
    seal_batch,
    verify_batch,
)
from evidence.batch import GENESIS_PREV, SealedBatch, verify_record
from evidence.keys import GatewayKey
from evidence.wire import Ack, ack_topic, batch_subscription, batch_topic, decode_reply, encode_reply
from puhui.servers import PrivateInfluxDB, PrivateMosquitto

GATEWAY = "demo-gw-01"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, default=12, help="batches to seal and send")
    parser.add_argument("--per-batch", type=int, default=96, help="interval records per batch")
    parser.set_defaults(func=main)


def synthetic_batches(key: GatewayKey, batches: int, per_batch: int) -> list[SealedBatch]:
    """Counter intervals of 8 meters whose deltas chain exactly (synthetic data)."""
    out, prev, counters = [], GENESIS_PREV, [1000.0 + 100 * m for m in range(8)]
    for seq in range(1, batches + 1):
        records = []
        for i in range(per_batch):
            slot, meter = divmod((seq - 1) * per_batch + i, 8)
            start = T0 + 900 * slot
            delta = round(0.25 + 0.125 * ((slot + meter) % 7), 3)
            rec = IntervalRecord(
                f"meter-{meter}", "energy_import", "kWh", start, start + 900, "counter",
                counters[meter], start * 1000 - 1500, counters[meter] + delta, (start + 900) * 1000 - 1500,
                delta, Stats("W", 0.0, delta * 4000, delta * 8000), 90, 90,
            )  # fmt: skip
            counters[meter] += delta
            records.append(encode_record(rec))
        b = seal_batch(
            records, key=key, gateway=GATEWAY, seq=seq, prev=prev, created_ms=int(time.time() * 1000)
        )
        out.append(b)
        prev = b.header_sha256
    return out


async def aggregator(
    broker: PrivateMosquitto,
    influx: InfluxV1Client,
    keys: tuple[GatewayKey, GatewayKey],
    expected: int,
    ready: asyncio.Event,
) -> list[int]:
    """Verify, chain-check, store in InfluxDB, then ack: returns accepted sequence numbers."""
    (gw_key, agg_key), chain, accepted = keys, ChainTracker(), []
    async with aiomqtt.Client(broker.host, broker.port, identifier="demo-aggregator") as client:
        await client.subscribe(batch_subscription(), qos=1)
        print("aggregator: subscribed; waiting for batches")
        ready.set()
        async for message in client.messages:
            verified = verify_batch(bytes(message.payload), gw_key.public_key)
            step = chain.observe(verified.header, verified.sealed.header_sha256)
            points = [_point(r) for r in verified.sealed.records]
            await influx.write(encode_points(points))
            ack = Ack(
                GATEWAY, verified.header.seq, verified.sealed.header_sha256, "stored", int(time.time() * 1000)
            )
            await client.publish(ack_topic(GATEWAY), encode_reply(ack, agg_key), qos=1)
            accepted.append(verified.header.seq)
            print(
                f"aggregator: {verified.header.label} verified ({verified.header.count} records, "
                f"{step.verdict.value}), written, acked"
            )
            if len(accepted) == expected:
                return accepted
    return accepted


def _point(record: bytes) -> Point:
    r = json.loads(record)
    return Point(
        "intervals",
        {"meter": r["meter"], "quantity": r["quantity"]},
        {"delta": r["delta"], "counter_end": r["counter_end"]},
        r["end"] * 1_000_000_000,
    )


async def gateway(
    broker: PrivateMosquitto, batches: list[SealedBatch], agg_key: GatewayKey, ready: asyncio.Event
) -> set[int]:
    acked: set[int] = set()
    async with aiomqtt.Client(broker.host, broker.port, identifier=GATEWAY) as client:
        await client.subscribe(ack_topic(GATEWAY), qos=1)
        await ready.wait()
        for b in batches:
            await client.publish(batch_topic(GATEWAY), b.to_bytes(), qos=1)
        async for message in client.messages:
            reply = decode_reply(bytes(message.payload), agg_key.public_key)
            acked.add(reply.seq or 0)
            if len(acked) == len(batches):
                return acked
    return acked


async def run(args: argparse.Namespace, workdir: Path) -> int:
    gw_key, agg_key = generate_key(), generate_key()
    batches = synthetic_batches(gw_key, args.batches, args.per_batch)
    with PrivateMosquitto(workdir / "mosquitto") as broker, PrivateInfluxDB(workdir / "influxdb") as influxd:
        print(f"mosquitto on {broker.host}:{broker.port}, influxd on {influxd.url}")
        async with InfluxV1Client(influxd.url, "puhui_demo") as influx:
            await influx.create_database()
            ready = asyncio.Event()
            async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
                agg = tg.create_task(aggregator(broker, influx, (gw_key, agg_key), len(batches), ready))
                gw = tg.create_task(gateway(broker, batches, agg_key, ready))
            print(
                f"gateway: {len(gw.result())} batches acknowledged; aggregator accepted {len(agg.result())}"
            )
            q = 'SELECT count("delta"), sum("delta") FROM "intervals"'
            series = await influx.query(q)
            count, total = series[0]["values"][0][1:3]
            sealed = [json.loads(r)["delta"] for b in batches for r in b.records]
            print(
                f"InfluxDB: {q}\n  -> {count} intervals, {total:.3f} kWh "
                f"(sealed: {len(sealed)} intervals, {sum(sealed):.3f} kWh)"
            )
    b = batches[3]
    proof = verify_batch(b, gw_key.public_key).proof(5)
    header = verify_record(b.records[5], proof, b.header_bytes, b.signature, gw_key.public_key)
    print(f"one record verified alone from its inclusion proof ({len(proof.path)} hashes) in {header.label}")
    return 0 if count == len(sealed) and abs(total - sum(sealed)) < 1e-6 else 1


def main(args: argparse.Namespace) -> int:
    print(__doc__.strip().splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="puhui-demo-") as tmp:
        return asyncio.run(run(args, Path(tmp)))
