"""Test vectors of the evidence format, made from a fixed (public, test-only) key.

Signing is deterministic (RFC 6979), so the same key and records always give the same
bytes: ``puhui evidence make-vectors DIR`` rewrites them and a test checks that the files
in ``docs/vectors/`` are exactly what the code produces.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from evidence.batch import GENESIS_PREV, SealedBatch, seal_batch
from evidence.keys import GatewayKey, PublicKey, public_key_pem
from evidence.merkle import inclusion_proof, leaf_hash
from evidence.records import IntervalRecord, Record, Stats, encode_record

# A fixed P-256 scalar: this key is public and must never sign real data.
TEST_KEY_SCALAR = 0x5EED_0F_9A1E_3A7E_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0001
GATEWAY = "zjk-village-01"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def vector_key() -> GatewayKey:
    return GatewayKey(ec.derive_private_key(TEST_KEY_SCALAR, ec.SECP256R1()))


def sample_records() -> list[Record]:
    """A heat meter, its boiler's electricity meter and a flow temperature, one hour."""
    out: list[Record] = []
    for i in range(4):
        s, e = T0 + 900 * i, T0 + 900 * (i + 1)
        out.append(
            IntervalRecord(
                "hm-01", "heat_energy", "kWh", s, e, "counter",
                1520.25 + 11.5 * i, (s - 3) * 1000, 1520.25 + 11.5 * (i + 1), (e - 3) * 1000,
                11.5, Stats("kW", 44.5, 46.0, 47.25), 90, 90,
                ("first",) if i == 0 else (),
            )
        )  # fmt: skip
        out.append(
            IntervalRecord(
                "em-01", "energy_import", "kWh", s, e, "counter",
                830.5 + 4.125 * i, (s - 2) * 1000, 830.5 + 4.125 * (i + 1), (e - 2) * 1000,
                4.125, Stats("W", 15800.0, 16500.0, 17100.0), 89 if i == 2 else 90, 90,
                ("gap",) if i == 2 else (),
            )
        )  # fmt: skip
    out.append(
        IntervalRecord(
            "hm-01", "flow_temperature", "degC", T0, T0 + 3600, "gauge",
            stats=Stats("degC", 54.0, 55.5, 57.0), samples=360, expected=360,
        )
    )  # fmt: skip
    return out


def sample_batch(key: GatewayKey | None = None) -> SealedBatch:
    records = [encode_record(r) for r in sample_records()]
    return seal_batch(
        records, key=key or vector_key(), gateway=GATEWAY, seq=1, prev=GENESIS_PREV,
        created_ms=(T0 + 3600) * 1000 + 250,
    )  # fmt: skip


def record_proof_document(batch: SealedBatch, index: int, key: GatewayKey | PublicKey) -> dict[str, object]:
    """Everything a third party needs to verify one record on its own."""
    leaves = [leaf_hash(r) for r in batch.records]
    return {
        "record": batch.records[index].decode("ascii"),
        "proof": inclusion_proof(leaves, index).to_json(),
        "header": batch.header_bytes.decode("ascii"),
        "signature": base64.b64encode(batch.signature).decode("ascii"),
        "public_key_pem": public_key_pem(key if isinstance(key, PublicKey) else key.public_key).decode(),
    }


def write_vectors(directory: Path) -> list[Path]:
    key = vector_key()
    batch = sample_batch(key)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "test-gateway-key.pem": key.private_pem(),
        "test-gateway-key.pub.pem": public_key_pem(key.public_key),
        "batch-1.jsonl": batch.to_bytes(),
        "record-proof.json": (json.dumps(record_proof_document(batch, 2, key), indent=2) + "\n").encode(),
        "expected.json": (
            json.dumps(
                {
                    "key_id": key.key_id,
                    "header_sha256": batch.header_sha256,
                    "root": batch.header.root,
                    "leaf_hashes": [leaf_hash(r).hex() for r in batch.records],
                    "public_key_der_b64": base64.b64encode(
                        key.public_key.public_bytes(
                            serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo,
                        )
                    ).decode(),
                },
                indent=2,
            )
            + "\n"
        ).encode(),
    }
    paths = []
    for name, data in files.items():
        p = directory / name
        p.write_bytes(data)
        paths.append(p)
    (directory / "test-gateway-key.pem").chmod(0o600)
    return paths
