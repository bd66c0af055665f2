"""The evidence store: exact signed batches, verdicts, gaps, rejections, the InfluxDB outbox.

- :mod:`.rows`: the rows every backend keeps and hands out;
- :mod:`.protocols`: one narrow Protocol per consumer (registry, ingest, InfluxDB outbox,
  evidence readers, the aggregator's keys) and :class:`EvidenceStore`, all of them;
- :mod:`.schema` and :mod:`.sqlite`: the embedded default, one SQLite file (WAL).
"""

from aggregator.store.protocols import (
    AggregatorKeyStore,
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

__all__ = [
    "INFLUX_FAILED",
    "INFLUX_PENDING",
    "INFLUX_WRITTEN",
    "SCHEMA_VERSION",
    "AcceptedBatch",
    "AggregatorKeyStore",
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
    "RegistryStore",
    "Rejection",
    "SQLiteEvidenceStore",
    "ScheduleEvidence",
]
