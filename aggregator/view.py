"""What the evidence store hands to the rest of the aggregator (methodologies, exports).

The ingest side (``aggregator.store``) produces these; the methodology engine
(``aggregator.methodology``) consumes them. Both sides depend on this module only, so the
methodology engine can be built and tested without a running ingest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from evidence.records import IntervalRecord, SessionRecord

Scenario = Literal["pv", "ev_charging", "clean_heating"]


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """An enrolled meter: what its gateway declared at enrolment."""

    gateway: str
    meter: str
    scenario: Scenario
    rated_power_kw: float
    meter_class: str
    region: str | None = None  # grid region, when the enrolment names one
    calibrated_until: date | None = None  # last day (China time) of the meter's calibration validity


@dataclass(frozen=True, slots=True)
class BatchRef:
    """The signed batch an interval came from: enough to find and re-check it."""

    gateway: str
    seq: int
    header_sha256: str  # hex, the chain link
    root: str  # hex RFC 6962 Merkle root of the batch's records
    key_id: str


@dataclass(frozen=True, slots=True)
class AttestedInterval:
    """One interval record as accepted: verified batch, its leaf index, plausibility verdict.

    ``issues`` is empty when the interval passed every plausibility check; otherwise it holds
    short machine-readable reasons (e.g. ``"energy_above_nameplate"``, ``"counter_decrease"``,
    ``"timestamp_skew"``). Implausible intervals are kept, flagged, and never credited.
    """

    batch: BatchRef
    index: int  # leaf index of the record in its batch
    record: IntervalRecord
    issues: tuple[str, ...] = ()

    @property
    def plausible(self) -> bool:
        return not self.issues


@dataclass(frozen=True, slots=True)
class ChainSession:
    """One OCPP ``session`` record sealed in a gateway's chain ("chain session", not an imported
    one): its batch, its leaf index, the record, and the SHA-256 (hex) of its exact bytes."""

    batch: BatchRef
    index: int
    record: SessionRecord
    sha256: str
