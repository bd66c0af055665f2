"""Rotating a gateway's signing key through its own chain (``puhui gateway rotate-key``).

The next key is announced in a ``key_rotation`` record (:class:`evidence.KeyRotationRecord`)
sealed into a batch signed by the current key, effective from the batch after it; the
aggregator verifies the announcement with the key it already trusts and takes the new key
for higher sequence numbers only. Steps, each safe to interrupt:

1. the new key is written next to the current one as ``<key_file>.next`` (0600), or an
   existing one from an interrupted rotation is reused;
2. the rotation batch is sealed into the outbox in one transaction (pending records stay
   pending: they are sealed after it, with the new key);
3. ``<key_file>.next`` replaces ``<key_file>`` (rename, atomic). The old private key is gone:
   what it signed stays verifiable with its public key, which the aggregator keeps.

:func:`finish_rotation` runs at every gateway start: a ``.next`` key whose rotation batch is
already in the outbox completes step 3; one without it is reported and left alone.
Run while the gateway is stopped (one process owns the state directory).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common.clock import Clock
from evidence.batch import parse_batch, seal_batch
from evidence.errors import EvidenceError
from evidence.keys import GatewayKey, generate_key, load_private_key, public_key_b64, save_private_key
from evidence.records import KeyRotationRecord, decode_record, encode_record
from gateway.errors import GatewayError
from gateway.evidence_config import EvidenceSettings
from gateway.store import EvidenceStore

log = logging.getLogger(__name__)


class RotationError(GatewayError):
    """A key rotation that cannot go on (the message says why and what is kept)."""


@dataclass(frozen=True, slots=True)
class Rotation:
    old_key_id: str
    new_key_id: str
    batch_seq: int  # the batch announcing the new key (signed by the old one)
    effective_seq: int  # the first batch signed by the new key


def next_key_path(key_file: str | os.PathLike[str]) -> Path:
    path = Path(key_file)
    return path.with_name(path.name + ".next")


def rotate_key(evidence: EvidenceSettings, *, gateway_id: str, clock: Clock) -> Rotation:
    """Announce a new key in the chain and make it the gateway's key (see the module doc)."""
    key_path, next_path = Path(evidence.key_file), next_key_path(evidence.key_file)
    try:
        current = load_private_key(key_path)
        new = load_private_key(next_path) if next_path.exists() else _new_key(next_path)
    except EvidenceError as exc:
        raise RotationError(f"{exc}; nothing was rotated") from exc
    if new.key_id == current.key_id:
        raise RotationError(f"{next_path} holds the current key {current.key_id}; remove it and retry")
    store = EvidenceStore.open(evidence.state_dir, gateway_id=gateway_id)
    try:
        rotation = _announced(store, new.key_id) or _seal_announcement(store, current, new, gateway_id, clock)
    finally:
        store.close()
    next_path.replace(key_path)
    log.warning("gateway %s: key %s replaced by %s from seq %d", gateway_id, current.key_id,
                new.key_id, rotation.effective_seq)  # fmt: skip
    return rotation


def finish_rotation(evidence: EvidenceSettings, store: EvidenceStore) -> Rotation | None:
    """Complete a rotation interrupted after its batch was sealed; None when there is none
    to complete (a ``.next`` key not yet announced is reported and left alone)."""
    next_path = next_key_path(evidence.key_file)
    if not next_path.exists():
        return None
    try:
        new = load_private_key(next_path)
    except EvidenceError as exc:
        raise RotationError(f"an interrupted key rotation left {next_path}: {exc}") from exc
    rotation = _announced(store, new.key_id)
    if rotation is None:
        log.warning("%s: a key rotation was started but not announced; `puhui gateway rotate-key` "
                    "finishes it; signing with the current key meanwhile", next_path)  # fmt: skip
        return None
    next_path.replace(Path(evidence.key_file))
    log.warning("key rotation to %s completed at start (announced in seq %d)", new.key_id, rotation.batch_seq)
    return rotation


def _new_key(path: Path) -> GatewayKey:
    key = generate_key()
    save_private_key(key, path)
    return key


def _announced(store: EvidenceStore, new_key_id: str) -> Rotation | None:
    """The rotation batch for ``new_key_id`` in the outbox, if there is one."""
    for stored in store.outbox("data"):
        batch = parse_batch(store.batch_data(stored.seq))
        for line in batch.records:
            record = decode_record(line)
            if isinstance(record, KeyRotationRecord) and record.new_key_id == new_key_id:
                return Rotation(batch.header.key_id, new_key_id, stored.seq, record.effective_seq)
    return None


def _seal_announcement(
    store: EvidenceStore, current: GatewayKey, new: GatewayKey, gateway_id: str, clock: Clock
) -> Rotation:
    with store.transaction():
        seq, prev = store.chain_head()
        record = KeyRotationRecord(new.key_id, public_key_b64(new.public_key), effective_seq=seq + 2)
        batch = seal_batch([encode_record(record)], key=current, gateway=gateway_id, seq=seq + 1, prev=prev,
                           created_ms=round(clock.now() * 1000))  # fmt: skip
        store.insert_batch(batch, batch.to_bytes(), "data")
        store.set_chain_head(batch.header.seq, batch.header_sha256)
    return Rotation(current.key_id, new.key_id, seq + 1, seq + 2)
