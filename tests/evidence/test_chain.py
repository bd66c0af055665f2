"""Chains of batches: gap, duplicate, fork and reorder are told apart."""

from hypothesis import given
from hypothesis import strategies as st

from evidence.batch import GENESIS_PREV, BatchHeader, SealedBatch, seal_batch
from evidence.chain import ChainTracker, ChainVerdict, verify_chain
from evidence.vectors import vector_key

KEY = vector_key()


def make_chain(n: int, gateway: str = "gw-1", start_prev: str = GENESIS_PREV) -> list[SealedBatch]:
    out: list[SealedBatch] = []
    prev = start_prev
    for seq in range(1, n + 1):
        b = seal_batch([f"r{seq}".encode()], key=KEY, gateway=gateway, seq=seq, prev=prev, created_ms=seq)
        out.append(b)
        prev = b.header_sha256
    return out


def pairs(batches: list[SealedBatch]) -> list[tuple[BatchHeader, str]]:
    return [(b.header, b.header_sha256) for b in batches]


def test_linear_chain_is_ok() -> None:
    report = verify_chain(pairs(make_chain(10)))
    assert report.ok


def test_gap_is_reported_with_missing_numbers() -> None:
    chain = make_chain(8)
    tracker = ChainTracker()
    steps = [tracker.observe(h, d) for h, d in pairs(chain[:3] + chain[5:])]
    assert [s.verdict for s in steps] == [ChainVerdict.APPEND] * 3 + [ChainVerdict.GAP] + [
        ChainVerdict.APPEND
    ] * 2
    assert steps[3].missing == (4, 5)
    assert tracker.missing() == [4, 5]
    report = verify_chain(pairs(chain[:3] + chain[5:]))
    assert report.missing == [4, 5] and not report.forks and not report.ok


def test_late_batch_fills_gap_as_reorder() -> None:
    chain = make_chain(5)
    order = [chain[0], chain[2], chain[1], chain[4], chain[3]]
    report = verify_chain(pairs(order))
    assert report.reorders == [2, 4] and report.missing == [] and not report.forks


def test_duplicate_is_not_a_fork() -> None:
    chain = make_chain(3)
    report = verify_chain(pairs([*chain, chain[1]]))
    assert report.duplicates == [2] and not report.forks


def test_different_content_for_same_seq_is_a_fork() -> None:
    chain = make_chain(3)
    rival = seal_batch([b"other"], key=KEY, gateway="gw-1", seq=2, prev=chain[0].header_sha256, created_ms=2)
    report = verify_chain(pairs([*chain, rival]))
    assert [seq for seq, _ in report.forks] == [2]
    assert "already has header" in report.forks[0][1]


def test_broken_prev_link_is_a_fork_on_either_side() -> None:
    chain = make_chain(4)
    bad_prev = seal_batch([b"x"], key=KEY, gateway="gw-1", seq=3, prev="ab" * 32, created_ms=3)
    report = verify_chain(pairs([chain[0], chain[1], bad_prev]))
    assert report.forks and "does not match seq 2" in report.forks[0][1]
    # Successor known first: a late seq 3 must be the one seq 4 names.
    tracker = ChainTracker()
    for h, d in pairs([chain[0], chain[1], chain[3]]):
        tracker.observe(h, d)
    rival3 = seal_batch([b"y"], key=KEY, gateway="gw-1", seq=3, prev=chain[1].header_sha256, created_ms=3)
    step = tracker.observe(rival3.header, rival3.header_sha256)
    assert step.verdict is ChainVerdict.FORK and "seq 4 names a different predecessor" in step.reason
    assert tracker.observe(chain[2].header, chain[2].header_sha256).verdict is ChainVerdict.REORDER


def test_first_batch_must_start_from_genesis() -> None:
    chain = make_chain(1, start_prev="cd" * 32)
    report = verify_chain(pairs(chain))
    assert report.forks and "seq 1 must have prev" in report.forks[0][1]


@given(st.permutations(list(range(12))))
def test_any_arrival_order_of_a_genuine_chain_has_no_fork_and_nothing_missing(order: list[int]) -> None:
    chain = make_chain(12)
    report = verify_chain(pairs([chain[i] for i in order]))
    assert not report.forks and not report.missing and not report.duplicates
    assert (report.reorders == []) == (order == sorted(order))
