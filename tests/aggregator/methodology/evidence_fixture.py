"""An EvidenceSource over real sealed batches, for the methodology tests.

Records are encoded with :func:`evidence.encode_record`, sealed with
:func:`evidence.seal_batch` under generated P-256 gateway keys into hash-chained batches,
and "ingested" the way the aggregator does: :func:`evidence.verify_batch`, then
:func:`evidence.decode_record` of each leaf. Plausibility verdicts are attached per record
at ingest. Tests may then tamper with the stored bytes or verdicts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from evidence import GatewayKey, IntervalRecord, PublicKey, decode_record, encode_record, generate_key
from evidence.batch import GENESIS_PREV, seal_batch, verify_batch
from evidence.records import Stats

T0 = 1_750_464_000  # 2025-06-21T00:00:00Z, a multiple of 900
IssueKey = tuple[str, str, int]  # meter, quantity, start


class SealedEvidence:
    """Implements :class:`aggregator.methodology.EvidenceSource` over real batches."""

    def __init__(self) -> None:
        self.keys: dict[str, GatewayKey] = {}
        self._meters: list[MeterInfo] = []
        self._bytes: dict[tuple[str, int], bytes] = {}
        self._intervals: list[AttestedInterval] = []
        self._last: dict[str, tuple[int, str]] = {}

    # -- setting up -----------------------------------------------------------------------

    def enrol(self, *infos: MeterInfo) -> None:
        for info in infos:
            self.keys.setdefault(info.gateway, generate_key())
            self._meters.append(info)

    def enrol_again(self, info: MeterInfo) -> None:
        """Replace a meter's enrolment (as a new enrolment document of its gateway does)."""
        self._meters = [
            info if (m.gateway, m.meter) == (info.gateway, info.meter) else m for m in self._meters
        ]

    def seal(
        self,
        gateway: str,
        records: Sequence[IntervalRecord],
        *,
        issues: Mapping[IssueKey, tuple[str, ...]] | None = None,
        batch_size: int = 50,
    ) -> list[int]:
        """Seal records into consecutive batches and ingest them; returns their seqs."""
        key = self.keys.setdefault(gateway, generate_key())
        seqs = []
        for i in range(0, len(records), batch_size):
            seq, prev = self._last.get(gateway, (0, GENESIS_PREV))
            chunk = [encode_record(r) for r in records[i : i + batch_size]]
            sealed = seal_batch(chunk, key=key, gateway=gateway, seq=seq + 1, prev=prev, created_ms=0)
            self._last[gateway] = (seq + 1, sealed.header_sha256)
            self._bytes[(gateway, seq + 1)] = sealed.to_bytes()
            self._ingest(gateway, seq + 1, key.public_key, issues or {})
            seqs.append(seq + 1)
        return seqs

    def _ingest(
        self, gateway: str, seq: int, key: PublicKey, issues: Mapping[IssueKey, tuple[str, ...]]
    ) -> None:
        verified = verify_batch(self._bytes[(gateway, seq)], key)
        h = verified.header
        ref = BatchRef(gateway, seq, verified.sealed.header_sha256, h.root, h.key_id)
        for index, raw in enumerate(verified.sealed.records):
            rec = decode_record(raw)
            assert isinstance(rec, IntervalRecord)
            found = issues.get((rec.meter, rec.quantity, rec.start), ())
            self._intervals.append(AttestedInterval(ref, index, rec, found))

    # -- tampering ------------------------------------------------------------------------

    def replace_bytes(self, gateway: str, seq: int, data: bytes) -> None:
        self._bytes[(gateway, seq)] = data

    def drop_batch(self, gateway: str, seq: int) -> None:
        del self._bytes[(gateway, seq)]

    def set_issues(self, meter: str, quantity: str, start: int, issues: tuple[str, ...]) -> None:
        self._intervals = [
            AttestedInterval(ai.batch, ai.index, ai.record, issues)
            if (ai.record.meter, ai.record.quantity, ai.record.start) == (meter, quantity, start)
            else ai
            for ai in self._intervals
        ]

    # -- EvidenceSource -------------------------------------------------------------------

    def meters(self) -> list[MeterInfo]:
        return list(self._meters)

    def attested_intervals(
        self,
        *,
        gateway: str | None = None,
        meters: Collection[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[AttestedInterval]:
        wanted = None if meters is None else set(meters)
        for ai in self._intervals:
            r = ai.record
            if gateway is not None and ai.batch.gateway != gateway:
                continue
            if wanted is not None and r.meter not in wanted:
                continue
            if (start is not None and r.start < start) or (end is not None and r.end > end):
                continue
            yield ai

    def batch_bytes(self, gateway: str, seq: int) -> bytes | None:
        return self._bytes.get((gateway, seq))

    def gateway_public_key(self, gateway: str, key_id: str) -> PublicKey | None:
        key = self.keys.get(gateway)
        return key.public_key if key is not None and key.key_id == key_id else None


def counter_records(
    meter: str,
    quantity: str,
    deltas: Sequence[float | None],
    *,
    unit: str = "kWh",
    start: int = T0,
    length: int = 900,
    flags: Mapping[int, tuple[str, ...]] | None = None,
    first_value: float = 1000.0,
) -> list[IntervalRecord]:
    """Consecutive counter records; a ``None`` delta is an interval without readings (gap)."""
    out = []
    value = first_value
    flags = flags or {}
    for i, d in enumerate(deltas):
        s = start + i * length
        if d is None:
            out.append(
                IntervalRecord(meter, quantity, unit, s, s + length, samples=0, expected=90, flags=("gap",))
            )
            continue
        out.append(
            IntervalRecord(
                meter,
                quantity,
                unit,
                s,
                s + length,
                counter_start=value,
                counter_start_time_ms=s * 1000 - 3000,
                counter_end=value + d,
                counter_end_time_ms=(s + length) * 1000 - 3000,
                delta=float(d),
                stats=Stats("W", 0.0, d * 3600.0 / length, d * 4000.0 / length),
                samples=90,
                expected=90,
                flags=tuple(sorted(flags.get(i, ()))),
            )
        )
        value += d
    return out
