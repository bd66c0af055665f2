"""Property tests: the vectorised engine against a scalar reference, ER >= 0, additivity."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.methodology import (
    Period,
    Subject,
    Unit,
    compute_from,
    load_parameter_set,
    parse_parameter_set,
)
from aggregator.methodology.params import PARAMS_DIR
from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from evidence.records import FLAGS

from .evidence_fixture import T0, counter_records

REF = BatchRef("gw", 1, "0" * 64, "0" * 64, "k")
PV = load_parameter_set(PARAMS_DIR / "pv-export-mee.yaml")
EV = load_parameter_set(PARAMS_DIR / "ev-charging-jjj.yaml")
HEAT = load_parameter_set(PARAMS_DIR / "clean-heating-hebei.yaml")
PV_NO_THRESHOLD = parse_parameter_set(
    (PARAMS_DIR / "pv-export-mee.yaml").read_bytes().replace(b"threshold: 0.9", b"threshold: 0.0")
)

slot = st.tuples(
    st.one_of(st.none(), st.floats(0, 50, allow_nan=False)),
    st.sets(st.sampled_from(sorted(FLAGS - {"gap"})), max_size=2),
    st.booleans(),  # implausible
)


def attested(meter: str, quantity: str, slots: list, unit: str = "kWh") -> list[AttestedInterval]:  # type: ignore[type-arg]
    recs = counter_records(
        meter, quantity, [s[0] for s in slots], unit=unit, flags={i: tuple(s[1]) for i, s in enumerate(slots)}
    )
    return [
        AttestedInterval(REF, i, r, ("energy_above_nameplate",) if s[2] else ())
        for i, (r, s) in enumerate(zip(recs, slots, strict=True))
    ]


def scalar_pv(intervals: list[AttestedInterval], n: int, threshold: float, ef: float) -> tuple[float, float]:
    """Reference, one interval at a time: credited-quality iff plausible, a delta, and no excluded flag."""
    policy = PV.params.data_policy.flags
    good = [
        ai.record.delta
        for ai in intervals
        if not ai.issues
        and ai.record.delta is not None
        and all(policy[f] == "credit" for f in ai.record.flags)
    ]
    completeness = len(good) * 900 / (n * 900)
    if completeness < threshold:
        return completeness, 0.0
    return completeness, sum(d for d in good if d is not None) / 1000 * ef


@settings(max_examples=80, deadline=None)
@given(st.lists(slot, min_size=1, max_size=60))
def test_pv_vectorised_equals_scalar_reference(slots: list) -> None:  # type: ignore[type-arg]
    ivs = attested("m", "energy_export", slots)
    period = Period(T0, T0 + 900 * len(slots))
    comp = compute_from(
        ivs, {"m": MeterInfo("gw", "m", "pv", 5.0, "1.0")}, PV, Subject.of_meters("gw", ["m"]), period
    )
    completeness, er = scalar_pv(ivs, len(slots), 0.9, 0.5306)
    assert comp.result.completeness[0] == completeness
    assert math.isclose(comp.result.er, er, rel_tol=1e-9, abs_tol=1e-15)
    assert comp.result.used + sum(comp.result.excluded.values()) == len(slots)


@settings(max_examples=60, deadline=None)
@given(st.lists(slot, min_size=2, max_size=60), st.data())
def test_pv_crediting_is_additive_over_disjoint_periods(slots: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    cut = data.draw(st.integers(1, len(slots) - 1))
    ivs = attested("m", "energy_export", slots)
    infos = {"m": MeterInfo("gw", "m", "pv", 5.0, "1.0")}
    subject = Subject.of_meters("gw", ["m"])

    def er(a: int, b: int) -> float:
        return compute_from(
            ivs, infos, PV_NO_THRESHOLD, subject, Period(T0 + a * 900, T0 + b * 900)
        ).result.er

    assert math.isclose(er(0, cut) + er(cut, len(slots)), er(0, len(slots)), rel_tol=1e-9, abs_tol=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.lists(slot, min_size=1, max_size=40), st.lists(slot, min_size=1, max_size=40))
def test_er_is_never_negative(elec: list, heat: list) -> None:  # type: ignore[type-arg]
    n = min(len(elec), len(heat))
    period = Period(T0, T0 + 900 * n)
    ivs = attested("e", "energy_import", elec[:n]) + attested("h", "heat_energy", heat[:n])
    infos = {m: MeterInfo("gw", m, "clean_heating", 9.0, "1.0") for m in ("e", "h")}
    for subject in (Subject("gw", (Unit("u", ("e", "h")),)), Subject.of_meters("gw", ["e"])):
        r = compute_from(ivs, infos, HEAT, subject, period).result
        assert r.er >= 0.0 and (r.be >= 0).all() and (r.pe >= 0).all()
    ev = compute_from(
        attested("c", "energy_delivered", elec[:n]),
        {"c": MeterInfo("gw", "c", "ev_charging", 22.0, "1.0")},
        EV,
        Subject.of_meters("gw", ["c"]),
        period,
    ).result
    assert ev.er >= 0.0
