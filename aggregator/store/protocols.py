"""What each part of the aggregator needs from the evidence store: one narrow Protocol per
consumer, so a backend (SQLite embedded, PostgreSQL for several aggregators) is checked
against exactly what is used, and a consumer cannot reach past its part.

- :class:`RegistryStore`: the gateway registry (enrolments, keys);
- :class:`IngestStore`: batch ingest (the chain, counters, atomic group commit, refusals);
- :class:`InfluxOutbox`: the InfluxDB writer's outbox;
- :class:`EvidenceReader`: methodologies, verifiers and packages (attested intervals, the
  exact batch bytes, gateway keys), and :class:`ScheduleEvidence` (when evidence arrived);
- :class:`AggregatorKeyStore`: the aggregator's own key history;
- :class:`SessionStore`: imported charging sessions (:mod:`aggregator.sessions`, SQLite only);
- :class:`ChainSessionStore`: OCPP session records sealed by gateways (SQLite, PostgreSQL);
- :class:`EvidenceStore`: all of them (what one backend provides).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from aggregator.errors import StoreConflict
from aggregator.sessions.checks import Span
from aggregator.sessions.records import ImportReport, NetworkEntry, Refusal, SessionRecord, StoredSession
from aggregator.store.rows import AcceptedBatch, GatewayEntry, Held, KeyEntry, PendingBatch, Rejection
from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from evidence.keylist import AggregatorKey
from evidence.keys import PublicKey


class RegistryStore(Protocol):
    """The gateway registry's rows (:class:`aggregator.registry.GatewayRegistry`)."""

    def save_enrolment(self, entry: GatewayEntry, at_ms: int) -> None: ...
    def add_key(self, entry: KeyEntry) -> None: ...
    def revoke_key(self, gateway: str, key_id: str, from_ms: int) -> None: ...
    def gateways(self) -> list[GatewayEntry]: ...
    def registry_version(self) -> int: ...
    def highest_seq(self, gateway: str) -> int: ...


class IngestStore(Protocol):
    """Batch ingest (:class:`aggregator.ingest.BatchIngest`): a group is stored in one durable
    transaction; ``(gateway, seq)`` is unique (the loser gets :class:`StoreConflict`)."""

    def store_group(
        self, batches: Sequence[AcceptedBatch], rejections: Sequence[Rejection] = (), *,
        hold: Collection[int] = (),
    ) -> list[int | StoreConflict | Held | None]: ...  # fmt: skip
    def record_rejection(self, rejection: Rejection) -> None: ...
    def chain_links(self, gateway: str) -> list[tuple[int, str, str]]: ...
    def counter_state(self, gateway: str) -> dict[tuple[str, str], tuple[int, float]]: ...
    def batch_created_ms(self, gateway: str, seq: int) -> int | None: ...


class InfluxOutbox(Protocol):
    """The InfluxDB writer's outbox (:class:`aggregator.influx_writer.InfluxWriter`): per row,
    so commits in any order are written exactly once."""

    def pending_influx(
        self, limit: int, known: Container[int] = (), exclude: Collection[int] = ()
    ) -> list[PendingBatch]: ...
    def mark_influx(self, ids: Collection[int], *, error: str | None = None) -> None: ...


class EvidenceReader(Protocol):
    """The evidence as methodologies and verifiers read it (also
    :class:`aggregator.methodology.source.EvidenceSource`)."""

    def meters(self) -> list[MeterInfo]: ...
    def attested_intervals(
        self,
        *,
        gateway: str | None = None,
        meters: Collection[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[AttestedInterval]: ...
    def batch_bytes(self, gateway: str, seq: int) -> bytes | None: ...
    def gateway_public_key(self, gateway: str, key_id: str) -> PublicKey | None: ...


class ScheduleEvidence(EvidenceReader, Protocol):
    """When evidence arrived: what the statement schedule looks at."""

    def latest_batch_id(self, gateway: str) -> int: ...
    def evidence_mark(self, gateway: str, meters: Collection[str], start: int, end: int) -> int: ...
    def evidence_reach(self, gateway: str, meters: Collection[str]) -> tuple[int, int]: ...


class AggregatorKeyStore(Protocol):
    """The aggregator's own key history (:mod:`aggregator.keys`)."""

    def aggregator_keys(self) -> list[AggregatorKey]: ...
    def add_aggregator_key(self, key: AggregatorKey, *, retire: str | None = None) -> None: ...
    def revoke_aggregator_key(self, key_id: str, from_ms: int) -> bool: ...


Fit = Callable[
    [Sequence[SessionRecord], Mapping[tuple[str, str, str], Sequence[Span]]],
    tuple[list[SessionRecord], list[Refusal]],
]


class SessionStore(Protocol):
    """Imported charging sessions (:mod:`aggregator.sessions`): the networks' pinned keys, the
    exact bytes of every import, and the records taken. :meth:`import_sessions` decides and
    stores in one transaction: ``(network, session_id)`` is unique, the same content again is
    a duplicate, other content under the same id is refused, and ``fit`` places the rest on
    their connectors against what is held (:func:`aggregator.sessions.checks.check_continuity`)."""

    def add_network(self, entry: NetworkEntry) -> NetworkEntry: ...
    def networks(self) -> list[NetworkEntry]: ...
    def import_sessions(
        self,
        report: ImportReport,
        data: bytes,
        manifest: bytes,
        candidates: Sequence[SessionRecord],
        fit: Fit,
        *,
        received_ms: int,
        via: str,
    ) -> ImportReport: ...
    def imported_sessions(
        self, network: str, *, chargers: Collection[str] | None = None, start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[StoredSession]: ...  # fmt: skip
    def session_source(self, sha256: str) -> tuple[bytes, bytes] | None: ...


@runtime_checkable
class ChainSessionStore(Protocol):
    """OCPP session records sealed by gateways ("chain sessions", not imported ones): a store
    that implements this keeps a row per record of ``AcceptedBatch.chain_sessions`` in the
    batch's own transaction. Ingest asks ``isinstance(store, ChainSessionStore)``: with a store
    that does not, the records stay in the stored batch bytes only and ingest says so in its
    log for every such batch (docs/ocpp.md); the EV methodology then says in its statements
    that meter-signed evidence was not looked up."""

    def chain_sessions(
        self,
        *,
        gateway: str | None = None,
        charger: str | None = None,
        transaction_id: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[tuple[BatchRef, int, bytes]]:
        """``(batch, leaf index, the record's exact bytes)`` of the matching chain sessions,
        in arrival order; ``start_ms``/``end_ms``: only those overlapping ``[start_ms, end_ms)``."""
        ...


class EvidenceStore(RegistryStore, IngestStore, InfluxOutbox, ScheduleEvidence, AggregatorKeyStore, Protocol):
    """Everything one backend provides."""

    def close(self) -> None: ...
