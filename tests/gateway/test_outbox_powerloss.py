"""Power cuts at any step of the record log, emulated: what was not synced may be lost or torn.

A model stands between the record log and the file system: it remembers, per file, the
bytes as of its last ``fdatasync`` and the writes since, and the directory's names as of
its last ``fsync`` and the renames, creations and deletions since. At a random step the
"power" goes (the step raises :class:`PowerCut`); the log directory is then rewritten as
a disk could hold it afterwards: each file its synced bytes plus a prefix of the later
writes, the last one torn at a random byte; the directory its synced names plus a prefix
of the later changes. SQLite keeps what it committed (``synchronous=FULL``; a cut never
falls inside one of its transactions here). Then the store is opened again and must hold
exactly what the operations that returned committed, plus at most the one cut short,
whole; the workload goes on from there. At the end every record arrived once and no
sequence number was published with two contents. The seed is printed; ``POWER_SEED=<seed>``
replays a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common.clock import ManualClock
from evidence.batch import parse_batch
from evidence.keys import generate_key
from gateway import record_log
from gateway.evidence_config import OutboxSettings, SealingSettings
from gateway.sealer import Sealer
from gateway.store import LOG_DIR, EvidenceStore

GW = "gw-power"
T0 = 1_767_225_600
CUTS = 60
TARGETS = [None, "pwrite", "fdatasync", "fsync", "rename", None]  # None: a step of any kind
KEY = generate_key()


class PowerCut(BaseException):
    """The power went: nothing runs after this (not caught by any ``except Exception``)."""


@dataclass
class Model:
    """What the disk is sure to hold of the log directory, and what it may hold."""

    directory: Path
    cut_at: int  # the power goes at this step (of kind ``target``, or of any kind)
    target: str | None = None
    steps: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    cut_in: str = ""  # the kind of step the power went at
    synced: dict[int, bytes] = field(default_factory=dict)  # inode -> bytes at its last sync
    writes: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # since that sync
    names: dict[str, int] = field(default_factory=dict)  # as of the last directory sync
    changes: list[tuple[str | None, str | None, int]] = field(default_factory=list)  # (from, to, inode)

    @classmethod
    def of(cls, directory: Path, cut_at: int, target: str | None) -> Model:
        """The model of a directory whose contents are all synced now."""
        model = cls(directory, cut_at, target)
        for path in directory.iterdir():
            ino = path.stat().st_ino
            model.names[path.name] = ino
            model.synced[ino] = path.read_bytes()
        return model

    def step(self, kind: str) -> None:
        self.steps += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if (self.target is None and self.steps == self.cut_at) or (
            kind == self.target and self.counts[kind] == self.cut_at
        ):
            self.cut_in = kind
            raise PowerCut

    # -- the functions the record log calls --------------------------------------------------

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT:
            self.step("create")
        fd = os.open(path, flags, mode)
        if flags & os.O_CREAT:
            self.changes.append((None, Path(path).name, os.fstat(fd).st_ino))
        return fd

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self.step("pwrite")
        self.writes.setdefault(os.fstat(fd).st_ino, []).append((offset, bytes(data)))
        return os.pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self.step("fdatasync")
        os.fdatasync(fd)
        ino = os.fstat(fd).st_ino
        self.synced[ino] = os.pread(fd, os.fstat(fd).st_size, 0)
        self.writes[ino] = []

    def fsync(self, fd: int) -> None:
        self.step("fsync")
        os.fsync(fd)
        if os.path.samestat(os.fstat(fd), os.stat(self.directory)):
            self.names = {p.name: p.stat().st_ino for p in self.directory.iterdir()}
            self.changes = []

    def rename(self, src: Path, dst: Path) -> None:
        self.step("rename")
        ino = src.stat().st_ino
        os.rename(src, dst)
        self.changes.append((src.name, dst.name, ino))  # atomic: one name or the other

    def unlink(self, path: Path) -> None:
        self.step("unlink")
        ino = path.stat().st_ino
        os.unlink(path)
        self.changes.append((path.name, None, ino))

    # -- after the cut ----------------------------------------------------------------------

    def leave_on_disk(self, rng: random.Random) -> None:
        """Rewrite the directory as the disk may hold it after the cut."""
        names = dict(self.names)
        for old, new, ino in self.changes[: rng.randint(0, len(self.changes))]:
            if old is not None:
                names.pop(old, None)
            if new is not None:
                names[new] = ino
        contents: dict[int, bytes] = {}
        for name in sorted(names):  # a seed gives the same disk whatever the inode numbers
            if names[name] not in contents:
                contents[names[name]] = self._content(names[name], rng)
        for path in self.directory.iterdir():
            os.unlink(path)
        for name, ino in names.items():
            (self.directory / name).write_bytes(contents[ino])

    def _content(self, ino: int, rng: random.Random) -> bytes:
        data = bytearray(self.synced.get(ino, b""))
        later = self.writes.get(ino, [])
        kept = later[: rng.randint(0, len(later))]
        for i, (offset, chunk) in enumerate(kept):
            if i == len(kept) - 1:
                chunk = chunk[: rng.randint(0, len(chunk))]  # torn
            data.extend(bytes(max(0, offset - len(data))))
            data[offset : offset + len(chunk)] = chunk
        return bytes(data)


class _Os:
    def __init__(self, **replaced: Callable[..., Any]) -> None:
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced.get(name) or getattr(os, name)


def install(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Os(open=model.open, pwrite=model.pwrite, fdatasync=model.fdatasync, fsync=model.fsync)
    monkeypatch.setattr(record_log, "os", fake)
    monkeypatch.setattr(Path, "rename", lambda src, dst: model.rename(src, Path(dst)))
    monkeypatch.setattr(Path, "unlink", lambda path, missing_ok=False: model.unlink(path))


def record(n: int) -> bytes:
    return json.dumps({"n": n, "pad": "q" * (n % 23)}, separators=(",", ":")).encode()


@dataclass
class World:
    """What the operations that returned did, across all cuts."""

    submitted: int = 0  # the builder state of the last submit that returned
    trying: int = 0  # the builder state of the submit under way, if one is
    published: dict[int, bytes] = field(default_factory=dict)  # after the seal committed
    acked: set[int] = field(default_factory=set)


def work(store: EvidenceStore, sealer: Sealer, world: World, rng: random.Random, steps: int) -> None:
    for _ in range(steps):
        n = world.submitted
        k = rng.randint(0, 9)
        world.trying = n + k
        store.add_pending([record(i) for i in range(n, n + k)], {"next": n + k}, T0 * 1000 + n)
        world.submitted = n + k
        sealer.seal_due()
        for b in store.outbox():
            world.published.setdefault(b.seq, store.batch_data(b.seq))
        for b in store.outbox()[: rng.randint(0, 2)]:
            assert store.ack(b.seq, b.header_sha256, 0)
            world.acked.add(b.seq)


def open_store(state: Path, *, drain: bool = False) -> tuple[EvidenceStore, Sealer]:
    store = EvidenceStore.open(state, gateway_id=GW)
    clock = ManualClock(T0 + (7200 if drain else 0))
    sealer = Sealer(store, key=KEY, gateway_id=GW, clock=clock, sealing=SealingSettings(max_records=6),
                    outbox=OutboxSettings(cap_bytes=1 << 30))  # fmt: skip
    return store, sealer


def check(store: EvidenceStore, world: World) -> None:
    """The store holds what returned, plus at most the submit cut short, whole."""
    state = (store.builder_state() or {"next": 0})["next"]
    assert state in (world.submitted, world.trying), (state, world.submitted, world.trying)
    world.submitted = world.trying = state
    for b in store.outbox():
        if b.seq in world.published:
            assert store.batch_data(b.seq) == world.published[b.seq], f"seq {b.seq} changed"
        assert b.seq not in world.acked
    delivered = [r for seq in sorted(world.published) if seq not in {b.seq for b in store.outbox()}
                 for r in parse_batch(world.published[seq]).records]  # fmt: skip
    held = [r for b in store.outbox() for r in parse_batch(store.batch_data(b.seq)).records]
    pending = [r for _, r in store.pending(1 << 20)]
    assert delivered + held + pending == [record(i) for i in range(state)]


def test_a_power_cut_at_any_step_loses_nothing_committed_and_forks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_log, "SEGMENT_BYTES", 1536)  # rotation and reuse every few submits
    state = tmp_path / "state"
    seed = int(os.environ.get("POWER_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    print(f"power-cut seed {seed}")
    world = World()
    store, sealer = open_store(state)
    work(store, sealer, world, rng, 5)  # the log directory exists from here on
    store.close()
    cut_in: list[str] = []
    for _ in range(CUTS):
        store, sealer = open_store(state)
        check(store, world)
        target = TARGETS[len(cut_in) % len(TARGETS)]
        model = Model.of(state / LOG_DIR, cut_at=rng.randint(1, 120 if target is None else 6), target=target)
        with monkeypatch.context() as m:
            install(model, m)
            with pytest.raises(PowerCut):
                work(store, sealer, world, rng, 1000)
            store.close()
        model.leave_on_disk(rng)
        cut_in.append(model.cut_in)
    store, sealer = open_store(state, drain=True)
    check(store, world)
    sealer.seal_due()
    for b in store.outbox():
        world.published.setdefault(b.seq, store.batch_data(b.seq))
        assert store.ack(b.seq, b.header_sha256, 0)
    assert store.pending_count() == 0
    store.close()
    seqs = sorted(world.published)
    assert seqs == list(range(1, len(seqs) + 1))
    records = [r for seq in seqs for r in parse_batch(world.published[seq]).records]
    assert records == [record(i) for i in range(world.submitted)]
    digests = {hashlib.sha256(d).hexdigest() for d in world.published.values()}
    assert len(digests) == len(seqs) and world.submitted > 200
    print("cut in:", {kind: cut_in.count(kind) for kind in sorted(set(cut_in))})
    assert {"pwrite", "fdatasync", "fsync", "rename"} <= set(cut_in)  # every kind of step was cut
