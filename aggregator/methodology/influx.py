"""Statement results as InfluxDB points (measurement ``reductions``), next to the readings.

One point per statement (``scope=statement``) and one per unit (``scope=unit``, tag
``unit``), timestamped at the period start. Tags: gateway, scenario, parameter set and
version; fields: BE, PE, LE, ER (tCO2e), completeness, interval counts, the statement id.
"""

from __future__ import annotations

from typing import Any

from aggregator.influx import InfluxV1Client, Point
from aggregator.influx.lineprotocol import FieldValue
from aggregator.methodology.statements import Statement

MEASUREMENT = "reductions"


def statement_points(statement: Statement) -> list[Point]:
    """The points for one statement."""
    b = statement.body
    ps = b["methodology"]["parameter_set"]
    tags = {
        "gateway": b["subject"]["gateway"],
        "scenario": b["methodology"]["scenario"],
        "parameter_set": ps["id"],
        "parameter_version": ps["version"],
    }
    t_ns = int(b["period"]["start"]) * 1_000_000_000
    r, ev = b["result"], b["evidence"]
    fields: dict[str, FieldValue] = {
        "be_tco2e": float(r["be_tco2e"]),
        "pe_tco2e": float(r["pe_tco2e"]),
        "le_tco2e": float(r["le_tco2e"]),
        "er_tco2e": float(r["er_tco2e"]),
        "completeness": float(b["completeness"]["value"]),
        "intervals_used": int(ev["intervals_used"]),
        "intervals_excluded": int(ev["intervals_excluded"]),
        "period_end": int(b["period"]["end"]),
        "statement": statement.id,
    }
    points = [Point(MEASUREMENT, {**tags, "scope": "statement"}, fields, t_ns)]
    for u in b["units"]:
        unit_tags = {**tags, "scope": "unit", "unit": u["id"]}
        points.append(Point(MEASUREMENT, unit_tags, _unit_fields(u, statement), t_ns))
    return points


def _unit_fields(u: dict[str, Any], statement: Statement) -> dict[str, FieldValue]:
    return {
        "be_tco2e": float(u["be_tco2e"]),
        "pe_tco2e": float(u["pe_tco2e"]),
        "le_tco2e": float(u["le_tco2e"]),
        "completeness": float(u["completeness"]),
        "credited": bool(u["credited"]),
        "estimated": bool(u["estimated"]),
        "statement": statement.id,
    }


async def write_statement(client: InfluxV1Client, statement: Statement) -> None:
    """Write a statement's points (the client raises on failure; no retries here)."""
    await client.write_points(statement_points(statement))
