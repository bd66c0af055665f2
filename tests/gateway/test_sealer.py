"""Sealing by count or age, the chain across restarts, and atomic seals."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.clock import ManualClock
from evidence.batch import SealedBatch, parse_batch, verify_batch
from evidence.chain import verify_chain
from evidence.records import decode_record, encode_record
from gateway.evidence_config import OutboxSettings, SealingSettings
from gateway.pipeline import EvidencePipeline
from gateway.sealer import Sealer
from gateway.store import EvidenceStore
from tests.gateway.ack_subscriber import eventually
from tests.gateway.evidence_helpers import T0, evidence_settings, interval, make_keys

SNAP = {"version": 1, "interval_s": 900, "series": []}


def outbox(store: EvidenceStore) -> list[SealedBatch]:
    return [parse_batch(store.batch_data(b.seq)) for b in store.outbox()]


async def test_count_seals_at_submit_and_age_seals_on_the_clock(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    clock = ManualClock(T0)
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=3, max_age_s=600)
    )
    async with EvidencePipeline(settings, None, gateway_id="gw-seal", key=keys.gateway, clock=clock) as p:
        await p.submit([interval(0, k) for k in range(7)], SNAP)
        assert (p.status()["outbox_depth_batches"], p.status()["pending_records"]) == (2, 1)
        await clock.advance(599)
        assert p.status()["pending_records"] == 1
        await clock.advance(1)  # the oldest pending record is now max_age_s old
        await eventually(lambda: p.status()["pending_records"] == 0, 5, "the age timer to seal")
        assert (p.status()["outbox_depth_batches"], p.status()["pending_records"]) == (3, 0)
        assert p.builder_state() == SNAP
    store = EvidenceStore.open(tmp_path / "state", gateway_id="gw-seal")
    try:
        batches = outbox(store)
    finally:
        store.close()
    assert [b.header.count for b in batches] == [3, 3, 1]
    assert [b.header.created_ms for b in batches] == [T0 * 1000, T0 * 1000, (T0 + 600) * 1000]
    for b in batches:
        verify_batch(b, keys.gateway.public_key)
    assert verify_chain((b.header, b.header_sha256) for b in batches).ok
    assert [decode_record(r) for b in batches for r in b.records] == [interval(0, k) for k in range(7)]


async def test_the_chain_continues_after_reopening(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    clock = ManualClock(T0)
    settings = evidence_settings(
        tmp_path / "state", keys, sealing=SealingSettings(max_records=2, max_age_s=60)
    )
    for run in range(3):
        async with EvidencePipeline(settings, None, gateway_id="gw-seal", key=keys.gateway, clock=clock) as p:
            await p.submit([interval(run, 0), interval(run, 1)], SNAP)
    store = EvidenceStore.open(tmp_path / "state", gateway_id="gw-seal")
    try:
        batches = outbox(store)
        assert store.chain_head() == (3, batches[-1].header_sha256)
    finally:
        store.close()
    assert [b.header.seq for b in batches] == [1, 2, 3]
    assert verify_chain((b.header, b.header_sha256) for b in batches).ok


def test_a_seal_that_fails_midway_consumes_no_sequence_number(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    store = EvidenceStore.open(tmp_path / "state", gateway_id="gw-seal")
    try:
        sealer = Sealer(store, key=keys.gateway, gateway_id="gw-seal", clock=ManualClock(T0),
                        sealing=SealingSettings(max_records=2), outbox=OutboxSettings())  # fmt: skip
        store.add_pending([encode_record(interval(0, k)) for k in range(2)], None, T0 * 1000)
        real = store.set_chain_head

        def crash(seq: int, digest: str) -> None:
            raise OSError("disk unplugged")  # after the batch was inserted, before the head moved

        store.set_chain_head = crash  # type: ignore[method-assign]
        with pytest.raises(OSError):
            sealer.seal_due()
        assert store.outbox() == [] and store.pending_count() == 2 and store.chain_head()[0] == 0
        store.set_chain_head = real  # type: ignore[method-assign]
        assert sealer.seal_due() == 1
        [stored] = store.outbox()
        assert stored.seq == 1 and store.pending_count() == 0
    finally:
        store.close()
