"""The ground-truth check of ``puhui demo``: statement ER against the simulator's truth.

For each statement, ER is recomputed with the same parameter set, the same units and grid
factors and the same array core (:func:`aggregator.methodology.evaluate`), but with the
simulator's true energy per 900 s interval (``fleet.truth()``) instead of the metered
deltas, over the very intervals the statement credited: the two must agree within
:data:`TOLERANCE`. ER over *every* interval of the period, from the truth, shows what the
conservative data policy gave up; each interval not credited is attributed to the injected
fault that explains it, or else to the engine's reason.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from puhui.demo import fmt_time

if TYPE_CHECKING:
    from aggregator.methodology import Computation
    from puhui.demo import Run
    from puhui.demo_report import ScenarioResult

TOLERANCE = 0.005  # issue 8: ER within 0.5 % of the ground truth
WH_TO = {"energy_mwh": 1e-6, "electricity_mwh": 1e-6, "heat_gj": 3.6e-6}


def truth_matrix(run: Run, comp: Computation, lag_s: int = 0) -> np.ndarray:
    """True activity per (series row, slot) in the engine's units, from ``fleet.truth()``:
    slot k holds the energy of ``[start_k - lag_s, end_k - lag_s)`` (whole truth intervals)."""
    keys = comp.series.keys
    p0, length = comp.period.start, comp.interval_s
    n_slots = comp.series.values.shape[1]
    out = np.zeros((len(keys), n_slots))
    devices = run.truth["devices"]
    for row, k in enumerate(keys):
        if k.role not in WH_TO:
            continue
        device, channel, direction = truth_channel(run, k.meter, k.quantity)
        for iv in devices[device][channel]["intervals"]:
            start, end = int(iv["start"]) + lag_s, int(iv["end"]) + lag_s
            slot = (start - p0) // length
            if 0 <= slot < n_slots and end <= p0 + (slot + 1) * length:
                out[row, slot] += iv[direction] * WH_TO[k.role]
    return out


def truth_channel(run: Run, meter: str, quantity: str) -> tuple[str, str, str]:
    """Which simulated device, channel and direction a gateway meter's quantity measures."""
    m = re.fullmatch(r"(.+)-s(\d+)", meter)
    if m and run.fleet_kinds.get(m.group(1)) == "alfen":
        return m.group(1), f"socket{m.group(2)}", "forward_wh"
    return meter, "main", "reverse_wh" if quantity == "energy_export" else "forward_wh"


def truth_er(comp: Computation, values: np.ndarray, mask: np.ndarray) -> tuple[float, dict[str, float]]:
    """ER (and activity totals) from true values over ``mask``, same rules and grid factors."""
    from aggregator.methodology import SeriesArrays, evaluate, rules_for
    from aggregator.methodology.series import MISSING, OK

    series = SeriesArrays(
        keys=comp.series.keys,
        unit_of_row=comp.series.unit_of_row,
        values=np.where(mask, values, 0.0),
        status=np.where(mask, OK, MISSING).astype(np.uint8),
    )
    grid = np.array([g.value for g in comp.grid])
    ev = evaluate(
        series,
        len(comp.subject.units),
        rules_for(comp.params.params),
        grid,
        period=comp.period,
        interval_s=comp.interval_s,
        threshold=0.0,
    )
    return ev.er, {role: float(t.sum()) for role, t in ev.totals.items()}


def used_mask(comp: Computation) -> np.ndarray:
    mask = np.zeros(comp.series.values.shape, bool)
    for row, runs in enumerate(comp.result.runs):
        for a, b in runs:
            mask[
                row, (a - comp.period.start) // comp.interval_s : (b - comp.period.start) // comp.interval_s
            ] = True
    return mask


def _causes(run: Run, comp: Computation, removed: np.ndarray) -> dict[str, np.ndarray]:
    """Each removed cell -> the fault that explains it, or the engine's reason."""
    rows, slots = removed.shape
    starts = comp.period.start + np.arange(slots) * comp.interval_s
    unit_meters = {u: set(comp.subject.units[u].meters) for u in range(len(comp.subject.units))}
    out: dict[str, np.ndarray] = {}
    left = removed.copy()
    for f in run.faults:
        if f.kind == "broker_outage":
            continue
        units = [u for u, ms in unit_meters.items() if f.target in ms]
        hit_rows = [r for r in range(rows) if int(comp.series.unit_of_row[r]) in units]
        window = (starts + comp.interval_s > f.start) & (starts < f.end + comp.interval_s)
        below = [r for r in hit_rows if not comp.result.credited[comp.series.unit_of_row[r]]]
        mask = np.zeros_like(left)
        mask[hit_rows] = window
        mask[below] = True  # the fault took the unit below the completeness threshold
        mask &= left
        if mask.any():
            label = f"{f.kind.replace('_', ' ')} {f.target} {fmt_time(f.start)[5:]}"
            out[label + (" (unit below the completeness threshold: whole period)" if below else "")] = mask
            left &= ~mask
    reasons = comp.series.reasons
    for code in np.unique(comp.series.status[left]):
        mask = left & (comp.series.status == code)
        name = (
            reasons[int(code)]
            if code > 1
            else "missing"
            if code == 1
            else "excluded with its unit or screened"
        )
        out[f"other: {name}"] = mask
    return out


def print_truth_check(run: Run, results: list[ScenarioResult]) -> bool:
    print(
        f"\nground-truth check: ER recomputed from fleet.truth() (true Wh per 900 s interval), same"
        f" parameter set, over the intervals each statement credited; limit {TOLERANCE:.1%}.\n"
        "  (Metered deltas run between the readings that close each interval, taken just after its"
        " boundary;\n  true energy runs between the exact boundaries.)"
    )
    ok = True
    for r in results:
        if r.comp is None or r.statement is None:
            print(f"  {r.scenario:14} no statement: CHECK NOT POSSIBLE")
            ok = False
            continue
        values = truth_matrix(run, r.comp)
        used = used_mask(r.comp)
        real = np.array([k.role in WH_TO for k in r.comp.series.keys])[:, None]
        er_used, _ = truth_er(r.comp, values, used)
        er_all, _ = truth_er(r.comp, values, np.broadcast_to(real, used.shape).copy())
        er = r.statement.er_tco2e
        diff = (er - er_used) / er_used if er_used else (0.0 if abs(er) < 1e-9 else float("inf"))
        passed = abs(diff) <= TOLERANCE
        ok &= passed
        r.check = {"er": er, "truth": er_used, "diff": diff, "passed": passed, "truth_all": er_all}
        print(
            f"  {r.scenario:14} statement {er:.6f}  truth {er_used:.6f} tCO2e  difference {diff:+.3%}  "
            f"{'PASS' if passed else 'FAIL'}"
        )
        removed = np.broadcast_to(real, used.shape) & ~used
        if not removed.any():
            print(f"  {'':14} every interval of the period was credited (truth over all: {er_all:.6f})")
            continue
        n_units_slots = _unit_slots(r.comp, removed)
        print(
            f"  {'':14} truth over every interval {er_all:.6f} ({er_all - er_used:+.6f}): "
            f"{n_units_slots} unit-intervals not credited, because of:"
        )
        for cause, mask in _causes(run, r.comp, removed).items():
            er_c, _ = truth_er(r.comp, values, mask)
            print(f"  {'':16} {cause}: {_unit_slots(r.comp, mask)} unit-intervals, {er_c:.6f} tCO2e")
    return ok


def _unit_slots(comp: Computation, mask: np.ndarray) -> int:
    per_unit = np.zeros((len(comp.subject.units), mask.shape[1]), bool)
    np.logical_or.at(per_unit, comp.series.unit_of_row, mask)
    return int(per_unit.sum())
