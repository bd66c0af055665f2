"""Batches: sealing, verification, and that any altered byte is caught."""

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evidence.batch import (
    GENESIS_PREV,
    parse_batch,
    seal_batch,
    signature_line,
    verify_batch,
    verify_record,
)
from evidence.errors import (
    BadSignature,
    CountMismatch,
    EvidenceError,
    InvalidProof,
    KeyMismatch,
    MalformedBatch,
    RootMismatch,
)
from evidence.keys import generate_key
from evidence.merkle import InclusionProof
from evidence.vectors import sample_batch, vector_key

KEY = vector_key()
BATCH = sample_batch(KEY)
DATA = BATCH.to_bytes()


def test_sealed_batch_verifies_and_round_trips() -> None:
    verified = verify_batch(DATA, KEY.public_key)
    assert verified.header == BATCH.header
    assert parse_batch(DATA) == BATCH
    assert verified.sealed.records == BATCH.records


def test_empty_batch_is_valid() -> None:
    b = seal_batch([], key=KEY, gateway="gw", seq=1, prev=GENESIS_PREV, created_ms=0)
    assert verify_batch(b.to_bytes(), KEY.public_key).header.count == 0


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_flipping_any_byte_fails_verification(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(DATA) - 1), label="position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != DATA[pos]), label="byte")
    tampered = DATA[:pos] + bytes([new]) + DATA[pos + 1 :]
    with pytest.raises(EvidenceError):
        verify_batch(tampered, KEY.public_key)


@pytest.mark.parametrize("part", ["header", "signature", "record"])
def test_each_part_tampered_fails_with_its_own_error(part: str) -> None:
    lines = DATA.split(b"\n")
    if part == "header":
        lines[0] = lines[0].replace(b'"seq":1', b'"seq":2')
        expected: type[EvidenceError] = BadSignature
    elif part == "signature":
        sig = bytearray(BATCH.signature)
        sig[-1] ^= 1
        lines[1] = signature_line(bytes(sig))
        expected = BadSignature
    else:
        lines[2] = lines[2].replace(b'"delta":11.5', b'"delta":11.6')
        expected = RootMismatch
    with pytest.raises(expected, match="batch zjk-village-01#"):
        verify_batch(b"\n".join(lines), KEY.public_key)


def test_dropped_or_reordered_records_fail() -> None:
    lines = DATA.split(b"\n")
    with pytest.raises(CountMismatch):
        verify_batch(b"\n".join(lines[:3] + lines[4:]), KEY.public_key)
    swapped = [*lines[:2], lines[3], lines[2], *lines[4:]]
    with pytest.raises(RootMismatch):
        verify_batch(b"\n".join(swapped), KEY.public_key)


def test_other_key_is_a_key_mismatch_and_forged_key_id_a_bad_signature() -> None:
    other = generate_key()
    with pytest.raises(KeyMismatch, match="header names key"):
        verify_batch(DATA, other.public_key)
    forged = DATA.replace(KEY.key_id.encode(), other.key_id.encode())
    with pytest.raises(BadSignature):
        verify_batch(forged, other.public_key)


def test_non_canonical_signature_encoding_is_refused() -> None:
    # Base64 of a 70/71-byte DER signature leaves unused bits in its last character:
    # a lenient decoder reads a changed line as the same signature.
    b64 = base64.b64encode(BATCH.signature).decode()
    assert b64.endswith("=")  # the vector's signature has unused bits to play with
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = b64.rstrip("=")[-1]
    twins = [
        c
        for c in alphabet
        if c != last and base64.b64decode(b64.rstrip("=")[:-1] + c + "=" * b64.count("=")) == BATCH.signature
    ]
    assert twins, "expected another spelling of the same signature bytes"
    lines = DATA.split(b"\n")
    for spelling in (
        lines[1].replace(last.encode() + b"=", twins[0].encode() + b"="),
        lines[1].replace(b'{"alg"', b'{ "alg"'),
    ):
        with pytest.raises(MalformedBatch, match="canonical"):
            parse_batch(b"\n".join([lines[0], spelling, *lines[2:]]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "header line, a signature line"),
        (DATA.rstrip(b"\n"), "ending in a newline"),
        (b"{}\n{}\n", "header keys must be"),
        (DATA.replace(b'"format":"puhui-batch/1"', b'"format":"puhui-batch/9"'), "puhui-batch/9"),
        (DATA.replace(b'"gateway":"zjk-village-01"', b'"gateway":"zjk/#"'), "header.gateway"),
        (DATA.replace(b'"seq":1', b'"seq":0'), "header.seq must be >= 1"),
        (DATA.replace(b'"alg":"ECDSA-P256-SHA256"', b'"alg":"Ed25519"'), "signature line: alg"),
    ],
)
def test_malformed_batches_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(MalformedBatch, match=message):
        parse_batch(data)


def test_single_record_verification() -> None:
    verified = verify_batch(DATA, KEY.public_key)
    for i, rec in enumerate(BATCH.records):
        proof = verified.proof(i)
        header = verify_record(rec, proof, BATCH.header_bytes, BATCH.signature, KEY.public_key)
        assert header.seq == 1
    with pytest.raises(InvalidProof):
        verify_record(
            BATCH.records[1], verified.proof(0), BATCH.header_bytes, BATCH.signature, KEY.public_key
        )
    with pytest.raises(CountMismatch):
        bad = InclusionProof(0, 3, verified.proof(0).path)
        verify_record(BATCH.records[0], bad, BATCH.header_bytes, BATCH.signature, KEY.public_key)


def test_seal_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        seal_batch([], key=KEY, gateway="gw", seq=0, prev=GENESIS_PREV, created_ms=0)
    with pytest.raises(MalformedBatch, match="newline"):
        seal_batch([b"a\nb"], key=KEY, gateway="gw", seq=1, prev=GENESIS_PREV, created_ms=0)
