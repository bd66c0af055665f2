"""pytest-benchmark view of sealing and verifying a batch of 1,000 records.

Run: .venv/bin/python -m pytest bench/test_bench_evidence.py --benchmark-enable
(not part of `make test`: testpaths is tests/).
"""

from typing import Any

from bench.evidence_bench import BATCH, sample_records
from evidence.batch import GENESIS_PREV, seal_batch, verify_batch
from evidence.keys import generate_key
from evidence.records import encode_record

KEY = generate_key()
RECORDS = sample_records()


def _seal() -> bytes:
    encoded = [encode_record(r) for r in RECORDS]
    return seal_batch(encoded, key=KEY, gateway="gw-bench", seq=1, prev=GENESIS_PREV, created_ms=0).to_bytes()


def test_seal_1000(benchmark: Any) -> None:
    data = benchmark(_seal)
    assert verify_batch(data, KEY.public_key).header.count == BATCH


def test_verify_1000(benchmark: Any) -> None:
    data = _seal()
    verified = benchmark(verify_batch, data, KEY.public_key)
    assert verified.header.count == BATCH
