"""Conservativeness: no parameter set chooses a value that credits more than a published
alternative, unless it names why (the source that requires the value).

Each 2.0.0 set lists, under ``alternatives``, every choice where a published alternative
exists: the value(s) another source gives (``changes``: dotted paths in the file) and that
source. For each alternative the set is re-read with the change and run on a standard case
of its scenario (one day of 15-minute intervals, in the alternative's region or the set's first
one); the chosen set's net reduction BE - PE - LE (not floored, so nothing hides behind zero)
must not exceed the alternative's, unless ``chosen_because`` says why it may, and then it
must exceed it (an exemption that changes nothing is stale).
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggregator.methodology import (
    LoadedParameterSet,
    Period,
    Subject,
    Unit,
    compute_from,
    parse_parameter_set,
)
from aggregator.methodology.baseline import HistoricalUse
from aggregator.methodology.params import PARAMS_DIR, Alternative
from aggregator.view import AttestedInterval, BatchRef, MeterInfo

from .evidence_fixture import T0, counter_records

SETS = sorted(p for p in PARAMS_DIR.glob("*.yaml") if p.stem.endswith("-2.0.0"))
N = 96
PERIOD = Period(T0, T0 + N * 900)
REF = BatchRef("gw", 1, "0" * 64, "0" * 64, "k")
VALID = dt.date(2030, 12, 31)
RECORD = HistoricalUse(1.0, dt.date(2020, 1, 6), dt.date(2020, 1, 12), "test record")  # binds for "a"


def intervals(meter: str, quantity: str, kwh: float) -> list[AttestedInterval]:
    return [AttestedInterval(REF, i, r) for i, r in enumerate(counter_records(meter, quantity, [kwh] * N))]


def standard_case(loaded: LoadedParameterSet, region: str) -> float:
    """BE - PE - LE of the scenario's standard case, in ``region``."""
    p = loaded.params
    scenario = p.method.scenario

    def info(meter: str, cls: str) -> MeterInfo:
        return MeterInfo("gw", meter, scenario, 20.0, cls, region, VALID)

    baselines: dict[str, HistoricalUse] = {}
    if scenario == "pv":
        items = intervals("pv", "energy_export", 1.0) + intervals("pv", "energy_generated", 1.6)
        infos, subject = {"pv": info("pv", "1")}, Subject.of_meters("gw", ["pv"])
    elif scenario == "ev_charging":
        items = intervals("ev", "energy_delivered", 2.0)
        infos, subject = {"ev": info("ev", "B")}, Subject.of_meters("gw", ["ev"])
    else:  # a house whose recorded coal use caps it, one without a record, one without a heat meter
        items = [x for h in "abc" for x in intervals(f"{h}-e", "energy_import", 2.0)]
        items += intervals("a-h", "heat_energy", 6.0) + intervals("b-h", "heat_energy", 6.0)
        infos = {
            m: info(m, "heat_2" if m.endswith("-h") else "1") for m in ("a-e", "a-h", "b-e", "b-h", "c-e")
        }
        units = (Unit("a", ("a-e", "a-h")), Unit("b", ("b-e", "b-h")), Unit("c", ("c-e",)))
        subject, baselines = Subject("gw", units), {"a": RECORD}
    r = compute_from(items, infos, loaded, subject, PERIOD, baselines=baselines).result
    be, pe, le = r.totals_be_pe_le
    return be - pe - le


def with_changes(path: Path, changes: dict[str, Any]) -> LoadedParameterSet:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_parameter_set(yaml.safe_dump(raw, sort_keys=False).encode(), f"{path.name} + {changes}")


@cache
def as_shipped(path: Path) -> LoadedParameterSet:
    return with_changes(path, {})


@cache
def chosen(path: Path, region: str) -> float:
    return standard_case(as_shipped(path), region)


def violation(path: Path, alt: Alternative) -> str | None:
    """Why this alternative shows the set is not conservative, or None."""
    loaded = as_shipped(path)
    assert loaded.params.scope is not None
    region = alt.region or next(iter(loaded.params.scope.regions))
    mine, theirs = chosen(path, region), standard_case(with_changes(path, alt.changes), region)
    if alt.chosen_because is None and mine > theirs * (1 + 1e-12) + 1e-15:
        return f"{path.name}: {alt.changes} ({alt.source}) credits less ({theirs:.9g} < {mine:.9g} tCO2e)"
    if alt.chosen_because is not None and not mine > theirs:
        return f"{path.name}: {alt.changes}: chosen_because is stale ({theirs:.9g} >= {mine:.9g} tCO2e)"
    return None


def cases() -> list[tuple[Path, Alternative]]:
    return [(p, a) for p in SETS for a in as_shipped(p).params.alternatives]


@pytest.mark.parametrize(
    ("path", "alt"), cases(), ids=lambda x: x.stem if isinstance(x, Path) else str(x.changes)
)
def test_no_published_alternative_credits_less(path: Path, alt: Alternative) -> None:
    assert violation(path, alt) is None


@pytest.mark.parametrize("path", SETS, ids=lambda p: p.stem)
def test_every_corrected_set_has_a_table_with_sources(path: Path) -> None:
    alts = as_shipped(path).params.alternatives
    assert alts and all(len(a.source) > 10 for a in alts)
    assert all(len(a.chosen_because) > 10 for a in alts if a.chosen_because is not None)
    assert any(a.changes == {"meter_accuracy.discount": False} for a in alts)


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("ev-charging-jjj", "    value: 2.106\n", "    value: 2.37\n"),  # 1.0.0's petrol factor
        ("ev-charging-jjj", "grid: [beijing, north_china, national]", "grid: [beijing]"),  # 1.0.0
        ("clean-heating-hebei", "    value: 89.27\n", "    value: 94.6\n"),  # 1.0.0's coal factor
        ("clean-heating-hebei", "    value: 0.06\n", "    value: 0.0\n"),  # 1.0.0: no line loss
        ("pv-export-mee", "grid: [hebei, north_china, national]", "grid: [hebei]"),  # 1.0.0
    ],
)
def test_the_check_catches_a_set_that_is_not_conservative(
    tmp_path: Path, name: str, old: str, new: str
) -> None:
    text = (PARAMS_DIR / f"{name}-2.0.0.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1
    path = tmp_path / f"{name}-2.0.0.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    found = [v for a in with_changes(path, {}).params.alternatives if (v := violation(path, a))]
    assert found, "a less conservative choice went unnoticed"
