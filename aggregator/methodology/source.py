"""Where the methodology engine reads attested evidence from: a small Protocol.

The aggregator's evidence store (``aggregator.store.EvidenceStore``) implements it; tests
implement it over real sealed batches (tests/aggregator/methodology/evidence_fixture.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Protocol

from aggregator.view import AttestedInterval, MeterInfo
from evidence.keys import PublicKey


class EvidenceSource(Protocol):
    """Attested intervals, the batches they came from, and the gateways' public keys."""

    def meters(self) -> list[MeterInfo]:
        """Every enrolled meter."""
        ...

    def attested_intervals(
        self,
        *,
        gateway: str | None = None,
        meters: Collection[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[AttestedInterval]:
        """Interval records of verified batches; ``start``/``end`` are POSIX seconds and
        select records with ``record.start >= start`` and ``record.end <= end``."""
        ...

    def batch_bytes(self, gateway: str, seq: int) -> bytes | None:
        """The exact bytes of a stored batch, or None."""
        ...

    def gateway_public_key(self, gateway: str, key_id: str) -> PublicKey | None:
        """The gateway's public key with this key id, or None if unknown."""
        ...
