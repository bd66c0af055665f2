"""The evidence store's behaviour, the same for both backends (SQLite and PostgreSQL): stored
once, durable across reopen, group commit, gaps, counters, rejections, the registry, the
outbox and the views for methodologies, the schedule and the API."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import pytest

from aggregator.errors import StoreConflict, StoreError
from aggregator.registry import GatewayRegistry
from aggregator.store import GatewayEntry, KeyEntry, Rejection
from aggregator.view import MeterInfo
from evidence.keylist import AggregatorKey
from evidence.keys import generate_key, public_key_der
from tests.aggregator.ingest_support import STEP, T0, SimGateway
from tests.aggregator.store_support import AnyStore, accepted

_accepted = accepted  # the name tests/aggregator/test_checkpoints.py imports from here


def test_store_once_reopen_and_view(open_store: Callable[..., AnyStore]) -> None:
    store = open_store()
    gw = SimGateway("gw-1")
    GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    first, second = accepted(gw), accepted(gw, "gap", missing=(3,))
    store.store_batch(first)
    store.store_batch(second)
    with pytest.raises(StoreConflict):
        store.store_batch(first)
    store.close()

    store = open_store()
    assert store.batch_bytes("gw-1", 1) == first.data and store.batch_bytes("gw-1", 9) is None
    assert [(m.meter, m.scenario) for m in store.meters()] == [("hm-01", "clean_heating"), ("pv-01", "pv")]
    every = list(store.attested_intervals())
    assert len(every) == 8 and every[0].issues == ("low_coverage",) and not every[0].plausible
    assert every[4].batch.seq == 2 and every[4].batch.header_sha256 == second.header_sha256
    only = list(
        store.attested_intervals(gateway="gw-1", meters=["pv-01"], start=T0 + STEP, end=T0 + 3 * STEP)
    )
    assert [(a.record.meter, a.record.start) for a in only] == [
        ("pv-01", T0 + STEP),
        ("pv-01", T0 + 2 * STEP),
    ]
    assert list(store.attested_intervals(meters=[])) == []
    assert [g.seq for g in store.gaps("gw-1")] == [3]
    assert [p.seq for p in store.pending_influx(10)] == [1, 2]
    assert store.pending_influx(10)[0].issues == {0: ("low_coverage",)}
    store.mark_influx([p.id for p in store.pending_influx(1)])
    store.mark_influx([p.id for p in store.pending_influx(1)], error="HTTP 400: bad")
    assert store.influx_backlog() == (0, 1)
    assert store.highest_seq("gw-1") == 2 and store.highest_seq("gw-none") == 0
    assert (
        store.batch_created_ms("gw-1", 2) == second.created_ms and store.batch_created_ms("gw-1", 3) is None
    )
    assert store.verdict_counts() == {"append": 1, "gap": 1} and store.batch_count() == 2


def test_a_group_stores_all_but_a_conflicting_gateway_and_keeps_gaps_right(evidence_store: AnyStore) -> None:
    store = evidence_store
    a, b = SimGateway("gw-a"), SimGateway("gw-b")
    for gw in (a, b):
        GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    a1 = accepted(a)
    store.store_batch(a1)  # another aggregator stored a#1 already
    a2, b1 = accepted(a), accepted(b)
    b3 = accepted(b)  # pretend b#2 is missing ...
    b3 = dataclasses.replace(b3, seq=3, verdict="gap", missing=(2,))
    b2 = dataclasses.replace(b1, seq=2, verdict="reorder")
    results = store.store_group([a1, a2, b1, b3, b2])  # ... and arrives in the same group, later
    assert isinstance(results[0], StoreConflict) and results[1] is None
    assert all(isinstance(r, int) for r in results[2:]) and len(set(results[2:])) == 3
    assert [s for s, _, _ in store.chain_links("gw-a")] == [1]
    assert [s for s, _, _ in store.chain_links("gw-b")] == [1, 2, 3]
    assert store.gaps("gw-b") == []  # b#2 was stored in the same transaction: never a gap
    assert store.highest_seq("gw-b") == 3
    assert [(g, s) for g, s, _ in store.batch_log()] == [("gw-a", 1), ("gw-b", 1), ("gw-b", 3), ("gw-b", 2)]


def test_the_same_seq_twice_in_one_group_and_rejections_in_the_same_transaction(
    evidence_store: AnyStore,
) -> None:
    store = evidence_store
    gw = SimGateway("gw-t")
    one = accepted(gw)
    fork = dataclasses.replace(one, header_sha256="f" * 64)
    refused = Rejection("gw-t", 9, None, "bad_signature", "no", 5, b"xyz")
    results = store.store_group([one, fork], [refused])
    assert isinstance(results[0], int) and isinstance(results[1], StoreConflict)
    assert [h for _, h, _ in store.chain_links("gw-t")] == [one.header_sha256]
    assert [(r.seq, r.reason, r.data) for r in store.rejections()] == [(9, "bad_signature", b"xyz")]


def test_gaps_are_recorded_filled_and_explained(evidence_store: AnyStore) -> None:
    store = evidence_store
    gw = SimGateway("gw-g")
    b1, b2, b3, b4, b5 = (accepted(gw) for _ in range(5))
    store.store_batch(b1)
    store.store_batch(b2)
    store.store_batch(dataclasses.replace(b5, verdict="gap", missing=(2, 3, 4)))  # 2 is stored: no gap
    assert [(g.seq, g.filled_ms, g.explained_by_seq) for g in store.gaps()] == [
        (3, None, None),
        (4, None, None),
    ]
    late = dataclasses.replace(b3, verdict="reorder", received_ms=99)
    store.store_batch(late)
    dropper = dataclasses.replace(b4, verdict="reorder", dropped_seqs=(4, 7))  # says what it dropped
    store.store_batch(dropper)
    assert [(g.seq, g.filled_ms, g.explained_by_seq) for g in store.gaps("gw-g")] == [
        (3, 99, None),
        (4, 7, 4),  # filled by itself and explained by itself: as SQLite's statement order has it
        (7, None, 4),
    ]
    assert store.gaps("gw-other") == []


def test_counter_state_keeps_the_latest_end(evidence_store: AnyStore) -> None:
    store = evidence_store
    gw = SimGateway("gw-c")
    key = ("pv-01", "energy_import")
    b1, b2, b3 = (accepted(gw) for _ in range(3))
    results = store.store_group([
        dataclasses.replace(b1, counters={key: (200, 2.0)}),
        dataclasses.replace(b2, counters={key: (300, 3.0), ("hm-01", "energy_import"): (300, 7.5)}),
        dataclasses.replace(b3, counters={key: (300, 9.0)}),  # an equal end does not replace it
    ])  # fmt: skip
    assert all(isinstance(r, int) for r in results)
    assert store.counter_state("gw-c") == {key: (300, 3.0), ("hm-01", "energy_import"): (300, 7.5)}
    store.store_batch(dataclasses.replace(accepted(gw), counters={key: (250, 1.0)}))  # older: kept
    assert store.counter_state("gw-c")[key] == (300, 3.0)
    store.store_batch(dataclasses.replace(accepted(gw), counters={key: (400, 4.0)}))
    assert store.counter_state("gw-c")[key] == (400, 4.0) and store.counter_state("gw-none") == {}


def test_rejections_repeat_then_are_capped_per_source_and_counted(
    open_store: Callable[..., AnyStore],
) -> None:
    store = open_store(rejection_rows_per_source=2)
    same = Rejection("gw-r", 1, "a" * 64, "bad_signature", "sig", 10, b"payload")
    store.record_rejection(same)
    store.record_rejection(dataclasses.replace(same, received_ms=20))  # the same bytes again: a repeat
    store.record_rejection(dataclasses.replace(same, reason="malformed", received_ms=30))
    store.record_rejection(
        dataclasses.replace(same, data=b"other", received_ms=40, size=5000)
    )  # over the cap
    store.record_rejection(dataclasses.replace(same, data=b"third", received_ms=50))
    store.record_rejection(Rejection(None, None, None, "malformed", "not a batch", 60, b"\x00", size=9))
    [first, second] = store.rejections("gw-r")
    assert (first.repeats, first.received_ms, first.last_ms, first.size) == (2, 10, 20, 7)
    assert (second.reason, second.repeats, second.last_ms) == ("malformed", 1, 30)
    assert first.data_sha256 is not None and len(first.data_sha256) == 64
    assert [(r.gateway, r.size) for r in store.rejections()][-1] == (None, 9)
    assert store.rejection_overflow() == {("gw-r", "bad_signature"): 2}
    assert store.rejection_counts() == {"bad_signature": 4, "malformed": 2}


def _entry(gateway: str, *, site: str = "site-1", meters: tuple[MeterInfo, ...] = ()) -> GatewayEntry:
    key = generate_key()
    first = KeyEntry(gateway, key.key_id, public_key_der(key.public_key), 1, "enrolment", 5)
    return GatewayEntry(gateway, site, "CN-HB", 5, meters, (first,), b"{doc}")


def test_enrolment_keys_and_the_registry_version(evidence_store: AnyStore) -> None:
    store = evidence_store
    v0 = store.registry_version()
    day = dt.date(2027, 6, 30)
    meter = MeterInfo("gw-e", "pv-01", "pv", 10.0, "1", "CN-HB", day)
    entry = _entry("gw-e", meters=(meter,))
    store.save_enrolment(entry, at_ms=5)
    [got] = store.gateways()
    assert got == entry and store.meters() == [meter]
    assert store.registry_version() == v0 + 1
    other = MeterInfo("gw-e", "ev-01", "ev_charging", 7.0, "2", "CN-HB", None)
    store.save_enrolment(dataclasses.replace(entry, site="site-2", meters=(other,)), at_ms=99)
    [got] = store.gateways()  # meters replaced, keys kept, first enrolment time kept
    assert (got.site, got.enrolled_ms, got.meters, got.keys) == ("site-2", 5, (other,), entry.keys)

    rotated = generate_key()
    new = KeyEntry("gw-e", rotated.key_id, public_key_der(rotated.public_key), 7, "rotation@6", 50)
    store.add_key(new)
    with pytest.raises(StoreError) as raised:
        store.add_key(new)
    assert not isinstance(raised.value, StoreConflict)
    old_id = entry.keys[0].key_id
    store.revoke_key("gw-e", old_id, 1000)
    store.revoke_key("gw-e", old_id, 2000)  # a later time: the earlier revocation stands
    [got] = store.gateways()
    assert [(k.key_id, k.revoked_from_ms) for k in got.keys] == [(old_id, 1000), (rotated.key_id, None)]
    assert store.registry_version() == v0 + 5
    assert store.gateway_public_key("gw-e", rotated.key_id) == rotated.public_key
    assert store.gateway_public_key("gw-e", "nope") is None


def test_a_key_announced_in_a_batch_is_stored_with_it(evidence_store: AnyStore) -> None:
    store = evidence_store
    gw = SimGateway("gw-k")
    store.save_enrolment(_entry("gw-k"), at_ms=5)
    version = store.registry_version()
    rotated = generate_key()
    new = KeyEntry("gw-k", rotated.key_id, public_key_der(rotated.public_key), 3, "rotation@1", 9)
    store.store_batch(accepted(gw, new_key=new))
    assert store.gateways()[0].keys[-1] == new and store.registry_version() == version + 1
    with pytest.raises(StoreConflict):  # the same key announced again: the whole group is undone
        store.store_group([accepted(gw), accepted(gw, new_key=new)])
    assert store.highest_seq("gw-k") == 1 and store.batch_count() == 1
    assert store.registry_version() == version + 1


def test_aggregator_keys_and_checkpoints(evidence_store: AnyStore) -> None:
    store = evidence_store
    first = AggregatorKey("k1", "pub1", 0)
    store.add_aggregator_key(first)
    store.add_aggregator_key(AggregatorKey("k2", "pub2", 100, endorsement="sig"), retire="k1")
    with pytest.raises(StoreConflict):
        store.add_aggregator_key(AggregatorKey("k2", "pub2", 200))
    assert store.revoke_aggregator_key("k2", 150) and not store.revoke_aggregator_key("k9", 150)
    assert store.aggregator_keys() == [
        AggregatorKey("k1", "pub1", 0, retired_ms=100),
        AggregatorKey("k2", "pub2", 100, revoked_from_ms=150, endorsement="sig"),
    ]
    for size in (3, 1, 2):
        store.save_checkpoint(size, size * 10, b"cp%d" % size)
    store.save_checkpoint(2, 99, b"again")  # the same log size: replaced
    assert store.checkpoints() == [(1, 10, b"cp1"), (2, 99, b"again"), (3, 30, b"cp3")]
    assert store.checkpoints(after_size=1, limit=1) == [(2, 99, b"again")]


def test_the_outbox_skips_known_and_excluded_batches(evidence_store: AnyStore) -> None:
    store = evidence_store
    gw = SimGateway("gw-o")
    batches = [accepted(gw) for _ in range(4)]
    ids = [store.store_batch(b) for b in batches]
    pending = store.pending_influx(3, known={ids[1]}, exclude=[ids[0]])
    assert [p.id for p in pending] == ids[1:4]
    assert (pending[0].data, pending[0].issues) == (b"", {})  # known: its lines are in the writer
    assert pending[1].data == batches[2].data and pending[1].issues == {0: ("low_coverage",)}
    store.mark_influx(ids[:2])
    store.mark_influx([ids[2]], error="HTTP 400")
    assert [p.id for p in store.pending_influx(10)] == [ids[3]]
    assert store.influx_backlog() == (1, 1)
    store.mark_influx([])
    assert store.influx_backlog() == (1, 1)


def test_the_interval_cursor_pages_and_resumes_while_batches_arrive(evidence_store: AnyStore) -> None:
    store = evidence_store
    gw = SimGateway("gw-p", meters=("pv-01",))
    for _ in range(300):  # more than one page of candidate batches
        store.store_batch(accepted(gw, steps=1))
    every = list(store.attested_after())
    assert len(every) == 300 and [p for p, _ in every] == sorted(p for p, _ in every)
    middle = every[150][0]
    rest = list(store.attested_after(after=middle))
    assert rest == every[151:]
    store.store_batch(accepted(gw, steps=1))  # arrives after the cursor: next page has it
    later = list(store.attested_after(after=every[-1][0]))
    assert [a.batch.seq for _, a in later] == [301]
    window = list(store.attested_intervals(gateway="gw-p", start=T0 + 10 * STEP, end=T0 + 12 * STEP))
    assert [a.record.start for a in window] == [T0 + 10 * STEP, T0 + 11 * STEP]
    assert list(store.attested_intervals(gateway="gw-none")) == []


def test_the_schedule_sees_evidence_arrive(evidence_store: AnyStore) -> None:
    store = evidence_store
    gw = SimGateway("gw-s")
    assert store.latest_batch_id("gw-s") == 0
    assert store.evidence_reach("gw-s", ["pv-01"]) == (0, 0)
    first = store.store_batch(accepted(gw))  # T0 .. T0 + 2 steps
    assert store.latest_batch_id("gw-s") == first
    assert store.evidence_mark("gw-s", ["pv-01"], T0, T0 + STEP) == first
    assert store.evidence_mark("gw-s", ["pv-01"], T0 + 2 * STEP, T0 + 3 * STEP) == 0
    second = store.store_batch(accepted(gw))
    assert store.evidence_mark("gw-s", ["pv-01", "hm-01"], T0 + 2 * STEP, T0 + 3 * STEP) == second > first
    assert store.evidence_mark("gw-s", ["xx"], T0, T0 + 9 * STEP) == 0
    assert store.evidence_reach("gw-s", ["hm-01"]) == (T0 + 4 * STEP, 7)
