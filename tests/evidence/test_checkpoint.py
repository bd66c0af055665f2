"""Consistency proofs (RFC 9162 section 2.1.4) and checkpoint documents."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evidence.checkpoint import (
    ChainHead,
    consistency_proof,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    verify_consistency,
)
from evidence.errors import BadSignature, InvalidProof, MalformedMessage
from evidence.keys import generate_key
from evidence.merkle import leaf_hash, merkle_root

KEY, OTHER = generate_key(), generate_key()


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_every_prefix_is_proved_consistent(sizes: tuple[int, int]) -> None:
    n, m = sizes
    leaves = _leaves(n)
    proof = consistency_proof(leaves, m)
    verify_consistency(m, n, merkle_root(leaves[:m]), merkle_root(leaves), proof)


@given(
    st.integers(2, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1), st.integers(0, n - 1)))
)
def test_a_changed_or_removed_leaf_breaks_consistency(case: tuple[int, int, int]) -> None:
    n, m, victim = case
    leaves = _leaves(n)
    first_root = merkle_root(leaves[:m])
    changed = list(leaves)
    changed[victim] = hashlib.sha256(b"forged").digest()
    if victim < m:  # the earlier tree's leaves changed: no proof from the new tree can hold
        with pytest.raises(InvalidProof):
            verify_consistency(m, n, first_root, merkle_root(changed), consistency_proof(changed, m))
    removed = leaves[:victim] + leaves[victim + 1 :]
    if victim < m <= len(removed):
        with pytest.raises(InvalidProof):
            verify_consistency(m, n - 1, first_root, merkle_root(removed), consistency_proof(removed, m))


def test_a_log_cannot_shrink_or_fork_at_the_same_size() -> None:
    leaves = _leaves(5)
    with pytest.raises(InvalidProof, match="cannot shrink"):
        verify_consistency(5, 4, merkle_root(leaves), merkle_root(leaves[:4]), [])
    with pytest.raises(InvalidProof, match="different roots"):
        verify_consistency(5, 5, merkle_root(leaves), merkle_root(_leaves(5, b"x")), [])


def _cp(size: int = 3) -> bytes:
    leaves = _leaves(size)
    heads = {"gw-b": ChainHead(2, "b" * 64), "gw-a": ChainHead(7, "a" * 64)}
    return sign_checkpoint(KEY, size=size, root=merkle_root(leaves), chains=heads, created_ms=1).to_bytes()


def test_a_checkpoint_round_trips_and_verifies_with_the_pinned_key_only() -> None:
    data = _cp()
    cp = verify_checkpoint(data, KEY.public_key)
    assert (
        cp.size == 3 and list(cp.chains) == ["gw-a", "gw-b"] and cp.chains["gw-a"] == ChainHead(7, "a" * 64)
    )
    assert cp.to_bytes() == data
    with pytest.raises(InvalidProof, match=f"the trusted key is {OTHER.key_id}"):
        verify_checkpoint(data, OTHER.public_key)


def test_a_checkpoint_with_any_change_is_refused() -> None:
    data = _cp()
    with pytest.raises(BadSignature):
        verify_checkpoint(data.replace(b'"seq":7', b'"seq":6'), KEY.public_key)
    with pytest.raises(MalformedMessage, match="canonical"):
        parse_checkpoint(data.replace(b'"size":3', b'"size": 3'))
    with pytest.raises(MalformedMessage):
        parse_checkpoint(data[:-1])
