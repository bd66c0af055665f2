"""``puhui gateway rotate-key``: the next key announced in the chain, verified by the real
aggregator ingest with the key it trusts; an interrupted rotation completes at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.clock import ManualClock
from evidence.batch import SealedBatch, parse_batch, seal_batch
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.keys import GatewayKey, generate_key, load_private_key, save_private_key
from evidence.wire import Reject
from gateway.evidence_config import SealingSettings
from gateway.pipeline import EvidencePipeline
from gateway.rotation import _seal_announcement, finish_rotation, next_key_path, rotate_key
from gateway.store import EvidenceStore
from tests.aggregator.test_pipeline import Harness, StoreThreads
from tests.gateway.evidence_helpers import T0, evidence_settings, interval, make_keys

GW = "gw-rot"
SNAP = {"version": 1, "interval_s": 900, "series": []}
ONE = SealingSettings(max_records=1, max_age_s=3600)


async def _seal(settings: object, n: int, start: int) -> None:
    key = load_private_key(Path(settings.key_file))  # type: ignore[attr-defined]
    async with EvidencePipeline(settings, None, gateway_id=GW, key=key, clock=ManualClock(T0)) as p:  # type: ignore[arg-type]
        for k in range(start, start + n):
            await p.submit([interval(0, k)], SNAP)


def _mode(path: str) -> int:
    return Path(path).stat().st_mode & 0o777


def _outbox(settings: object) -> list[SealedBatch]:
    store = EvidenceStore.open(settings.state_dir, gateway_id=GW)  # type: ignore[attr-defined]
    try:
        return [parse_batch(store.batch_data(b.seq)) for b in store.outbox()]
    finally:
        store.close()


async def test_a_rotated_key_is_announced_in_the_chain_and_the_aggregator_follows(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    settings = evidence_settings(tmp_path / "state", keys, sealing=ONE)
    await _seal(settings, 2, 0)
    done = rotate_key(settings, gateway_id=GW, clock=ManualClock(T0))
    assert (done.old_key_id, done.batch_seq, done.effective_seq) == (keys.gateway.key_id, 3, 4)
    new = load_private_key(Path(settings.key_file))
    assert new.key_id == done.new_key_id != keys.gateway.key_id
    assert not next_key_path(settings.key_file).exists()
    assert _mode(settings.key_file) == 0o600
    await _seal(settings, 2, 2)
    batches = _outbox(settings)
    assert [b.header.key_id for b in batches] == [keys.gateway.key_id] * 3 + [new.key_id] * 2

    with StoreThreads() as threads:  # the aggregator, enrolled with the old key only
        harness = Harness(tmp_path / "agg", threads)
        meters = [EnrolledMeter("m0", "clean_heating", 10.0, "1")]
        harness.registry.enrol(
            make_enrolment(keys.gateway, gateway=GW, site="s", meters=meters, created_ms=0).to_bytes(),
            at_ms=0,
        )
        replies = await harness.run([(GW, b) for b in batches])
        assert [(type(r).__name__, r.seq) for r in replies] == [("Ack", s) for s in range(1, 6)]
        # a batch the old key signs after the rotation is refused: its key was superseded
        [refused] = await harness.run([(GW, _resealed(batches[-1], keys.gateway, seq=6))])
        assert isinstance(refused, Reject) and "superseded" in refused.detail
        harness.store.close()


def _resealed(batch: SealedBatch, key: GatewayKey, *, seq: int) -> SealedBatch:
    return seal_batch(list(batch.records), key=key, gateway=GW, seq=seq, prev=batch.header_sha256,
                      created_ms=batch.header.created_ms)  # fmt: skip


async def test_a_rotation_interrupted_after_its_batch_completes_at_start(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    settings = evidence_settings(tmp_path / "state", keys, sealing=ONE)
    await _seal(settings, 1, 0)
    store = EvidenceStore.open(settings.state_dir, gateway_id=GW)
    try:
        assert finish_rotation(settings, store) is None  # nothing started
        new = generate_key()
        save_private_key(new, next_key_path(settings.key_file))
        assert finish_rotation(settings, store) is None  # started, not announced: left alone
        assert load_private_key(Path(settings.key_file)).key_id == keys.gateway.key_id
        _seal_announcement(store, keys.gateway, new, GW, ManualClock(T0))  # ...then the process died
        done = finish_rotation(settings, store)
    finally:
        store.close()
    assert done is not None and done.new_key_id == new.key_id and done.effective_seq == 3
    assert load_private_key(Path(settings.key_file)).key_id == new.key_id


def test_rotate_key_refuses_cleanly_without_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from puhui.cli import main

    site = tmp_path / "site.yaml"
    evidence = f"evidence: {{key_file: {tmp_path / 'missing.pem'}, state_dir: {tmp_path / 'state'}}}\n"
    site.write_text(
        "gateway: {id: gw-x, site: s}\n" + evidence + "meters:\n"
        "  - {id: m, driver: mqtt, connection: {host: 127.0.0.1}, scenario: pv,\n"
        "     nameplate: {rated_power_kw: 5, meter_class: '1'},\n"
        "     source: {topic: t, fields: {energy: {path: e, unit: kWh, kind: counter}}}, counts: [energy]}\n"
    )
    assert main(["gateway", "rotate-key", "--config", str(site)]) == 1
    err = capsys.readouterr().err
    assert "missing.pem" in err and "nothing was rotated" in err and "Traceback" not in err
