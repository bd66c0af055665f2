"""What ``gateway check`` accepts, ``gateway run`` runs (issue 15 item 6).

``check`` said valid for a meter whose ``counts`` listed a quantity twice; ``run`` then died
with an IntervalError traceback (the interval builder refuses a series given twice). The
rules of the builder are config rules now, and ``check`` builds the same plan and builder
as ``run``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.modbus.profiles import load_profiles
from gateway.config import issue_paths, parse_site
from gateway.errors import ConfigError
from gateway.runtime import Gateway, MemorySink

REPO = Path(__file__).resolve().parents[2]
PROFILES = load_profiles()
NAMEPLATE = {"rated_power_kw": 30, "meter_class": "1"}


def _meters(counts: dict[str, list[str]], enabled: dict[str, bool]) -> list[dict[str, Any]]:
    return [
        {"id": "elec", "driver": "modbus_tcp", "connection": {"host": "127.0.0.1"}, "unit_id": 1,
         "profile": "sdm630", "scenario": "clean_heating", "nameplate": NAMEPLATE,
         "counts": counts["elec"], "enabled": enabled["elec"]},
        {"id": "pv", "driver": "modbus_tcp", "connection": {"host": "127.0.0.1"}, "unit_id": 1,
         "profile": "sunspec", "scenario": "pv", "nameplate": NAMEPLATE, "counts": counts["pv"],
         "enabled": enabled["pv"]},
        {"id": "boiler", "driver": "modbus_tcp", "connection": {"host": "127.0.0.1"}, "unit_id": 3,
         "scenario": "clean_heating", "nameplate": NAMEPLATE, "counts": counts["boiler"],
         "enabled": enabled["boiler"],
         "registers": [
             {"name": "power", "quantity": "power", "unit": "W", "function": 4, "address": 16,
              "type": "float32"},
             {"name": "energy", "quantity": "energy_import", "unit": "kWh", "function": 4, "address": 32,
              "type": "uint32", "kind": "counter"}]},
        {"id": "plug", "driver": "mqtt", "connection": {"host": "broker"}, "scenario": "clean_heating",
         "nameplate": NAMEPLATE, "counts": counts["plug"], "enabled": enabled["plug"],
         "source": {"topic": "plug/1", "fields": {"energy": {"path": "e", "unit": "kWh", "kind": "counter"},
                                                   "power": {"path": "p", "unit": "W"}}}},
    ]  # fmt: skip


QUANTITIES = {
    "elec": ["energy_import", "energy_export", "power"],
    "pv": ["energy_generated", "power"],
    "boiler": ["energy_import", "power"],
    "plug": ["energy", "power"],
}


@st.composite
def _sites(draw: st.DrawFn) -> dict[str, Any]:
    counts = {
        m: draw(st.lists(st.sampled_from(q), min_size=1, max_size=3, unique=True))
        for m, q in QUANTITIES.items()
    }
    if draw(st.integers(0, 9)) == 5:  # now and then a quantity counted twice
        meter = draw(st.sampled_from(sorted(counts)))
        counts[meter].append(counts[meter][0])
    enabled = {m: draw(st.booleans()) for m in QUANTITIES}
    return {
        "gateway": {"id": "gw-plan-1", "site": "s"},
        "interval_minutes": draw(st.sampled_from([1, 1, 2, 5, 7, 15, 60])),
        "grace_seconds": draw(st.sampled_from([0, 5, 29.5, 30, 45, 600])),
        "boundary_seconds": draw(st.sampled_from([0, 5, 29.9, 30, 60])),
        "meters": _meters(counts, enabled),
    }


@given(data=_sites())
@settings(max_examples=200, deadline=None)
def test_a_site_that_validates_builds_its_plan_and_interval_builder(data: dict[str, Any]) -> None:
    try:
        site = parse_site(data, "site.yaml", PROFILES)
    except ConfigError:
        return
    gateway = Gateway(site, clock=ManualClock(1_736_899_200.0), sink=MemorySink(), profiles=PROFILES)
    enabled = {m["id"] for m in data["meters"] if m["enabled"]}
    assert {s.meter for s in gateway.plan.series} <= enabled


def _site_with(**changes: Any) -> dict[str, Any]:
    data = {
        "gateway": {"id": "gw-plan-1", "site": "s"},
        "meters": _meters({m: q[:1] for m, q in QUANTITIES.items()}, dict.fromkeys(QUANTITIES, True)),
    }
    data.update(changes)
    return data


def test_a_quantity_counted_twice_is_refused_naming_meter_and_field() -> None:
    data = _site_with()
    data["meters"][2]["counts"] = ["energy_import", "power", "energy_import"]
    data["meters"][3]["enabled"] = False
    data["meters"][3]["counts"] = [
        "energy",
        "energy",
    ]  # a disabled meter too: run would refuse it once enabled
    with pytest.raises(ConfigError) as caught:
        parse_site(data, "site.yaml", PROFILES)
    assert issue_paths(caught.value) == [("meters", 2, "counts"), ("meters", 3, "counts")]
    assert str(caught.value).splitlines()[0] == (
        "site.yaml: meters[2].counts: 'energy_import' listed more than once in the counts of meter 'boiler'"
    )


def test_a_boundary_the_builder_refuses_is_a_config_error() -> None:
    data = _site_with(interval_minutes=1, grace_seconds=40, boundary_seconds=30)
    with pytest.raises(ConfigError) as caught:
        parse_site(data, "site.yaml", PROFILES)
    assert issue_paths(caught.value) == [("boundary_seconds",)]
    assert "below half an interval (30 s) for 1-minute intervals" in str(caught.value)
    parse_site(_site_with(interval_minutes=1, grace_seconds=29, boundary_seconds=30), "site.yaml", PROFILES)


def _puhui(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "puhui", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_refuses_what_run_would_die_on_and_run_refuses_it_the_same_way(tmp_path: Path) -> None:
    data = _site_with(status={"enabled": False})
    data["meters"][0]["counts"] = ["energy_import", "energy_import"]
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(data))
    want = "dup.yaml: meters[0].counts: 'energy_import' listed more than once in the counts of meter 'elec'"
    for action in (["check"], ["run", "--dry-run"]):
        out = _puhui(*action, "--config", str(path))
        assert (out.returncode, out.stderr.strip()) == (2, want), action
