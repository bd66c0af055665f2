"""RFC 6962 Merkle trees: golden roots from Certificate Transparency, proofs for all shapes."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evidence.errors import InvalidProof
from evidence.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    merkle_root_of,
    node_hash,
    verify_inclusion,
)

# The leaves and roots of the RFC 6962 reference tests (certificate-transparency).
CT_LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_match_rfc6962_reference(n: int) -> None:
    leaves = [bytes.fromhex(h) for h in CT_LEAVES[:n]]
    assert merkle_root_of(leaves).hex() == CT_ROOTS[n - 1]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def _rfc6962_root(hashes: list[bytes]) -> bytes:
    """The recursive definition (split at the largest power of two below n)."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(_rfc6962_root(hashes[:k]), _rfc6962_root(hashes[k:]))


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=70))
def test_root_equals_recursive_definition(leaves: list[bytes]) -> None:
    hashes = [leaf_hash(x) for x in leaves]
    assert merkle_root(hashes) == _rfc6962_root(hashes)


@given(st.integers(min_value=1, max_value=300), st.data())
def test_every_proof_verifies_and_wrong_leaf_does_not(size: int, data: st.DataObject) -> None:
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    root = merkle_root(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = inclusion_proof(hashes, index)
    verify_inclusion(hashes[index], proof, root)
    with pytest.raises(InvalidProof):
        verify_inclusion(leaf_hash(b"forged"), proof, root)
    if size > 1:  # the same path at another index must fail
        other = (index + 1) % size
        with pytest.raises(InvalidProof):
            verify_inclusion(hashes[index], InclusionProof(other, size, proof.path), root)


def test_proof_of_wrong_length_is_rejected() -> None:
    hashes = [leaf_hash(bytes([i])) for i in range(5)]
    root = merkle_root(hashes)
    proof = inclusion_proof(hashes, 1)
    with pytest.raises(InvalidProof, match="shorter"):
        verify_inclusion(hashes[1], InclusionProof(1, 5, proof.path[:-1]), root)
    with pytest.raises(InvalidProof, match="longer"):
        verify_inclusion(hashes[1], InclusionProof(1, 5, (*proof.path, b"\0" * 32)), root)
    with pytest.raises(InvalidProof, match="outside"):
        verify_inclusion(hashes[1], InclusionProof(7, 5, proof.path), root)


def test_proof_json_round_trip_and_malformed() -> None:
    hashes = [leaf_hash(bytes([i])) for i in range(6)]
    proof = inclusion_proof(hashes, 4)
    assert InclusionProof.from_json(proof.to_json()) == proof
    with pytest.raises(InvalidProof, match="malformed"):
        InclusionProof.from_json({"index": 1, "path": []})
