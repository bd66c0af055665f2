"""A stand-in aggregator for gateway tests, until the real ingest exists.

It subscribes to the batch topic of each gateway it knows, verifies every batch with
``evidence.verify_batch`` and the chain with ``evidence.ChainTracker``, stores new batches
in its own SQLite database (committed, ``synchronous=FULL``) and only then publishes a
signed ``Ack`` (``stored``, or ``duplicate`` for a batch it already has). Forks and
batches that do not verify get a signed ``Reject``. ``mode`` lets a test make it silent
(store, no ack) or reject everything with a given reason. It reconnects by itself when
the broker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import aiomqtt

from evidence.batch import SealedBatch, parse_batch, verify_batch
from evidence.chain import ChainTracker, ChainVerdict
from evidence.errors import BadSignature, CountMismatch, KeyMismatch, MalformedBatch, RootMismatch
from evidence.keys import GatewayKey, PublicKey
from evidence.records import Record, decode_record
from evidence.wire import Ack, Reject, RejectReason, ack_topic, batch_topic, encode_reply, reject_topic

Mode = Literal["ack", "silent", "reject"]
_FAILURES: list[tuple[type[Exception], RejectReason]] = [
    (MalformedBatch, RejectReason.MALFORMED),
    (KeyMismatch, RejectReason.KEY_MISMATCH),
    (BadSignature, RejectReason.BAD_SIGNATURE),
    (RootMismatch, RejectReason.MERKLE_MISMATCH),
    (CountMismatch, RejectReason.MERKLE_MISMATCH),
]


async def eventually(
    predicate: Callable[[], bool], deadline_s: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true, failing after ``deadline_s`` seconds (no fixed sleeps)."""
    try:
        async with asyncio.timeout(deadline_s):
            while not predicate():  # noqa: ASYNC110 - gateway-side state has no event to wait on
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {deadline_s} s waiting for {what}") from None


class AckSubscriber:
    """Verify, store durably, then acknowledge: what the real aggregator ingest will do."""

    def __init__(
        self,
        host: str,
        port: int,
        db_path: Path,
        *,
        gateway_keys: Mapping[str, PublicKey],
        aggregator_key: GatewayKey,
        mode: Mode = "ack",
        reject_reason: RejectReason = RejectReason.NOT_ENROLLED,
    ) -> None:
        self.host, self.port = host, port
        self.gateway_keys = dict(gateway_keys)
        self.aggregator_key = aggregator_key
        self.mode: Mode = mode
        self.reject_reason = reject_reason
        self._db = sqlite3.connect(db_path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (gateway TEXT, seq INTEGER, header_sha256 TEXT, data BLOB,"
            " PRIMARY KEY (gateway, seq))"
        )
        self._chains: dict[str, ChainTracker] = {gw: ChainTracker() for gw in self.gateway_keys}
        for gw, data in self._db.execute("SELECT gateway, data FROM batches ORDER BY gateway, seq"):
            batch = parse_batch(bytes(data))
            self._chains[gw].observe(batch.header, batch.header_sha256)
        self.received = 0
        self.acked = 0
        self.duplicates = 0
        self.rejected = 0
        self.forks = 0
        self.connected = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AckSubscriber:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._run(), name="ack-subscriber")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._group is not None and self._task is not None
        self._task.cancel()
        try:
            await self._group.__aexit__(None, None, None)
        finally:
            self._db.close()

    # -- what arrived ----------------------------------------------------------------------

    def batches(self, gateway: str) -> list[SealedBatch]:
        rows = self._db.execute("SELECT data FROM batches WHERE gateway = ? ORDER BY seq", (gateway,))
        return [parse_batch(bytes(d)) for (d,) in rows]

    def records(self, gateway: str) -> list[Record]:
        return [decode_record(line) for b in self.batches(gateway) for line in b.records]

    # -- MQTT --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=f"ack-sub-{id(self)}") as client:
                    for gw in self.gateway_keys:
                        await client.subscribe(batch_topic(gw), qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        await self._handle(client, str(message.topic), message.payload)
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.1)  # reconnect pause while the broker is away

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: object) -> None:
        self.received += 1
        gateway = topic.split("/")[2]
        data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
        reply = self._verdict(gateway, data)
        if reply is None:
            return
        target = ack_topic(gateway) if isinstance(reply, Ack) else reject_topic(gateway)
        await client.publish(target, encode_reply(reply, self.aggregator_key), qos=1)

    def _verdict(self, gateway: str, data: bytes) -> Ack | Reject | None:
        now = int(time.time() * 1000)
        try:
            batch = verify_batch(data, self.gateway_keys[gateway]).sealed
        except (MalformedBatch, KeyMismatch, BadSignature, RootMismatch, CountMismatch) as exc:
            reason = next(r for kind, r in _FAILURES if isinstance(exc, kind))
            self.rejected += 1
            return Reject(gateway, None, None, reason.value, str(exc), now)
        seq, digest = batch.header.seq, batch.header_sha256
        if self.mode == "reject":
            self.rejected += 1
            return Reject(gateway, seq, digest, self.reject_reason.value, "test subscriber rejects", now)
        step = self._chains[gateway].check(batch.header, digest)
        if step.verdict is ChainVerdict.FORK:
            self.forks += 1
            return Reject(gateway, seq, digest, RejectReason.FORK.value, step.reason, now)
        if step.verdict is ChainVerdict.DUPLICATE:
            self.duplicates += 1
            return None if self.mode == "silent" else Ack(gateway, seq, digest, "duplicate", now)
        with contextlib.closing(self._db.cursor()) as cur:
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("INSERT INTO batches VALUES (?, ?, ?, ?)", (gateway, seq, digest, data))
            cur.execute("COMMIT")  # durable before the ack
        self._chains[gateway].observe(batch.header, digest)
        if self.mode == "silent":
            return None
        self.acked += 1
        return Ack(gateway, seq, digest, "stored", now)
