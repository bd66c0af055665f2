"""Writes the schema-1 state directory that tests/gateway/test_outbox_upgrade.py opens.

Written by the store as it was before the record log (commit f71bc90, schema 1: records in
``pending``, whole batch bytes in ``batches``), so run it in a checkout of that commit::

    git worktree add /tmp/puhui-v1 f71bc90
    cp tests/gateway/outbox_v1_state/make.py /tmp/puhui-v1/
    cd /tmp/puhui-v1 && python make.py OUT_DIR

Six batches of 10 records are sealed under a cap of 4 batches (drop_oldest: a drop batch),
then, in a second process life that ends in SIGKILL (so ``evidence.sqlite-wal`` holds the
last commits): 3 pending records in two submits (two snapshots, two times), a send and a reject counted
on the oldest batch. ``manifest.json`` holds what the old code stored: each batch's exact
bytes as SHA-256, the pending records, the snapshot, the chain head.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

from common.clock import ManualClock
from evidence.keys import generate_key, save_private_key
from evidence.records import encode_record
from gateway.evidence_config import EvidenceSettings, OutboxSettings, SealingSettings
from gateway.pipeline import EvidencePipeline
from gateway.store import EvidenceStore
from tests.gateway.evidence_helpers import T0, interval

GW = "gw-v1"


async def seal(out: Path) -> None:
    key = generate_key()
    save_private_key(key, out / "gateway.pem")
    settings = EvidenceSettings(
        key_file=str(out / "gateway.pem"), state_dir=str(out / "state"),
        sealing=SealingSettings(max_records=10, max_age_s=3600),
        outbox=OutboxSettings(cap_batches=4, policy="drop_oldest"),
    )  # fmt: skip
    clock = ManualClock(T0)
    async with EvidencePipeline(settings, None, gateway_id=GW, key=key, clock=clock) as p:
        for k in range(6):
            await p.submit([interval(m, k) for m in range(10)], {"version": 1, "fixture": "v1", "k": k})
            await clock.advance(900)


def finish(out: Path) -> None:
    store = EvidenceStore.open(out / "state", gateway_id=GW)
    t = (T0 + 6 * 900) * 1000
    store.add_pending([encode_record(interval(m, 6)) for m in range(2)], {"version": 1, "k": 6}, t)
    snapshot = {"version": 1, "fixture": "v1", "k": 7, "nested": [1.5, None, "x"]}
    store.add_pending([encode_record(interval(2, 6))], snapshot, t + 60_000)
    first = store.outbox()[0].seq
    store.mark_sent(first, t + 60_001)
    store.record_reject(first, "internal", t + 60_002)
    batches = [
        {"seq": b.seq, "kind": b.kind, "header_sha256": b.header_sha256, "size": b.size,
         "records": b.records, "sha256": hashlib.sha256(store.batch_data(b.seq)).hexdigest()}
        for b in store.outbox()
    ]  # fmt: skip
    manifest = {
        "gateway": GW,
        "chain_head": list(store.chain_head()),
        "batches": batches,
        "delivery": {str(first): store.delivery(first)},
        "pending": [r.decode() for _, r in store.pending(100)],
        "oldest_pending_ms": store.oldest_pending_ms(),
        "builder_state": store.builder_state(),
        "stats": dataclasses.asdict(store.stats()),
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    with path.open("rb") as f:
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)  # the store is not closed: its last commits stay in the WAL


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True)
    asyncio.run(seal(target))
    finish(target)
