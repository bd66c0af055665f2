"""What the parts of ``puhui demo`` share: the run, its faults, a scenario's result, time formats.

Every other module of the demo imports this one; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aggregator.methodology import Computation
    from puhui.demo.security import InfluxUsers
    from puhui.demo.setup import GatewayRun

CHINA = timezone(timedelta(hours=8))


@dataclass
class Fault:
    """One injected fault: what, when (clock seconds), and what was seen while it lasted."""

    kind: str  # "broker_outage", "meter_replaced", "dead_meter"
    target: str  # "mosquitto" or a device name
    site: str | None
    start: float
    end: float
    seen: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """Everything the report needs about a finished run."""

    out: Path
    period: tuple[int, int]
    factor: float
    poll_s: float
    gateways: list[GatewayRun]
    faults: list[Fault]
    truth: dict[str, Any]
    fleet_kinds: dict[str, str]
    db: Path
    aggregator_key: Path
    aggregator_pub: Path
    influx: InfluxUsers  # the URL, the database, its users' password files
    notes: list[str]
    wall: dict[str, float]
    steps: dict[tuple[str, str], Any] = field(default_factory=dict)  # (device, channel) -> StepLog
    heaters: dict[str, str] = field(default_factory=dict)  # heating device -> heat_pump / electric_boiler


@dataclass
class ScenarioResult:
    gateway: str
    scenario: str
    comp: Computation | None = None
    statement: Any = None
    path: Path | None = None
    refused: dict[str, str] = field(default_factory=dict)
    uncredited: list[str] = field(default_factory=list)
    not_enrolled: Computation | None = None  # units left out of the programme, computed to show why
    check: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def fmt_time(t: float) -> str:
    """China time, to the minute (the demo's text)."""
    return datetime.fromtimestamp(t, CHINA).strftime("%Y-%m-%d %H:%M")


def utc(t: float) -> str:
    """UTC, RFC 3339 (InfluxDB's rows)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
