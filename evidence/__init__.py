"""puhui's evidence format, shared by the gateway and the aggregator.

A gateway turns metered intervals into **records** (one canonical JSON object each, encoded
once), seals a list of records into a **batch** whose header carries the RFC 6962 Merkle root
of the records' exact bytes, the per-gateway sequence number and the hash of the previous
header, and signs the header bytes with its ECDSA P-256 key. Anyone holding the gateway's
public key can check a whole batch, a chain of batches, or one record with its inclusion
proof, without re-serialising anything. See docs/evidence-format.md.
"""

from evidence.batch import (
    FORMAT,
    BatchHeader,
    SealedBatch,
    VerifiedBatch,
    header_hash,
    parse_batch,
    seal_batch,
    verify_batch,
)
from evidence.chain import ChainReport, ChainTracker, ChainVerdict, verify_chain
from evidence.keys import (
    GatewayKey,
    PublicKey,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    public_key_der,
    public_key_pem,
    save_private_key,
)
from evidence.merkle import (
    InclusionProof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_inclusion,
)
from evidence.records import (
    DropRecord,
    IntervalRecord,
    KeyRotationRecord,
    Record,
    SessionRecord,
    Stats,
    decode_record,
    encode_record,
)

__all__ = [
    "FORMAT",
    "BatchHeader",
    "ChainReport",
    "ChainTracker",
    "ChainVerdict",
    "DropRecord",
    "GatewayKey",
    "InclusionProof",
    "IntervalRecord",
    "KeyRotationRecord",
    "PublicKey",
    "Record",
    "SealedBatch",
    "SessionRecord",
    "Stats",
    "VerifiedBatch",
    "decode_record",
    "encode_record",
    "generate_key",
    "header_hash",
    "inclusion_proof",
    "key_id",
    "leaf_hash",
    "load_private_key",
    "load_public_key",
    "merkle_root",
    "parse_batch",
    "public_key_der",
    "public_key_pem",
    "save_private_key",
    "seal_batch",
    "verify_batch",
    "verify_chain",
    "verify_inclusion",
]
