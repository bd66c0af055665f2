"""kill -9 at named points and random moments of submit, seal and ack with the record log:
no record lost or delivered twice, no sequence number published with two contents.

The child (tests/gateway/outbox_kill_child.py) journals what it "publishes" (only after a
seal committed, and everything unacknowledged again at each start) and acks; the last run
drains the outbox. Then every sequence number from 1 on was published with one content
only, the chain links, and the published batches hold records 0..N-1 exactly once, N being
where the final builder snapshot says submitting stopped; the drained outbox is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from evidence.batch import GENESIS_PREV
from tests.gateway.evidence_helpers import make_keys

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
POINTS = ["frame-half", "before-sync", "seal-uncommitted", "seal-committed", "ack-committed", "renamed"]
RANDOM_KILLS = 12


@dataclass(frozen=True)
class Published:
    header_sha256: str
    prev: str
    data_sha256: str
    first: int
    last: int
    count: int


async def run_child(
    args: list[str], log: Path, *, kill_after: float | None, limit_s: float = 20.0
) -> tuple[int, str, bool]:
    """Run the child; SIGKILL it ``kill_after`` seconds after it is ready (None: let it end).
    Returns (return code, its last line on stdout, whether it had to be killed at ``limit_s``)."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.gateway.outbox_kill_child", *args,
            stdout=asyncio.subprocess.PIPE, stderr=err, cwd=REPO,
        )  # fmt: skip
    assert proc.stdout is not None
    last, late = b"", False
    try:
        async with asyncio.timeout(limit_s):
            last = await proc.stdout.readline()
            if kill_after is not None and last.strip() == b"ready":
                await asyncio.sleep(kill_after)  # the random moment, not a wait for a condition
                with contextlib.suppress(ProcessLookupError):  # it may have ended by itself
                    proc.send_signal(signal.SIGKILL)
            last = (await proc.stdout.read()).strip().split(b"\n")[-1] or last
            await proc.wait()
    except TimeoutError:
        late = True
        proc.kill()
        await proc.wait()
    return proc.returncode if proc.returncode is not None else 0, last.decode().strip(), late


def read_journal(path: Path) -> tuple[dict[int, set[Published]], set[int]]:
    published: dict[int, set[Published]] = {}
    acked: set[int] = set()
    for line in path.read_text().splitlines():
        kind, *fields = line.split()
        if kind == "pub":
            seq, header, prev, data, first, last, count = fields
            p = Published(header, prev, data, int(first), int(last), int(count))
            published.setdefault(int(seq), set()).add(p)
        else:
            acked.add(int(fields[0]))
    return published, acked


async def test_kill_at_every_point_and_at_random_loses_repeats_and_forks_nothing(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    journal, log = tmp_path / "journal", tmp_path / "child.log"
    base = [
        "--state-dir",
        str(tmp_path / "state"),
        "--key",
        str(keys.gateway_file),
        "--journal",
        str(journal),
    ]
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"outbox kill-test seed {seed}")
    runs = [(f"{point}:{k}", None) for point in POINTS for k in (1, 4)]
    runs += [(None, rng.uniform(0.01, 0.4)) for _ in range(RANDOM_KILLS)]
    rng.shuffle(runs)
    for i, (crash, after) in enumerate(runs):
        args = [*base, "--seed", str(seed + i)] + (["--crash", crash] if crash else [])
        code, _, late = await run_child(args, log, kill_after=after)
        assert code == -signal.SIGKILL, f"run {i} ({crash or after}) ended {code}:\n{log.read_text()[-3000:]}"
        assert not late, f"run {i}: crash point {crash} not reached"
    code, last, _ = await run_child([*base, "--drain"], log, kill_after=None)
    assert code == 0 and last.startswith("drained "), f"{code} {last}:\n{log.read_text()[-3000:]}"
    submitted = int(last.split()[1])

    published, acked = read_journal(journal)
    forked = {seq: contents for seq, contents in published.items() if len(contents) > 1}
    assert not forked, f"sequence numbers published with two contents: {forked}"
    batches = {seq: next(iter(contents)) for seq, contents in published.items()}
    assert sorted(batches) == list(range(1, len(batches) + 1)), "a sequence number is missing"
    assert acked <= set(batches)  # (an ack killed before its journal line is not in it)
    prev = GENESIS_PREV
    records: list[int] = []
    for seq in sorted(batches):
        b = batches[seq]
        assert b.prev == prev, f"seq {seq} does not link to seq {seq - 1}"
        assert b.count == b.last - b.first + 1
        records += range(b.first, b.last + 1)
        prev = b.header_sha256
    assert records == list(range(submitted)), "a record was lost or delivered twice"
    assert submitted > 100 and len(batches) > 20  # the runs did work between the kills
