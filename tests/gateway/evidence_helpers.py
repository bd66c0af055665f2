"""Shared pieces of the gateway evidence tests: keys on disk, settings, deterministic records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evidence.keys import GatewayKey, generate_key, public_key_pem, save_private_key
from evidence.records import IntervalRecord, IntervalRef, Stats
from gateway.evidence_config import (
    BackoffSettings,
    EvidenceSettings,
    OutboxSettings,
    SealingSettings,
    UplinkSettings,
)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, an interval boundary
L = 900


@dataclass(frozen=True)
class Keys:
    gateway: GatewayKey
    gateway_file: Path
    aggregator: GatewayKey
    aggregator_pub_file: Path


def make_keys(directory: Path) -> Keys:
    directory.mkdir(parents=True, exist_ok=True)
    gateway, aggregator = generate_key(), generate_key()
    save_private_key(gateway, directory / "gateway.pem")
    pub = directory / "aggregator.pub.pem"
    pub.write_bytes(public_key_pem(aggregator.public_key))
    return Keys(gateway, directory / "gateway.pem", aggregator, pub)


def evidence_settings(state_dir: Path, keys: Keys, **outbox: Any) -> EvidenceSettings:
    sealing = outbox.pop("sealing", SealingSettings(max_records=10, max_age_s=3600))
    return EvidenceSettings(
        key_file=str(keys.gateway_file),
        state_dir=str(state_dir),
        sealing=sealing,
        outbox=OutboxSettings(**({"cap_bytes": 64 * 1024 * 1024} | outbox)),
    )


def uplink_settings(host: str, port: int, keys: Keys, **kw: Any) -> UplinkSettings:
    fast = BackoffSettings(initial_s=0.05, max_s=0.3)
    agg = str(keys.aggregator_pub_file)
    base: dict[str, Any] = dict(host=host, port=port, tls=None, aggregator_public_key=agg,
                                inflight=4, resend_after_s=1.0, reconnect=fast,
                                reject_backoff=fast)  # fmt: skip
    return UplinkSettings(**(base | kw))


def interval(meter: int, k: int, quantity: str = "energy_import") -> IntervalRecord:
    """Interval k of meter ``m<meter>``: deterministic, distinct per (meter, k)."""
    start = T0 + k * L
    value = 1000.0 * meter + 1.25 * k
    return IntervalRecord(
        f"m{meter}", quantity, "kWh", start, start + L, counter_start=value,
        counter_start_time_ms=start * 1000 - 2000, counter_end=value + 1.25,
        counter_end_time_ms=(start + L) * 1000 - 2000, delta=1.25, stats=Stats("kW", 4.5, 5.0, 5.5),
        samples=90, expected=90,
    )  # fmt: skip


def ref(r: IntervalRecord) -> IntervalRef:
    return IntervalRef(r.meter, r.quantity, r.start, r.end)
