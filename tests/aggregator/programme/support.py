"""A street of units whose gateway's batches the aggregator's own ingest takes, for the
programme tests: two rooftop arrays and a charger on one gateway in Hebei, 15-minute
intervals over a whole calendar month (China time) and the first days of the next."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store import SQLiteEvidenceStore
from common.clock import SystemClock
from evidence import GatewayKey, IntervalRecord, encode_record, generate_key, seal_batch
from evidence.batch import GENESIS_PREV
from evidence.enrolment import EnrolledMeter, make_enrolment
from evidence.records import Stats
from evidence.wire import Ack, batch_topic

CHINA = dt.timezone(dt.timedelta(hours=8))
MONTH = int(dt.datetime(2026, 1, 1, tzinfo=CHINA).timestamp())  # January 2026, China time
MONTH_END = int(dt.datetime(2026, 2, 1, tzinfo=CHINA).timestamp())
STEP = 900
GATEWAY = "gw-street"
METERS = {"pv-01": "pv", "pv-02": "pv", "ev-01": "ev_charging"}
QUANTITY = {"pv": "energy_export", "ev_charging": "energy_delivered"}
DELTA_KWH = {"pv-01": 0.5, "pv-02": 0.75, "ev-01": 1.5}
VALID = dt.date(2031, 12, 31)


@dataclass
class Street:
    """The gateway: its key, chain and counters; seals the records of a span of time."""

    key: GatewayKey = field(default_factory=generate_key)
    seq: int = 0
    prev: str = GENESIS_PREV
    counters: dict[str, float] = field(default_factory=dict)

    def enrolment(self) -> bytes:
        meters = [
            EnrolledMeter(m, s, 7.0 if s == "pv" else 22.0, "1" if s == "pv" else "B", VALID)  # type: ignore[arg-type]
            for m, s in METERS.items()
        ]
        doc = make_enrolment(
            self.key, gateway=GATEWAY, site="street", meters=meters, created_ms=MONTH * 1000, region="hebei"
        )
        return doc.to_bytes()

    def records(self, start: int, end: int) -> list[IntervalRecord]:
        out = []
        for s in range(start, end, STEP):
            e = s + STEP
            for m, scenario in METERS.items():
                d = DELTA_KWH[m]
                c0 = self.counters.get(m, 1000.0)
                self.counters[m] = c0 + d
                out.append(
                    IntervalRecord(m, QUANTITY[scenario], "kWh", s, e, "counter", c0, s * 1000 - 500, c0 + d,
                                   e * 1000 - 500, d, Stats("kW", d * 2, d * 4, d * 4), 90, 90)
                )  # fmt: skip
        return out

    def seal(self, records: list[IntervalRecord]) -> bytes:
        self.seq += 1
        created = (max(r.end for r in records) + 5) * 1000
        sealed = seal_batch(
            [encode_record(r) for r in records], key=self.key, gateway=GATEWAY, seq=self.seq, prev=self.prev,
            created_ms=created,
        )  # fmt: skip
        self.prev = sealed.header_sha256
        return sealed.to_bytes()


def config(db: Path, tmp: Path) -> AggregatorConfig:
    return AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(db)},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp / "unused.pem")}
    )  # fmt: skip


async def _ingest(
    db: Path, tmp: Path, aggregator: GatewayKey, payloads: list[bytes], enrol: bytes | None
) -> None:
    with StoreThreads() as threads:
        store = SQLiteEvidenceStore(db)
        try:
            registry = GatewayRegistry(store)
            if enrol is not None:
                registry.enrol(enrol, at_ms=MONTH * 1000)
            ingest = BatchIngest(config(db, tmp), store=store, registry=registry, key=aggregator,
                                 clock=SystemClock(), run_db=threads.run_db)  # fmt: skip
            for payload in payloads:
                answer = await ingest.process(batch_topic(GATEWAY), payload)
                assert answer is not None and isinstance(answer[1], Ack), answer
        finally:
            store.close()


def deliver(
    db: Path, tmp: Path, aggregator: GatewayKey, street: Street, start: int, end: int, *, enrol: bool = False
) -> None:
    """Seal ``[start, end)`` in day-long batches and store them through the real ingest."""
    payloads = [street.seal(street.records(s, min(s + 86400, end))) for s in range(start, end, 86400)]
    asyncio.run(_ingest(db, tmp, aggregator, payloads, street.enrolment() if enrol else None))
