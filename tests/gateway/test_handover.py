"""Closed intervals reach the evidence store once, whatever submit fails (issue 15, item 3).

The property over any sequence of failures and restarts is in test_intervals_properties.py;
here the same on the running :class:`Gateway` (its closer task and exit path) and on the
real evidence pipeline (SQLite).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common.clock import ManualClock
from drivers.contract import Sample
from evidence.batch import parse_batch
from evidence.records import IntervalRecord, decode_record
from gateway.config import SiteConfig, parse_site
from gateway.evidence_config import SealingSettings
from gateway.intervals import IntervalBuilder, SeriesSpec
from gateway.pipeline import EvidencePipeline
from gateway.runtime import Gateway, IntervalHandover
from gateway.sealer import Sealer
from gateway.store import EvidenceStore
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import eventually
from tests.gateway.evidence_helpers import T0, evidence_settings, make_keys

L = 900
GRACE = 30


@dataclass
class FlakySink:
    """Stores records and state together, or raises (storing nothing) on the submits of
    records whose numbers are in ``fail`` (1 = the first submit that carries records)."""

    fail: set[int]
    records: list[IntervalRecord] = field(default_factory=list)
    state: Mapping[str, Any] | None = None
    closes: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def builder_state(self) -> Mapping[str, Any] | None:
        return self.state

    async def submit(self, records: Sequence[IntervalRecord], builder_state: Mapping[str, Any]) -> None:
        self.closes += bool(records)
        if records and self.closes in self.fail:
            raise sqlite3.OperationalError("database or disk is full")
        self.records.extend(records)
        self.state = builder_state
        self.changed.set()


def _site(broker: PrivateMosquitto) -> SiteConfig:
    plug = {
        "id": "plug", "driver": "mqtt", "scenario": "clean_heating", "counts": ["energy"],
        "nameplate": {"rated_power_kw": 3, "meter_class": "1"},
        "connection": {"host": broker.host, "port": broker.port},
        "source": {"topic": "plugs/plug", "expected_period_s": 60,
                   "fields": {"energy": {"path": "energy_wh", "unit": "Wh", "kind": "counter"}}},
    }  # fmt: skip
    data = {"gateway": {"id": "gw-handover", "site": "test-site"}, "interval_minutes": L // 60,
            "grace_seconds": GRACE, "meters": [plug], "status": {"enabled": False}}  # fmt: skip
    return parse_site(data, "site.yaml", {})


def _readings(k: int) -> list[Sample]:
    """Interval k of the plug: a reading every minute, 10 Wh each."""
    return [Sample("plug", "energy", 1000.0 + 10 * (15 * k + j), T0 + k * L + 60 * j + 10) for j in range(15)]


async def _connected(gw: Gateway) -> None:
    async with asyncio.timeout(10):
        await gw.subscribers[0].wait_until(lambda h: h["plug"].connected)


async def _feed(builder: IntervalBuilder, clock: ManualClock, k: int) -> None:
    """Interval k's readings, each as the clock reaches its time (none before now)."""
    for sample in (s for s in _readings(k) if s.time >= clock.now()):
        await clock.set(sample.time)
        builder.add(sample)


async def test_a_failed_close_submit_is_kept_for_the_shutdown_submit(mosquitto: PrivateMosquitto) -> None:
    """The closer's submit fails once (the disk was full for a moment): the gateway stops,
    and its shutdown submit, which succeeds, carries the interval with the state that no
    longer holds it. The restart continues after it: nothing lost, nothing twice."""
    clock = ManualClock(T0 + 1)
    sink = FlakySink(fail={1})
    with pytest.raises(ExceptionGroup) as stopped:
        async with asyncio.timeout(10), Gateway(_site(mosquitto), clock=clock, sink=sink, profiles={}) as gw:
            await _connected(gw)
            await _feed(gw.builder, clock, 0)
            await clock.set(T0 + L + GRACE)  # the closer's submit fails and stops the gateway
            await asyncio.Event().wait()
    assert stopped.group_contains(sqlite3.OperationalError)
    assert [r.start for r in sink.records] == [T0]
    assert sink.records[0].delta == 140.0

    async with Gateway(_site(mosquitto), clock=clock, sink=sink, profiles={}) as gw:
        await _connected(gw)
        await _feed(gw.builder, clock, 1)
        await clock.set(T0 + 2 * L + GRACE)
        async with asyncio.timeout(10):
            while len(sink.records) < 2:
                sink.changed.clear()
                await sink.changed.wait()
    assert [r.start for r in sink.records] == [T0, T0 + L]
    assert sink.records[1].counter_start == sink.records[0].counter_end and sink.records[1].delta == 150.0


async def test_a_fresh_gateway_persists_its_state_before_closing_anything(
    mosquitto: PrivateMosquitto,
) -> None:
    """So that a gateway whose first close fails, and whose shutdown submit fails too,
    restarts from a state that still has that interval to emit."""
    clock = ManualClock(T0 + 1)
    sink = FlakySink(fail=set())
    async with Gateway(_site(mosquitto), clock=clock, sink=sink, profiles={}) as gw:
        await _connected(gw)
        assert sink.state is not None and sink.records == []
    restarted = IntervalBuilder(
        [SeriesSpec("plug", "energy", "Wh", "counter", 60.0)], clock=ManualClock(T0 + L)
    )
    restarted.restore(sink.state)
    assert [r.start for r in restarted.close_due(T0 + 2 * L + GRACE)] == [T0, T0 + L]


def _sealed(state_dir: Path) -> list[IntervalRecord]:
    store = EvidenceStore.open(state_dir, gateway_id="gw-handover")
    try:
        lines = [line for b in store.outbox() for line in parse_batch(store.batch_data(b.seq)).records]
        pending = [r for _, r in store.pending(1000)]
    finally:
        store.close()
    out = [decode_record(line) for line in lines + pending]
    intervals = [r for r in out if isinstance(r, IntervalRecord)]
    assert len(intervals) == len(out)
    return intervals


async def test_with_the_evidence_store_a_failed_submit_is_sealed_once_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = make_keys(tmp_path / "keys")
    clock = ManualClock(T0 + 1)
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=2, max_age_s=60)
    )
    builder = IntervalBuilder([SeriesSpec("plug", "energy", "Wh", "counter", 60.0)], clock=clock)
    real_add = EvidenceStore.add_pending
    fails = iter([False, True])  # the state at start is stored; the first close is not

    def add_pending(self: EvidenceStore, *args: Any) -> None:
        if next(fails, False):
            raise sqlite3.OperationalError("database or disk is full")
        real_add(self, *args)

    monkeypatch.setattr(EvidenceStore, "add_pending", add_pending)
    async with EvidencePipeline(settings, None, gateway_id="gw-handover", key=keys.gateway, clock=clock) as p:
        handover = IntervalHandover(builder, p)
        await handover.resume()
        await _feed(builder, clock, 0)
        await clock.set(T0 + L + GRACE)
        with pytest.raises(sqlite3.OperationalError):
            await handover.close_due()
        assert p.builder_state() is not None and p.builder_state()["series"][0]["next_start"] == T0
        for k in (1, 2):
            await _feed(builder, clock, k)
            await clock.set(T0 + (k + 1) * L + GRACE)
            await handover.close_due()
        assert p.status()["outbox_depth_batches"] == 1  # two sealed by count, one pending
    assert [r.start for r in _sealed(tmp_path / "state")] == [T0, T0 + L, T0 + 2 * L]


async def test_a_seal_failing_after_the_commit_does_not_fail_the_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records are committed when sealing at submit fails: the submit must not raise
    (its caller would submit them again, and they would be sealed twice); the sealer's task
    seals them."""
    keys = make_keys(tmp_path / "keys")
    clock = ManualClock(T0 + 1)
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=2, max_age_s=60)
    )
    builder = IntervalBuilder([SeriesSpec("plug", "energy", "Wh", "counter", 60.0)], clock=clock)
    real_seal = Sealer._seal_one
    fails = iter([True])

    def seal_one(self: Sealer, now_ms: int) -> None:
        if next(fails, False):
            raise sqlite3.OperationalError("disk I/O error")
        real_seal(self, now_ms)

    async with EvidencePipeline(settings, None, gateway_id="gw-handover", key=keys.gateway, clock=clock) as p:
        handover = IntervalHandover(builder, p)
        await handover.resume()
        monkeypatch.setattr(Sealer, "_seal_one", seal_one)
        for k in range(2):
            await _feed(builder, clock, k)
        await clock.set(T0 + 2 * L + GRACE)
        await handover.close_due()  # two records: max_records, sealed at submit, which fails
        assert handover.unsubmitted == [] and next(fails, None) is None
        await eventually(lambda: p.status()["outbox_depth_batches"] == 1, 5, "the sealer's retry")
    assert [r.start for r in _sealed(tmp_path / "state")] == [T0, T0 + L]
