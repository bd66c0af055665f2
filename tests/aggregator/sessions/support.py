"""A network enrolled at a real SQLite evidence store and the stand-in platform's week."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from aggregator.sessions.intake import enrol_network
from aggregator.store import SQLiteEvidenceStore
from evidence import generate_key, public_key_pem
from evidence.keys import GatewayKey
from firmware_sim.ev_platform import CHINA, Order, StandInPlatform, manifest, to_csv, to_json

NETWORK = "net-demo"
WEEK = datetime(2026, 3, 2, tzinfo=CHINA)
WEEK_END = WEEK + timedelta(days=7)
NOW_MS = int((WEEK_END + timedelta(days=1)).timestamp() * 1000)


@dataclass
class Network:
    key: GatewayKey
    orders: list[Order]

    def json_file(self, orders: list[Order] | None = None) -> tuple[bytes, bytes]:
        chosen = self.orders if orders is None else orders
        data = to_json(chosen)
        return data, manifest(self.key, NETWORK, data, len(chosen), WEEK, WEEK_END)

    def csv_file(self, orders: list[Order] | None = None) -> tuple[bytes, bytes]:
        chosen = self.orders if orders is None else orders
        data = to_csv(chosen)
        return data, manifest(self.key, NETWORK, data, len(chosen), WEEK, WEEK_END)


_WEEK: list[Order] = []


def week_orders() -> list[Order]:
    if not _WEEK:
        _WEEK.extend(StandInPlatform(NETWORK).week(WEEK))
    return list(_WEEK)


def enrolled(db: Path) -> tuple[SQLiteEvidenceStore, Network]:
    store = SQLiteEvidenceStore(db)
    key = generate_key()
    enrol_network(store, NETWORK, public_key_pem(key.public_key), region="north_china", now_ms=0)
    return store, Network(key, week_orders())
