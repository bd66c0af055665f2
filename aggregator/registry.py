"""The gateway registry: who may send batches, with which key, for which sequence numbers.

- **Enrol** from the gateway's self-signed enrolment document (:mod:`evidence.enrolment`):
  gateway, site, region, meters with nameplate and scenario, and the key, valid from
  ``seq`` 1 (or, for a gateway whose keys were all revoked, from the next sequence number).
- **Revoke** a key from a time on: batches whose ``created_ms`` is at or after that time
  are refused (``revoked_key``); earlier batches still arriving from the gateway's outbox
  are accepted.
- **Rotate**: a ``key_rotation`` record in a verified, accepted batch signed by the current
  key adds the new key, valid from ``effective_seq``; the old key is valid for lower
  sequence numbers only.

The key valid for a batch ``(seq, created_ms)`` is the key the header names, provided it
belongs to the gateway, ``valid_from_seq <= seq`` and no later key of the gateway has taken
over at or below ``seq``, and it is not revoked at ``created_ms``.

The registry lives in the evidence store (its tables) and is cached here; the cache reloads
when the store's ``registry_version`` moved (a ``gateways add``/``revoke`` from the command
line, or another aggregator process).
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import UnsupportedAlgorithm

from aggregator.errors import AlreadyEnrolled, NotEnrolled, RevokedKey, UnknownGateway, UnknownKey
from aggregator.store import GatewayEntry, KeyEntry, RegistryStore
from aggregator.view import MeterInfo
from evidence.batch import BatchHeader
from evidence.enrolment import EnrolmentDocument, parse_enrolment
from evidence.errors import EvidenceError, MalformedRecord
from evidence.keys import PublicKey, key_id, load_public_key
from evidence.records import KeyRotationRecord


class GatewayRegistry:
    """Enrolled gateways and their keys, cached from the store."""

    def __init__(self, store: RegistryStore) -> None:
        self._store = store
        self._version = -1
        self._gateways: dict[str, GatewayEntry] = {}
        self._keys: dict[tuple[str, str], PublicKey] = {}
        self.refresh()

    def refresh(self, *, force: bool = False) -> None:
        """Reload from the store if it changed since the last load (or always, with force)."""
        version = self._store.registry_version()
        if version == self._version and not force:
            return
        gateways = {g.gateway: g for g in self._store.gateways()}
        keys = {
            (k.gateway, k.key_id): load_public_key(k.public_key_der)
            for g in gateways.values()
            for k in g.keys
        }
        self._gateways, self._keys, self._version = gateways, keys, version

    def gateways(self) -> list[GatewayEntry]:
        return list(self._gateways.values())

    def get(self, gateway: str) -> GatewayEntry | None:
        return self._gateways.get(gateway)

    def meters(self, gateway: str) -> dict[str, MeterInfo]:
        entry = self._gateways.get(gateway)
        return {} if entry is None else {m.meter: m for m in entry.meters}

    # -- operator actions ----------------------------------------------------------------

    def enrol(self, document: bytes, *, at_ms: int) -> GatewayEntry:
        """Enrol (or update the meters of) a gateway from its enrolment document.

        The same key again updates site, region and meters. A new key is accepted only when
        every key the gateway had is revoked; it is valid from the next sequence number.
        Raises :mod:`evidence.errors` for a document that does not verify, and
        :class:`AlreadyEnrolled` for a second live key.
        """
        doc = parse_enrolment(document)
        self.refresh()
        existing = self._gateways.get(doc.gateway)
        keys: tuple[KeyEntry, ...] = ()
        if existing is None or all(k.key_id != doc.key_id for k in existing.keys):
            keys = (self._new_key(doc, existing, at_ms),)
        entry = GatewayEntry(
            gateway=doc.gateway,
            site=doc.site,
            region=doc.region,
            enrolled_ms=at_ms,
            meters=tuple(
                MeterInfo(
                    doc.gateway,
                    m.id,
                    m.scenario,
                    m.rated_power_kw,
                    m.meter_class,
                    doc.region,
                    m.calibrated_until,
                )
                for m in doc.meters
            ),
            keys=keys,
            document=document,
        )
        self._store.save_enrolment(entry, at_ms)
        self.refresh(force=True)
        return self._gateways[doc.gateway]

    def _new_key(self, doc: EnrolmentDocument, existing: GatewayEntry | None, at_ms: int) -> KeyEntry:
        der = base64.b64decode(doc.public_key)
        if existing is None:
            return KeyEntry(doc.gateway, doc.key_id, der, 1, "enrolment", at_ms)
        live = [k.key_id for k in existing.keys if k.revoked_from_ms is None]
        if live:
            raise AlreadyEnrolled(
                f"gateway {doc.gateway} is enrolled with key {live[0]}; revoke it first "
                f"(puhui aggregator gateways revoke {doc.gateway}) or rotate keys from the gateway"
            )
        next_seq = self._store.highest_seq(doc.gateway) + 1
        return KeyEntry(doc.gateway, doc.key_id, der, next_seq, "enrolment", at_ms)

    def revoke(self, gateway: str, *, from_ms: int, key: str | None = None) -> list[str]:
        """Revoke ``key`` (default: every key of the gateway) from ``from_ms`` on."""
        self.refresh()
        entry = self._gateways.get(gateway)
        if entry is None:
            raise UnknownGateway(f"gateway {gateway} is not enrolled")
        ids = [k.key_id for k in entry.keys if key is None or k.key_id == key]
        if not ids:
            raise UnknownKey(f"gateway {gateway} has no key {key}")
        for kid in ids:
            self._store.revoke_key(gateway, kid, from_ms)
        self.refresh(force=True)
        return ids

    # -- ingest ----------------------------------------------------------------------------

    def key_for(self, header: BatchHeader) -> PublicKey:
        """The public key that may have signed this batch, or a :class:`KeyRejected`."""
        self.refresh()
        entry = self._gateways.get(header.gateway)
        if entry is None:
            raise NotEnrolled(f"{header.label}: gateway {header.gateway} is not enrolled")
        key = next((k for k in entry.keys if k.key_id == header.key_id), None)
        if key is None:
            raise UnknownKey(f"{header.label}: key {header.key_id} is not a key of gateway {header.gateway}")
        if header.seq < key.valid_from_seq:
            raise UnknownKey(f"{header.label}: key {key.key_id} is valid from seq {key.valid_from_seq} only")
        successor = min(
            (k.valid_from_seq for k in entry.keys if key.valid_from_seq < k.valid_from_seq), default=None
        )
        if successor is not None and header.seq >= successor:
            raise RevokedKey(
                f"{header.label}: key {key.key_id} was superseded from seq {successor} by a rotation"
            )
        if key.revoked_from_ms is not None and header.created_ms >= key.revoked_from_ms:
            raise RevokedKey(
                f"{header.label}: key {key.key_id} is revoked from {key.revoked_from_ms} ms, "
                f"batch created at {header.created_ms} ms"
            )
        return self._keys[(header.gateway, header.key_id)]

    def rotation_entry(self, header: BatchHeader, record: KeyRotationRecord, at_ms: int) -> KeyEntry | None:
        """The key a rotation record announces, checked; None if it is already known.

        Raises :class:`MalformedRecord` when the announcement is inconsistent.
        """
        where = f"{header.label}: key_rotation"
        try:
            der = base64.b64decode(record.new_public_key, validate=True)
            new_key = load_public_key(der)
        except (binascii.Error, ValueError, EvidenceError, UnsupportedAlgorithm) as exc:
            raise MalformedRecord(f"{where}: new_public_key: {exc}") from exc
        if key_id(new_key) != record.new_key_id:
            raise MalformedRecord(
                f"{where}: new_key_id {record.new_key_id} is not the key's id {key_id(new_key)}"
            )
        if record.effective_seq <= header.seq:
            raise MalformedRecord(
                f"{where}: effective_seq {record.effective_seq} must be after seq {header.seq}"
            )
        entry = self._gateways.get(header.gateway)
        if entry is not None and any(k.key_id == record.new_key_id for k in entry.keys):
            return None
        return KeyEntry(
            header.gateway, record.new_key_id, der, record.effective_seq, f"rotation@{header.seq}", at_ms
        )

    def added(self, key: KeyEntry) -> None:
        """A rotation key was committed with its batch: take it into the cache."""
        self.refresh(force=True)
