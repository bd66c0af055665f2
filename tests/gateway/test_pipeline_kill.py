"""SIGKILL the gateway 20 times at random moments: every interval arrives once, chain intact."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from evidence.batch import verify_batch
from evidence.chain import verify_chain
from evidence.records import IntervalRecord
from testbed.servers import PrivateMosquitto
from tests.gateway import pipeline_child as child
from tests.gateway.ack_subscriber import AckSubscriber
from tests.gateway.evidence_helpers import T0, make_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILLS = 20
FACTOR = 600.0  # a 60 s interval every 0.1 s of wall time
REPO = Path(__file__).resolve().parents[2]


async def start_child(args: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.gateway.pipeline_child", *args,
            stdout=asyncio.subprocess.PIPE, stderr=err, cwd=REPO,
        )  # fmt: skip


async def expect_line(proc: asyncio.subprocess.Process, line: bytes, log: Path) -> None:
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            got = await proc.stdout.readline()
    except TimeoutError:
        got = b"(nothing within 30 s)"
    if got.strip() != line:
        tail = log.read_text()[-3000:]  # noqa: ASYNC240 - a failing test's diagnostics
        raise AssertionError(f"child said {got!r}, expected {line!r}; log:\n{tail}")


async def test_sigkill_at_random_moments_loses_and_repeats_nothing(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    keys = make_keys(tmp_path / "keys")
    wall_start = time.time()
    base = ["--state-dir", str(tmp_path / "state"), "--key", str(keys.gateway_file),
            "--aggregator-key", str(keys.aggregator_pub_file), "--port", str(mosquitto.port),
            "--epoch", str(T0), "--factor", str(FACTOR), "--wall-start", str(wall_start)]  # fmt: skip
    log = tmp_path / "child.log"
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"kill-test seed {seed}")
    async with AckSubscriber(mosquitto.host, mosquitto.port, tmp_path / "agg.sqlite",
                             gateway_keys={child.GATEWAY: keys.gateway.public_key},
                             aggregator_key=keys.aggregator) as agg:  # fmt: skip
        await agg.connected.wait()
        for _ in range(KILLS):
            proc = await start_child(base, log)
            try:
                await expect_line(proc, b"ready", log)
                await asyncio.sleep(rng.uniform(0.05, 0.8))  # the random moment, not a wait for a condition
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        end_at = T0 + FACTOR * (time.time() - wall_start) + 300
        proc = await start_child([*base, "--end-at", str(end_at)], log)
        try:
            await expect_line(proc, b"ready", log)
            await expect_line(proc, b"done", log)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        batches = agg.batches(child.GATEWAY)
        forks = agg.forks
        print(f"{len(batches)} batches, {sum(b.header.count for b in batches)} records; "
              f"{agg.duplicates} resent after a kill were acked as duplicates")  # fmt: skip
    for b in batches:
        verify_batch(b, keys.gateway.public_key)
    report = verify_chain((b.header, b.header_sha256) for b in batches)
    assert report.ok, report  # no seq missing, none forked or duplicated, end to end
    assert forks == 0
    check_intervals([r for b in batches for r in map(decode, b.records)], end_at)


def decode(line: bytes) -> IntervalRecord:
    from evidence.records import decode_record

    record = decode_record(line)
    assert isinstance(record, IntervalRecord)
    return record


def check_intervals(records: list[IntervalRecord], end_at: float) -> None:
    by_series: dict[str, list[IntervalRecord]] = defaultdict(list)
    for r in records:
        by_series[r.meter].append(r)
    assert sorted(by_series) == [f"m{i}" for i in range(child.METERS)]
    for meter, recs in by_series.items():
        i = int(meter[1:])
        starts = [r.start for r in recs]
        assert len(starts) == len(set(starts)), f"{meter}: an interval arrived twice"
        recs.sort(key=lambda r: r.start)
        assert [r.start for r in recs] == list(range(recs[0].start, recs[-1].start + 1, child.INTERVAL_S)), (
            f"{meter}: an interval is missing"
        )
        assert recs[-1].end >= end_at
        with_readings = [r for r in recs if r.counter_end is not None]
        assert [r for r in recs if "first" in r.flags] == with_readings[:1]  # never again after a restart
        previous_end: tuple[float, int] | None = None
        for r in recs:
            if r.counter_end is None:
                assert "gap" in r.flags and r.delta is None
                continue
            assert r.counter_start is not None and r.counter_start_time_ms is not None and r.delta is not None
            assert r.counter_end_time_ms is not None
            if previous_end is not None:  # the bound carried across every restart
                assert (r.counter_start, r.counter_start_time_ms) == previous_end, f"{meter}@{r.start}"
            expected = child.counter_value(i, r.counter_end_time_ms / 1000, T0) - child.counter_value(
                i, r.counter_start_time_ms / 1000, T0
            )
            assert r.delta == pytest.approx(expected, abs=1e-9), f"{meter}@{r.start}: energy lost or invented"
            previous_end = (r.counter_end, r.counter_end_time_ms)
