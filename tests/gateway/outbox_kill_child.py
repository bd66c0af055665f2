"""The outbox under kill -9: a child process that submits, seals, "publishes" and acks in a
tight loop, run and killed by tests/gateway/test_outbox_kill.py.

It resumes from the store's builder snapshot (``{"next": N}``: the records 0..N-1 were
submitted), submits 1-12 records at a time (record n is ``{"n":n,...}``), seals batches of
at most 7, "publishes" each batch once its seal has committed (and everything in the
outbox again at start, as the uplink does on a new connection) and acks published batches
at random. What it published and acked goes to a journal, one ``os.write`` per line (a
kill cannot tear a line): ``pub <seq> <header sha256> <prev> <sha256 of the bytes> <first
n> <last n>`` and ``ack <seq>``. Segments are 2 KiB, so rotation and reuse of spent segments
happen all the time.

``--crash POINT:K`` kills the process itself (SIGKILL) at the K-th time it reaches POINT:

    frame-half       half of a log frame written
    before-sync      a log frame written, not synced
    seal-uncommitted inside the seal transaction, before its commit
    seal-committed   the seal committed, nothing published yet
    ack-committed    an ack committed, its spent segments not retired yet
    renamed          a segment renamed (spare -> new segment, or spent -> spare)

``--drain`` submits nothing: it seals everything pending, publishes and acks every batch,
prints ``drained <next>`` and exits 0.

    python -m tests.gateway.outbox_kill_child --state-dir D --key K --journal J [--seed S]
        [--crash POINT:K] [--drain]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.clock import ManualClock
from evidence.batch import parse_batch
from evidence.keys import load_private_key
from gateway import record_log
from gateway.evidence_config import OutboxSettings, SealingSettings
from gateway.sealer import Sealer
from gateway.store import EvidenceStore

GATEWAY = "gw-outbox-kill"
T0 = 1_767_225_600


def record(n: int) -> bytes:
    return json.dumps({"n": n, "pad": "p" * (n % 29)}, separators=(",", ":")).encode()


class Crash:
    """SIGKILL this process at the K-th arrival at a named point."""

    def __init__(self, spec: str | None) -> None:
        self.point, k = spec.split(":") if spec else ("", "0")
        self.left = int(k)

    def at(self, point: str) -> None:
        if point == self.point:
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), signal.SIGKILL)


def install(crash: Crash, store: EvidenceStore) -> None:
    """Wrap the functions the crash points live in."""
    real_pwrite, real_sync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if crash.point == "frame-half" and bytes(data[:4]) in (b"PRF1", b"puhu"):  # not zeros ahead
            crash.left -= 1
            if crash.left == 0:
                real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        crash.at("before-sync")
        real_sync(fd)

    record_log.os = _Os(pwrite=pwrite, fdatasync=fdatasync)  # type: ignore[attr-defined]
    real_head = store.set_chain_head

    def set_chain_head(seq: int, digest: str) -> None:
        real_head(seq, digest)
        crash.at("seal-uncommitted")

    store.set_chain_head = set_chain_head  # type: ignore[method-assign]
    real_retire = record_log.RecordLog._retire
    real_start = record_log.RecordLog._start_segment

    def retire(self: record_log.RecordLog, path: Path) -> None:
        real_retire(self, path)
        crash.at("renamed")

    def start_segment(self: record_log.RecordLog, number: int, frame: bytes) -> Path:
        spare = self.directory / record_log.SPARE
        if spare.exists():
            real_rename = Path.rename

            def rename(src: Path, dst: Any) -> Any:
                out = real_rename(src, dst)
                crash.at("renamed")
                return out

            Path.rename = rename  # type: ignore[method-assign]
            try:
                return real_start(self, number, frame)
            finally:
                Path.rename = real_rename  # type: ignore[method-assign]
        return real_start(self, number, frame)

    record_log.RecordLog._retire = retire  # type: ignore[method-assign]
    record_log.RecordLog._start_segment = start_segment  # type: ignore[method-assign]
    real_collect = record_log.RecordLog.collect

    def collect(self: record_log.RecordLog, keep_from: int) -> None:
        crash.at("ack-committed")
        real_collect(self, keep_from)

    record_log.RecordLog.collect = collect  # type: ignore[method-assign]


class _Os:
    """``os`` for the record log with some functions replaced."""

    def __init__(self, **replaced: Callable[..., Any]) -> None:
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced.get(name) or getattr(os, name)


class Journal:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.published: set[int] = set()

    def line(self, text: str) -> None:
        os.write(self._fd, (text + "\n").encode())

    def publish(self, store: EvidenceStore) -> None:
        for b in store.outbox():
            if b.seq in self.published:
                continue
            data = store.batch_data(b.seq)
            batch = parse_batch(data)
            ns = [json.loads(r)["n"] for r in batch.records]
            self.line(f"pub {b.seq} {b.header_sha256} {batch.header.prev} {hashlib.sha256(data).hexdigest()} "
                      f"{ns[0]} {ns[-1]} {len(ns)}")  # fmt: skip
            self.published.add(b.seq)


def main(args: argparse.Namespace) -> int:
    record_log.SEGMENT_BYTES = 2048
    rng = random.Random(args.seed)
    crash = Crash(args.crash)
    store = EvidenceStore.open(args.state_dir, gateway_id=GATEWAY)
    install(crash, store)
    # Each run seals at its own time (a resealed batch differs, as in life); draining: every
    # pending record is due.
    clock = ManualClock(T0 + (7200 if args.drain else args.seed % 1000))
    sealing = SealingSettings(max_records=7, max_age_s=3600)
    sealer = Sealer(store, key=load_private_key(args.key), gateway_id=GATEWAY, clock=clock,
                    sealing=sealing, outbox=OutboxSettings(cap_bytes=1 << 30))  # fmt: skip
    journal = Journal(Path(args.journal))
    journal.publish(store)  # a new connection: everything unacknowledged goes again
    state = store.builder_state() or {"next": 0}
    n = int(state["next"])
    print("ready", flush=True)
    while not args.drain:
        k = rng.randint(1, 12)
        store.add_pending([record(i) for i in range(n, n + k)], {"next": n + k}, T0 * 1000 + n)
        n += k
        sealer.seal_due()
        crash.at("seal-committed")
        journal.publish(store)
        if journal.published and rng.random() < 0.5:
            ack_some(store, journal, rng)
    sealer.seal_due()
    journal.publish(store)
    for b in store.outbox():
        assert store.ack(b.seq, b.header_sha256, 0)
        journal.line(f"ack {b.seq}")
    assert store.outbox() == [] and store.pending_count() == 0
    print(f"drained {n}", flush=True)
    store.close()
    return 0


def ack_some(store: EvidenceStore, journal: Journal, rng: random.Random) -> None:
    for b in store.outbox()[: rng.randint(1, 3)]:
        if b.seq in journal.published and store.ack(b.seq, b.header_sha256, 0):
            journal.line(f"ack {b.seq}")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for name in ("--state-dir", "--key", "--journal"):
        p.add_argument(name, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crash")
    p.add_argument("--drain", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse(sys.argv[1:])))
