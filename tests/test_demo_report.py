"""What ``puhui demo`` prints after the run: InfluxQL examples against a real InfluxDB, tables."""

from __future__ import annotations

import pytest

from aggregator.influx import InfluxV1Client, Point
from puhui.demo.report import QUERIES, _num, _rows, _shown

T0 = 1_768_176_000  # 2026-01-12T00:00:00Z


def test_a_long_table_says_how_many_rows_more() -> None:
    lines = [f"row {i}" for i in range(11)]
    assert _shown(lines) == [*lines[:8], "... 3 more rows"]
    assert _shown(lines[:8]) == lines[:8]


def test_readings_print_rounded() -> None:
    assert _num(0.5089858360588551) == "0.509"
    assert _num(8095.44091796875) == "8095.441"
    assert _num(None) == "-"


@pytest.mark.integration
async def test_the_energy_query_never_adds_wh_to_kwh(influx_db: InfluxV1Client) -> None:
    """One gateway, one quantity, two meters: one counts kWh, the other Wh. The demo's first
    query must give one sum per unit (the unit is a tag), never a sum across them, and name it."""
    points = [
        Point(
            "puhui_interval",
            {"gateway": "gw", "meter": meter, "quantity": "energy_import", "unit": unit, "kind": "counter"},
            {"delta": delta},
            (T0 + 900 * i) * 10**9,
        )
        for meter, unit, delta in (("m-kwh", "kWh", 1.5), ("m-wh", "Wh", 1500.0))
        for i in range(4)
    ]
    await influx_db.write_points(points)
    title, template = QUERIES[0]
    assert "energy" in title
    query = template.format(p0="2026-01-12T00:00:00Z", p1="2026-01-13T00:00:00Z")
    series = await influx_db.query(query, epoch=None)
    sums = {s["tags"]["unit"]: dict(zip(s["columns"], s["values"][0], strict=True))["energy"] for s in series}
    assert sums == {"kWh": 6.0, "Wh": 6000.0}
    printed = _rows(series, timed=False)
    assert any("unit=kWh" in line and "energy=6" in line for line in printed)
    assert all("unit=None" not in line for line in printed)
