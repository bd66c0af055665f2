"""Clock discipline (issue 20): a gateway whose clock is not good polls but stamps and seals
nothing; once time is good it continues, and nothing it sealed carries the bad time.

The sync state is injected (:class:`Switch`); the clock is a ManualClock that jumps forward
as a Pi's does when NTP first answers (it booted at the last shutdown time).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from common.clock import ManualClock
from drivers.contract import Sample
from evidence.batch import parse_batch
from evidence.records import IntervalRecord, decode_record
from gateway.clock_guard import SOURCE_FLOOR, ClockGuard, KernelSync, build_floor
from gateway.config import SiteConfig, parse_site
from gateway.evidence_config import SealingSettings
from gateway.pipeline import EvidencePipeline
from gateway.runtime import Gateway
from gateway.store import EvidenceStore
from testbed.servers import PrivateMosquitto
from tests.gateway.evidence_helpers import T0, evidence_settings, make_keys

L = 900
GRACE = 30
FLOOR = T0 - 30 * 86400  # "built" a month before T0
STALE = T0 + 1  # the time the Pi boots with (its last shutdown)
REAL = T0 + 100 * L + 1  # the time NTP says it is: a day and an hour later


class Switch:
    """A sync source the test flips."""

    def __init__(self, synced: bool) -> None:
        self.synced = synced

    def synchronised(self) -> tuple[bool, str]:
        return self.synced, "test: synchronised" if self.synced else "test: not synchronised"


def _site(broker: PrivateMosquitto) -> SiteConfig:
    plug = {
        "id": "plug", "driver": "mqtt", "scenario": "clean_heating", "counts": ["energy"],
        "nameplate": {"rated_power_kw": 3, "meter_class": "1"},
        "connection": {"host": broker.host, "port": broker.port},
        "source": {"topic": "plugs/clock-plug", "expected_period_s": 60,
                   "fields": {"energy": {"path": "energy_wh", "unit": "Wh", "kind": "counter"}}},
    }  # fmt: skip
    data = {"gateway": {"id": "gw-clock", "site": "test-site"}, "interval_minutes": L // 60,
            "grace_seconds": GRACE, "meters": [plug], "status": {"enabled": False}}  # fmt: skip
    return parse_site(data, "site.yaml", {})


async def _poll_interval(gw: Gateway, clock: ManualClock, start: float, first_wh: float) -> None:
    """A reading a minute through the interval starting at ``start``, as the meter's source
    delivers them (clock time at receipt), then past the close."""
    for j in range(15):
        await clock.set(start + 60 * j + 40)  # after the previous close (+ GRACE)
        gw._take([Sample("plug", "energy", first_wh + 10 * j, clock.now(), "mqtt:receipt")])
    await clock.set(start + L + GRACE)
    await gw.close_now()


def _sealed(state_dir: Path) -> tuple[list[int], list[IntervalRecord]]:
    store = EvidenceStore.open(state_dir, gateway_id="gw-clock")
    try:
        batches = [parse_batch(store.batch_data(b.seq)) for b in store.outbox()]
        pending = [r for _, r in store.pending(1000)]
    finally:
        store.close()
    lines = [line for b in batches for line in b.records] + pending
    records = [decode_record(line) for line in lines]
    assert all(isinstance(r, IntervalRecord) for r in records)
    return [b.header.created_ms for b in batches], records  # type: ignore[return-value]


async def test_unsynchronised_boot_polls_but_stamps_and_seals_nothing_until_ntp(
    mosquitto: PrivateMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.clock_guard")
    keys = make_keys(tmp_path / "keys")
    clock = ManualClock(STALE)
    ntp = Switch(synced=False)
    guard = ClockGuard(clock, ntp, floor=FLOOR, gateway="gw-clock")
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=1, max_age_s=60)
    )
    async with (
        asyncio.timeout(20),
        EvidencePipeline(settings, None, gateway_id="gw-clock", key=keys.gateway, clock=clock,
                         clock_guard=guard) as pipeline,
        Gateway(_site(mosquitto), clock=clock, sink=pipeline, profiles={}, clock_guard=guard) as gw,
    ):  # fmt: skip
        for k in range(2):  # half an hour of polling on the boot clock
            await _poll_interval(gw, clock, STALE - 1 + k * L, 1000.0 + 150 * k)
        assert gw.last_readings["plug"]["energy"].value == 1000.0 + 150 + 140  # polled, shown
        assert gw.held_back_samples == 30 and gw.closed_intervals == 0
        assert pipeline.status()["sealed_batches"] == 0
        assert guard.status()["ok"] is False

        ntp.synced = True  # timesyncd's first answer: the clock jumps to the real time
        await clock.set(REAL)
        await _poll_interval(gw, clock, REAL - 1, 5000.0)
        await _poll_interval(gw, clock, REAL - 1 + L, 5150.0)
        assert gw.closed_intervals >= 1
    created, records = _sealed(tmp_path / "state")
    assert records and created
    # Nothing carries the boot clock's time: every interval and every batch is from after sync.
    assert min(r.start for r in records) >= REAL - 1
    assert min(created) >= REAL * 1000
    assert [r.delta for r in records if r.start == REAL - 1 + L] == [150.0]
    said = [r.getMessage() for r in caplog.records]
    assert any("CLOCK NOT GOOD: test: not synchronised" in m for m in said)
    assert any("clock good: test: synchronised" in m for m in said)


async def test_records_pending_when_the_clock_goes_bad_are_sealed_only_once_it_is_good(
    tmp_path: Path,
) -> None:
    """The sealer stamps the batch's creation time: it waits for a good clock too."""
    from tests.gateway.evidence_helpers import interval

    keys = make_keys(tmp_path / "keys")
    clock = ManualClock(T0 + L + GRACE)
    ntp = Switch(synced=True)
    guard = ClockGuard(clock, ntp, floor=FLOOR)
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=10, max_age_s=60)
    )
    async with EvidencePipeline(settings, None, gateway_id="gw-clock", key=keys.gateway, clock=clock,
                                clock_guard=guard) as pipeline:  # fmt: skip
        await pipeline.submit([interval(1, 0)], {"series": []})
        ntp.synced = False
        await clock.advance(600)  # the record's age passes max_age_s: due, but the clock is bad
        assert pipeline.status()["sealed_batches"] == 0
        ntp.synced = True
        await clock.advance(10)  # the sealer looks again within CLOCK_RECHECK_S
        async with asyncio.timeout(5):
            while pipeline.status()["sealed_batches"] == 0:
                await clock.advance(1)
    created, records = _sealed(tmp_path / "state")
    assert len(records) == 1 and created[0] >= (T0 + L + GRACE + 610) * 1000


async def test_a_clock_before_the_build_is_not_good_even_if_the_kernel_says_synchronised() -> None:
    clock = ManualClock(FLOOR - 86400)
    guard = ClockGuard(clock, Switch(synced=True), floor=FLOOR)
    state = guard.check()
    assert not state.ok and "before this software was built" in state.detail
    await clock.set(FLOOR + 1)
    assert guard.check().ok


def test_the_floor_is_the_build_time_or_the_source_floor() -> None:
    assert build_floor() >= SOURCE_FLOOR


def test_the_kernel_state_is_read() -> None:
    ok, detail = KernelSync().synchronised()
    assert isinstance(ok, bool)
    assert ("unsynchronised" in detail) != ok and "adjtimex failed" not in detail
