"""The evidence store: exact signed batches, verdicts, gaps, rejections, the InfluxDB outbox.

- :mod:`.rows`: the rows every backend keeps and hands out;
- :mod:`.protocols`: one narrow Protocol per consumer (registry, ingest, InfluxDB outbox,
  evidence readers, the aggregator's keys) and :class:`EvidenceStore`, all of them;
- :mod:`.schema` and :mod:`.sqlite`: the embedded default, one SQLite file (WAL);
- :mod:`.postgres_schema` and :mod:`.postgres`: PostgreSQL, shared by several aggregators;
- :func:`open_evidence_store`: the one a config's ``store`` section names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aggregator.config import StoreSettings
from aggregator.errors import StoreError
from aggregator.store.protocols import (
    AggregatorKeyStore,
    ChainSessionStore,
    EvidenceReader,
    EvidenceStore,
    InfluxOutbox,
    IngestStore,
    RegistryStore,
    ScheduleEvidence,
)
from aggregator.store.rows import (
    INFLUX_FAILED,
    INFLUX_PENDING,
    INFLUX_WRITTEN,
    AcceptedBatch,
    ChainSessionRow,
    Gap,
    GatewayEntry,
    IntervalKey,
    IntervalRow,
    KeyEntry,
    PendingBatch,
    Rejection,
)
from aggregator.store.schema import SCHEMA_VERSION
from aggregator.store.sqlite import SQLiteEvidenceStore

if TYPE_CHECKING:
    from typing import TypeAlias

    from aggregator.store.postgres import PostgresEvidenceStore

    # Either backend, as open_evidence_store returns it (import it under TYPE_CHECKING:
    # PostgreSQL's module loads only where it is used).
    AnyEvidenceStore: TypeAlias = SQLiteEvidenceStore | PostgresEvidenceStore

__all__ = [
    "INFLUX_FAILED",
    "INFLUX_PENDING",
    "INFLUX_WRITTEN",
    "SCHEMA_VERSION",
    "AcceptedBatch",
    "AggregatorKeyStore",
    "ChainSessionRow",
    "ChainSessionStore",
    "EvidenceReader",
    "EvidenceStore",
    "Gap",
    "GatewayEntry",
    "InfluxOutbox",
    "IngestStore",
    "IntervalKey",
    "IntervalRow",
    "KeyEntry",
    "PendingBatch",
    "PostgresEvidenceStore",
    "RegistryStore",
    "Rejection",
    "SQLiteEvidenceStore",
    "ScheduleEvidence",
    "open_evidence_store",
]


def __getattr__(name: str) -> Any:
    """``PostgresEvidenceStore`` on first use: the driver (psycopg, 0.1 s to import) only
    where PostgreSQL is used."""
    if name == "PostgresEvidenceStore":
        from aggregator.store.postgres import PostgresEvidenceStore

        return PostgresEvidenceStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_evidence_store(
    settings: StoreSettings, *, rejection_rows_per_source: int = 1000
) -> SQLiteEvidenceStore | PostgresEvidenceStore:
    """The evidence store ``settings`` names: PostgreSQL when it has a ``postgres`` section,
    else the SQLite file at ``path``. Raises :class:`aggregator.errors.StoreError`."""
    if settings.postgres is None:
        return SQLiteEvidenceStore(settings.path, rejection_rows_per_source=rejection_rows_per_source)
    try:
        from aggregator.store.postgres import PostgresEvidenceStore
    except ImportError as exc:  # psycopg loads the system's libpq when imported
        raise StoreError(
            f"store.postgres: the PostgreSQL driver cannot load: {exc} (it needs libpq: "
            "apt-get install libpq5)"
        ) from exc
    return PostgresEvidenceStore.from_settings(
        settings.postgres, rejection_rows_per_source=rejection_rows_per_source
    )
