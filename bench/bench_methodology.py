"""Methodology engine: one year of 15-minute intervals for 10,000 meters into statements.

Run: ``.venv/bin/python -m bench.bench_methodology``. 100 sites (gateways) of 100 meters,
cycling PV (100 meters), EV charging (100 meters) and clean heating (50 houses of an
electricity and a heat meter); 35,040 slots per series; per series and year 4 outages
(1-16 missing intervals each) and 10 flagged or implausible intervals. Inputs are
generated as numpy arrays for the engine's array core (``evaluate``); each site becomes one
signed statement (body with per-unit figures, 3,504 batch references, credited runs). The
object path (``AttestedInterval`` -> arrays) is measured separately per million intervals.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aggregator.methodology import (
    Period,
    StatementStore,
    Subject,
    Unit,
    compute_from,
    evaluate,
    issue_statement,
    load_parameter_set,
    rules_for,
)
from aggregator.methodology.engine import Computation
from aggregator.methodology.params import PARAMS_DIR, LoadedParameterSet, resolve_grid_factor
from aggregator.methodology.series import EvidenceIndex, SeriesArrays, SeriesKey
from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from bench.common import Figure
from evidence.keys import generate_key
from evidence.records import IntervalRecord

T0 = 1_735_660_800  # 2025-01-01T00:00:00+08:00
SLOTS = 365 * 96
SITES, METERS_PER_SITE, BATCH = 100, 100, 1000
PERIOD = Period(T0, T0 + SLOTS * 900)
SETS = ("pv-export-mee", "ev-charging-jjj", "clean-heating-hebei")
OUTAGES, FLAGGED = 4, 10  # per series and year: ~0.13 % of intervals, clustered like real faults
REASONS = ["ok", "missing", "flag:gap", "flag:reset", "implausible:energy_above_nameplate"]


def site_arrays(k: int, scenario: str, rng: np.random.Generator) -> tuple[Subject, SeriesArrays]:
    """One site's series matrix, as the object path would have built it."""
    gw = f"gw-{k:03d}"
    if scenario == "clean_heating":
        units = tuple(
            Unit(f"h{i:02d}", (f"h{i:02d}-elec", f"h{i:02d}-heat")) for i in range(METERS_PER_SITE // 2)
        )
        roles = (("energy_import", "electricity_mwh"), ("heat_energy", "heat_gj"))
        keys = [SeriesKey(m, q, r) for u in units for m, (q, r) in zip(u.meters, roles, strict=True)]
        rows = np.repeat(np.arange(len(units)), 2)
    else:
        units = tuple(Unit(f"m{i:03d}", (f"m{i:03d}",)) for i in range(METERS_PER_SITE))
        keys = [SeriesKey(u.id, "energy_export", "energy_mwh") for u in units]
        rows = np.arange(len(units))
    values = rng.random((len(keys), SLOTS)) * 1e-3  # up to 1 kWh per interval, in MWh
    if scenario == "clean_heating":
        values[1::2] = values[0::2] * 3.0 * 3.6  # heat = COP 3 x electricity, GJ
    status = np.zeros((len(keys), SLOTS), np.uint8)
    n = len(keys)
    for _ in range(OUTAGES):  # an outage: 1-16 intervals without records
        first, length = rng.integers(0, SLOTS - 16, n), rng.integers(1, 17, n)
        for r in range(n):
            status[r, first[r] : first[r] + length[r]] = 1
    flagged = rng.integers(0, SLOTS, (n, FLAGGED))  # single flagged or implausible intervals
    status[np.arange(n)[:, None], flagged] = rng.integers(2, 5, (n, FLAGGED))
    values[status != 0] = 0.0
    return Subject(gw, units), SeriesArrays(keys, rows, values, status, reasons=list(REASONS))


def batch_refs(gw: str) -> EvidenceIndex:
    n = METERS_PER_SITE * SLOTS // BATCH
    h = hashlib.sha256(gw.encode()).hexdigest()
    return EvidenceIndex({s: BatchRef(gw, s, h, h, "k" * 32) for s in range(1, n + 1)})


def site_statement(k: int, params: LoadedParameterSet, series: SeriesArrays, subject: Subject, key):  # type: ignore[no-untyped-def]
    p = params.params
    meters = {
        m: MeterInfo(subject.gateway, m, p.method.scenario, 7.0, "1.0")  # type: ignore[arg-type]
        for m in subject.meters
    }
    grid = [resolve_grid_factor(p, None)] * len(subject.units)
    result = evaluate(
        series, len(subject.units), rules_for(p), np.array([g.value for g in grid]),
        period=PERIOD, interval_s=900, threshold=p.completeness.threshold,
    )  # fmt: skip
    comp = Computation(
        params, subject, PERIOD, 900, meters, grid, series, batch_refs(subject.gateway), result
    )
    return issue_statement(comp, key, created_ms=0)


def year_of_statements() -> tuple[float, float, float, float, int]:
    """(generation s, engine+statements s, store s, total tCO2e, intervals)."""
    rng = np.random.default_rng(8)
    key = generate_key()
    sets = [load_parameter_set(PARAMS_DIR / f"{name}.yaml") for name in SETS]
    gen = work = 0.0
    total, intervals, statements = 0.0, 0, []
    for k in range(SITES):
        params = sets[k % 3]
        t0 = time.perf_counter()
        subject, series = site_arrays(k, params.params.method.scenario, rng)
        t1 = time.perf_counter()
        st = site_statement(k, params, series, subject, key)
        work += time.perf_counter() - t1
        gen += t1 - t0
        total += st.er_tco2e
        intervals += series.status.size
        statements.append(st)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with StatementStore(Path(tmp) / "bench.db") as store:
            for st in statements:
                store.save(st)
        stored = time.perf_counter() - t0
    return gen, work, stored, total, intervals


def record(meter: str, start: int) -> IntervalRecord:
    return IntervalRecord(meter, "energy_export", "kWh", start, start + 900, counter_start=1.0,
                          counter_end=1.5, delta=0.5, samples=90, expected=90)  # fmt: skip


def object_path_seconds_per_million(meters: int = 50, slots: int = 4000) -> float:
    """compute_from over AttestedInterval objects (decoded records), per million intervals."""
    params = load_parameter_set(PARAMS_DIR / "pv-export-mee.yaml")
    ref = BatchRef("gw", 1, "0" * 64, "0" * 64, "k")
    items = [
        AttestedInterval(ref, i, record(f"m{m}", T0 + i * 900)) for m in range(meters) for i in range(slots)
    ]
    infos = {f"m{m}": MeterInfo("gw", f"m{m}", "pv", 5.0, "1.0") for m in range(meters)}
    subject = Subject.of_meters("gw", list(infos))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        compute_from(items, infos, params, subject, Period(T0, T0 + slots * 900))
        best = min(best, time.perf_counter() - t0)
    return best * 1e6 / len(items)


def run() -> list[Figure]:
    gen, work, stored, total, n = year_of_statements()
    print(
        f"{n:,} intervals, {SITES} statements, ER {total:,.1f} tCO2e: engine+statements {work:.2f} s, "
        f"input generation {gen:.2f} s, storing with ledger {stored:.2f} s",
        file=sys.stderr,
    )
    per_million = object_path_seconds_per_million()
    return [
        Figure("methodology: 1 year x 10,000 meters (15 min) -> 100 signed statements", work * 1000, "ms"),
        Figure("methodology: generating those input arrays (not in the figure above)", gen * 1000, "ms"),
        Figure(
            "methodology: storing the 100 statements with the credited-interval ledger", stored * 1000, "ms"
        ),
        Figure(
            "methodology: object path (AttestedInterval -> statement arrays)",
            per_million * 1000,
            "ms per 1e6 intervals",
        ),
    ]


if __name__ == "__main__":
    for f in run():
        print(f"{f.name}: {f.value:,.0f} {f.unit}")
