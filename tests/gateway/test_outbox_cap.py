"""Outbox cap: the dropped intervals are exactly those the signed drop record names."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.clock import ManualClock
from evidence.batch import SealedBatch, parse_batch, verify_batch
from evidence.chain import verify_chain
from evidence.records import DropRecord, IntervalRecord, IntervalRef, decode_record
from gateway.pipeline import EvidencePipeline
from gateway.store import EvidenceStore
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber, eventually
from tests.gateway.evidence_helpers import (
    T0,
    Keys,
    L,
    evidence_settings,
    interval,
    make_keys,
    ref,
    uplink_settings,
)

pytestmark = pytest.mark.integration
GW = "gw-cap"
SNAP = {"version": 1, "interval_s": 900, "series": []}
CAPS: list[dict[str, Any]] = [
    {"policy": "drop_oldest", "cap_batches": 4, "cap_bytes": None},
    {"policy": "drop_newest", "cap_batches": 4, "cap_bytes": None},
    {"policy": "drop_oldest", "cap_bytes": 16_384},
    {"policy": "drop_newest", "cap_bytes": 16_384},
]


def drop_records(batches: list[SealedBatch]) -> list[DropRecord]:
    return [r for b in batches for r in map(decode_record, b.records) if isinstance(r, DropRecord)]


def expand(runs: tuple[IntervalRef, ...]) -> tuple[IntervalRef, ...]:
    """A drop record's runs as the single intervals they name (the tests' intervals are L long)."""
    return tuple(IntervalRef(r.meter, r.quantity, s, s + L) for r in runs for s in range(r.start, r.end, L))


def intervals(batches: list[SealedBatch]) -> list[IntervalRef]:
    return [ref(r) for b in batches for r in map(decode_record, b.records) if isinstance(r, IntervalRecord)]


async def fill_past_the_cap(
    state: Path, keys: Keys, cap: dict[str, Any]
) -> tuple[list[IntervalRecord], dict]:
    """Seal 12 batches of 10 records with no uplink; returns the records and every
    (seq -> (header hash, kind)) that was ever in the outbox."""
    settings = evidence_settings(state, keys, **cap)
    submitted: list[IntervalRecord] = []
    seen: dict[int, tuple[str, str]] = {}
    async with EvidencePipeline(settings, None, gateway_id=GW, key=keys.gateway, clock=ManualClock(T0)) as p:
        for n in range(12):
            batch = [interval(m, n) for m in range(10)]
            await p.submit(batch, SNAP)
            submitted += batch
            store = p._store
            assert store is not None
            seen |= {b.seq: (b.header_sha256, b.kind) for b in store.outbox()}
            status = p.status()
            assert cap.get("cap_batches") is None or status["outbox_depth_batches"] <= cap["cap_batches"]
            assert cap.get("cap_bytes") is None or status["outbox_bytes"] <= cap["cap_bytes"]
        assert status["dropped_batches"] and status["dropped_intervals"]
    return submitted, seen


@pytest.mark.parametrize(
    "cap", CAPS, ids=lambda c: f"{c['policy']}-{'batches' if c.get('cap_batches') else 'bytes'}"
)
async def test_drop_record_names_exactly_the_dropped_batches_and_intervals(
    tmp_path: Path, cap: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    keys = make_keys(tmp_path / "keys")
    with caplog.at_level(logging.ERROR, logger="gateway.sealer"):
        submitted, seen = await fill_past_the_cap(tmp_path / "state", keys, cap)
    assert any("OUTBOX CAP REACHED" in r.getMessage() for r in caplog.records)

    store = EvidenceStore.open(tmp_path / "state", gateway_id=GW)
    try:
        kept = [parse_batch(store.batch_data(b.seq)) for b in store.outbox()]
        kinds = [b.kind for b in store.outbox()]
    finally:
        store.close()
    assert kinds.count("drop") == 1  # earlier drop records were superseded and carried over
    [drop] = drop_records(kept)
    assert drop.reason == "outbox_cap" and drop.policy == cap["policy"]
    kept_seqs = {b.header.seq for b in kept}
    named = {b.seq: b.header_sha256 for b in drop.batches}
    stored_then_dropped = {seq: digest for seq, (digest, _) in seen.items() if seq not in kept_seqs}
    assert {seq: named[seq] for seq in named if seq in seen} == stored_then_dropped
    assert set(named) | kept_seqs == set(range(1, max(kept_seqs) + 1))
    assert not set(named) & kept_seqs
    kept_refs = intervals(kept)
    dropped = expand(drop.intervals)
    assert sorted(dropped + tuple(kept_refs), key=_key) == sorted(map(ref, submitted), key=_key)
    assert not set(dropped) & set(kept_refs)
    # Runs, not intervals: one per meter (the dropped intervals of each follow each other).
    assert len(drop.intervals) == len({(r.meter, r.quantity) for r in drop.intervals}) == 10
    kept_data = sorted(b.header.seq for b in kept if not drop_records([b]))
    dropped_data = sorted(seq for seq in named if seen.get(seq, ("", "data"))[1] == "data")
    if cap["policy"] == "drop_oldest":
        assert max(dropped_data) < min(kept_data)
    else:
        assert max(kept_data) < min(dropped_data)
        assert any(seq not in seen for seq in dropped_data)  # sealed, named, never stored


def _key(r: IntervalRef) -> tuple[str, str, int]:
    return (r.meter, r.quantity, r.start)


async def test_after_the_cap_the_aggregator_sees_every_interval_arrived_or_named(
    tmp_path: Path, mosquitto: PrivateMosquitto, fresh_mosquitto: Callable[..., PrivateMosquitto]
) -> None:
    keys = make_keys(tmp_path / "keys")
    submitted, _ = await fill_past_the_cap(tmp_path / "state", keys, CAPS[0])
    settings = evidence_settings(tmp_path / "state", keys, **CAPS[0])
    uplink = uplink_settings(mosquitto.host, mosquitto.port, keys)
    async with (
        AckSubscriber(mosquitto.host, mosquitto.port, tmp_path / "agg.sqlite",
                      gateway_keys={GW: keys.gateway.public_key}, aggregator_key=keys.aggregator) as agg,
        EvidencePipeline(settings, uplink, gateway_id=GW, key=keys.gateway, clock=ManualClock(T0)) as p,
    ):  # fmt: skip
        await eventually(lambda: p.status()["outbox_depth_batches"] == 0, 20, "the outbox to drain")
        arrived = agg.batches(GW)
    for b in arrived:
        verify_batch(b, keys.gateway.public_key)  # the drop record is signed like any batch
    [drop] = drop_records(arrived)
    got = intervals(arrived)
    assert len(got) == len(set(got))
    assert sorted(got + list(expand(drop.intervals)), key=_key) == sorted(map(ref, submitted), key=_key)
    report = verify_chain((b.header, b.header_sha256) for b in arrived)
    assert not report.forks and not report.duplicates
    assert report.missing == sorted(b.seq for b in drop.batches)  # every gap is explained
