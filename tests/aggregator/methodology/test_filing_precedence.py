"""The precedence rule (puhui-precedence/1) among parameter sets of one scenario: golden cases
written out by hand, and properties over generated candidates.

Hefei: 按照国标、地标、团标的次序采信相关标准: national > local (of the unit's region) > group,
then international and puhui's own (``none``). Filed sets come before unfiled ones; ties go
to the latest ``valid_from``, then the highest version, then id and sha256. The period is
test_golden's: 2025-06-21 08:00 to 18:00 China time. Filing numbers are fictitious.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.methodology.filing import (
    DROP_REASONS,
    RANK_KEYS,
    RULE,
    TIER_ORDER,
    NoApplicableSet,
    inapplicable,
    rank_key,
    select_for_unit,
)
from aggregator.methodology.params import Filing, LoadedParameterSet, load_parameter_set

from .filing_fixture import EV_V1, EV_V2, STANDARD, Spec, filed_set
from .test_golden import PERIOD

# (case, region, production, candidates, chosen "id version", selection reason, {id version: reason})
GOLDEN: list[tuple[str, str, bool, list[Spec], str, str, dict[str, str]]] = [
    (
        "national beats local and group",
        "beijing",
        True,
        [
            Spec("ev-group", "group"),
            Spec("ev-national", "national"),
            Spec("ev-bj-local", "local", regions=("beijing",)),
        ],
        "ev-national 2.0.0",
        "tier",
        {"ev-bj-local 2.0.0": "outranked_tier", "ev-group 2.0.0": "outranked_tier"},
    ),
    (
        "local of the unit's region beats group; the unfiled shipped-like set comes last",
        "beijing",
        False,
        [
            Spec("ev-puhui", status="absent"),
            Spec("ev-group", "group"),
            Spec("ev-bj-local", "local", regions=("beijing",)),
        ],
        "ev-bj-local 2.0.0",
        "tier",
        {"ev-group 2.0.0": "outranked_tier", "ev-puhui 2.0.0": "outranked_filing_status"},
    ),
    (
        "another province's local standard does not apply",
        "beijing",
        True,
        [Spec("ev-he-local", "local", regions=("hebei",)), Spec("ev-group", "group")],
        "ev-group 2.0.0",
        "only_applicable",
        {"ev-he-local 2.0.0": "outside_standard_region"},
    ),
    (
        "a national set that expired the day before the period is dropped",
        "hebei",
        True,
        [
            Spec("ev-national", "national", until="2025-06-20"),
            Spec("ev-he-local", "local", regions=("hebei",)),
        ],
        "ev-he-local 2.0.0",
        "only_applicable",
        {"ev-national 2.0.0": "expired"},
    ),
    (
        "valid through the period's day (24:00 China time) still applies",
        "hebei",
        True,
        [
            Spec("ev-national", "national", until="2025-06-21"),
            Spec("ev-he-local", "local", regions=("hebei",)),
        ],
        "ev-national 2.0.0",
        "tier",
        {"ev-he-local 2.0.0": "outranked_tier"},
    ),
    (
        "a national set valid from the day after the period starts is not yet valid",
        "beijing",
        True,
        [Spec("ev-national", "national", since="2025-06-22"), Spec("ev-group", "group")],
        "ev-group 2.0.0",
        "only_applicable",
        {"ev-national 2.0.0": "not_yet_valid"},
    ),
    (
        "valid from the period's own day applies (00:00 China time is before 08:00)",
        "beijing",
        True,
        [Spec("ev-national", "national", since="2025-06-21"), Spec("ev-group", "group")],
        "ev-national 2.0.0",
        "tier",
        {"ev-group 2.0.0": "outranked_tier"},
    ),
    (
        "a withdrawn filing never applies, even without production",
        "beijing",
        False,
        [Spec("ev-national", "national", status="withdrawn"), Spec("ev-group", "group")],
        "ev-group 2.0.0",
        "only_applicable",
        {"ev-national 2.0.0": "withdrawn"},
    ),
    (
        "two editions of one local standard: the later valid_from",
        "beijing",
        True,
        [
            Spec("ev-bj-2020", "local", regions=("beijing",), since="2020-01-01"),
            Spec("ev-bj-2024", "local", regions=("beijing",), since="2024-07-01"),
        ],
        "ev-bj-2024 2.0.0",
        "valid_from",
        {"ev-bj-2020 2.0.0": "outranked_valid_from"},
    ),
    (
        "one filing, two parameter versions: the higher, compared as numbers (2.10.0 > 2.9.0)",
        "beijing",
        True,
        [Spec("ev-group", "group", version="2.9.0"), Spec("ev-group", "group", version="2.10.0")],
        "ev-group 2.10.0",
        "version",
        {"ev-group 2.9.0": "outranked_version"},
    ),
    (
        "all else equal, the id decides",
        "beijing",
        True,
        [Spec("ev-b-group", "group"), Spec("ev-a-group", "group")],
        "ev-a-group 2.0.0",
        "id",
        {"ev-b-group 2.0.0": "outranked_id"},
    ),
    (
        "production drops pending and unfiled sets, whatever their tier",
        "beijing",
        True,
        [
            Spec("ev-national", "national", status="pending"),
            Spec("ev-bj-local", "local", status="unfiled", regions=("beijing",)),
            Spec("ev-puhui", status="absent"),
            Spec("ev-group", "group"),
        ],
        "ev-group 2.0.0",
        "only_applicable",
        {"ev-national 2.0.0": "pending", "ev-bj-local 2.0.0": "unfiled", "ev-puhui 2.0.0": "unfiled"},
    ),
    (
        "without production a filed group standard beats a pending national one",
        "beijing",
        False,
        [Spec("ev-national", "national", status="pending"), Spec("ev-group", "group")],
        "ev-group 2.0.0",
        "filing_status",
        {"ev-national 2.0.0": "outranked_filing_status"},
    ),
    (
        "outside a set's programme scope: only the set without a scope applies",
        "shanghai",
        True,
        [Spec("ev-group", "group"), Spec("ev-cdm", "international", base=EV_V1)],
        "ev-cdm 2.0.0",
        "only_applicable",
        {"ev-group 2.0.0": "outside_scope_region"},
    ),
    (
        "international and puhui's own come after group",
        "hebei",
        False,
        [
            Spec("ev-own", "none", status="absent", version="9.0.0"),
            Spec("ev-cdm", "international", base=EV_V1),
            Spec("ev-group", "group", since="2021-01-01"),
        ],
        "ev-group 2.0.0",
        "tier",
        {"ev-cdm 2.0.0": "outranked_tier", "ev-own 9.0.0": "outranked_filing_status"},
    ),
]


@pytest.mark.parametrize(
    ("case", "region", "production", "specs", "chosen", "reason", "others"),
    GOLDEN,
    ids=[g[0] for g in GOLDEN],
)
def test_golden_precedence(
    case: str,
    region: str,
    production: bool,
    specs: list[Spec],
    chosen: str,
    reason: str,
    others: dict[str, str],
) -> None:
    sets = [filed_set(s) for s in specs]  # through the loader: each fixture is a valid file
    sel = select_for_unit(sets, "ev_charging", region, PERIOD, production)
    assert f"{sel.chosen.id} {sel.chosen.version}" == chosen
    assert sel.reason == reason
    got = {f"{c.set.id} {c.set.version}": c.reason for c in sel.candidates}
    assert got == {chosen: "chosen", **others}
    doc = sel.to_json()
    assert doc["rule"] == RULE and doc["region"] == region and doc["scenario"] == "ev_charging"
    assert doc["chosen"] == {"id": sel.chosen.id, "version": sel.chosen.version, "sha256": sel.chosen.sha256}
    assert doc["candidates"][0]["reason"] == "chosen"
    assert select_for_unit(sets[::-1], "ev_charging", region, PERIOD, production).to_json() == doc


def test_candidates_list_ranked_sets_first_then_dropped_ones() -> None:
    specs = [
        Spec("ev-z-expired", "national", until="2024-12-31"),
        Spec("ev-group", "group"),
        Spec("ev-a-withdrawn", "national", status="withdrawn"),
        Spec("ev-bj-local", "local", regions=("beijing",)),
    ]
    sel = select_for_unit([filed_set(s) for s in specs], "ev_charging", "Beijing", PERIOD, True)
    assert [(c["id"], c["tier"], c["status"], c["reason"]) for c in sel.to_json()["candidates"]] == [
        ("ev-bj-local", "local", "filed", "chosen"),
        ("ev-group", "group", "filed", "outranked_tier"),
        ("ev-a-withdrawn", "national", "withdrawn", "withdrawn"),
        ("ev-z-expired", "national", "filed", "expired"),
    ]
    assert sel.region == "beijing"  # enrolments may spell it with capitals; scopes do not


def test_nothing_applies_names_every_set_and_why() -> None:
    specs = [
        Spec("ev-national", "national", until="2025-06-20"),
        Spec("ev-he-local", "local", regions=("hebei",)),
        Spec("ev-puhui", status="absent"),
    ]
    with pytest.raises(NoApplicableSet) as err:
        select_for_unit([filed_set(s) for s in specs], "ev_charging", "beijing", PERIOD, True)
    msg = str(err.value)
    assert msg.startswith(
        "no ev_charging parameter set applies to region 'beijing' for 2025-06-21T08:00+08:00 .. "
        "2025-06-21T18:00+08:00 (production signs only with a filed set valid for the whole period): "
    )
    assert (
        "ev-national 2.0.0: filing TEST-ev-national-2.0.0 (fictitious) (生态环境部) is valid through " in msg
    )
    assert "2025-06-20 (China time), the period ends 2025-06-21T18:00+08:00" in msg
    assert "ev-he-local 2.0.0: region 'beijing' is not where DB11/T 3043-2024 applies (hebei)" in msg
    assert "ev-puhui 2.0.0: not filed" in msg
    with pytest.raises(NoApplicableSet, match="no parameter set for scenario 'pv'"):
        select_for_unit([filed_set(s) for s in specs], "pv", "beijing", PERIOD)


def test_the_shipped_sets_are_unfiled_and_the_highest_version_wins_without_production() -> None:
    from aggregator.methodology.params import list_parameter_sets

    shipped = list_parameter_sets()
    assert all(s.params.filing is None for s in shipped)  # no 备案号 is known for any of them
    sel = select_for_unit(shipped, "ev_charging", "beijing", PERIOD)
    assert (sel.chosen.id, sel.chosen.version, sel.reason) == ("ev-charging-jjj", "2.0.0", "version")
    with pytest.raises(NoApplicableSet):
        select_for_unit(shipped, "ev_charging", "beijing", PERIOD, production=True)


# -- properties ----------------------------------------------------------------------------------

BASE = {"v2": load_parameter_set(EV_V2), "v1": load_parameter_set(EV_V1)}
REGIONS = ("beijing", "hebei", "shanghai")
DAY0 = dt.date(2025, 6, 21)  # the period's day


@st.composite
def candidate(draw: st.DrawFn, n: int) -> LoadedParameterSet:
    tier = draw(st.sampled_from(TIER_ORDER))
    status = draw(st.sampled_from(("filed", "filed", "pending", "unfiled", "withdrawn")))
    base = draw(st.sampled_from(("v1", "v2")))
    scope = ("beijing", "hebei")
    regions: list[str] = []
    if tier == "local" or (tier in ("group", "international") and draw(st.booleans())):
        regions = draw(st.lists(st.sampled_from(scope), min_size=1, max_size=2, unique=True))
    since = DAY0 + dt.timedelta(days=draw(st.integers(-800, 3))) if status != "unfiled" else None
    until = draw(st.none() | st.integers(-3, 800).map(lambda d: DAY0 + dt.timedelta(days=d)))
    if since is not None and until is not None and until < since:
        since, until = until, since
    filing = Filing(
        status=status,  # type: ignore[arg-type]
        tier=tier,  # type: ignore[arg-type]
        standard=STANDARD.get(tier),
        authority=None if status == "unfiled" else "test authority",
        number=f"TEST-{n} (fictitious)" if status in ("filed", "withdrawn") else None,
        regions=regions,
        valid_from=since,
        valid_to=until,
        source="generated",
    )
    set_id = draw(st.sampled_from(("ev-a", "ev-b", "ev-c")))
    version = f"{draw(st.integers(1, 3))}.{draw(st.integers(0, 12))}.0"
    with_filing = draw(st.integers(0, 5)) > 0
    params = BASE[base].params.model_copy(
        update={"id": set_id, "version": version, "filing": filing if with_filing else None}
    )
    digest = hashlib.sha256(repr((base, set_id, version, params.filing)).encode()).hexdigest()
    return LoadedParameterSet(params, digest)


pools = st.integers(1, 7).flatmap(lambda k: st.tuples(*(candidate(i) for i in range(k))))


def _select(sets: list[LoadedParameterSet], region: str, production: bool) -> object:
    try:
        return select_for_unit(sets, "ev_charging", region, PERIOD, production).to_json()
    except NoApplicableSet as exc:
        return str(exc)


@settings(max_examples=150, deadline=None)
@given(pools, st.sampled_from(REGIONS), st.booleans(), st.randoms(use_true_random=False))
def test_order_of_the_candidates_does_not_matter(
    pool: tuple[LoadedParameterSet, ...], region: str, production: bool, rnd: random.Random
) -> None:
    sets = list(pool)
    first = _select(sets, region, production)
    rnd.shuffle(sets)
    assert _select(sets, region, production) == first
    assert _select(sets + sets[:2], region, production) == first  # the same set twice counts once


@settings(max_examples=150, deadline=None)
@given(pools, st.sampled_from(REGIONS), st.booleans())
def test_never_picks_an_inapplicable_set_and_ranks_every_candidate(
    pool: tuple[LoadedParameterSet, ...], region: str, production: bool
) -> None:
    try:
        sel = select_for_unit(pool, "ev_charging", region, PERIOD, production)
    except NoApplicableSet:
        assert all(inapplicable(s, region, PERIOD, production) for s in pool)
        return
    c = sel.chosen.params
    assert c.scope is None or region in c.scope.regions
    f = c.filing
    if f is not None:
        assert not f.regions or region in f.regions
        assert f.status != "withdrawn"
        assert f.valid_from is None or f.valid_from <= DAY0
        assert f.valid_to is None or f.valid_to >= DAY0
    assert not production or (f is not None and f.status == "filed")
    distinct = {(s.id, s.version, s.sha256) for s in pool}
    assert len(sel.candidates) == len(distinct)
    assert [x.reason for x in sel.candidates].count("chosen") == 1
    for x in sel.candidates[1:]:
        assert x.reason in DROP_REASONS or x.reason.removeprefix("outranked_") in RANK_KEYS
        if x.reason.startswith("outranked_"):
            assert rank_key(sel.chosen) < rank_key(x.set)


@settings(max_examples=150, deadline=None)
@given(pools, st.sampled_from(REGIONS), st.booleans())
def test_a_valid_filed_national_set_always_beats_local_and_group(
    pool: tuple[LoadedParameterSet, ...], region: str, production: bool
) -> None:
    national = [
        s
        for s in pool
        if s.params.filing is not None
        and (s.params.filing.tier, s.params.filing.status) == ("national", "filed")
        and inapplicable(s, region, PERIOD, production) is None
    ]
    if not national:
        return
    sel = select_for_unit(pool, "ev_charging", region, PERIOD, production)
    assert sel.chosen.params.filing is not None
    assert (sel.chosen.params.filing.tier, sel.chosen.params.filing.status) == ("national", "filed")


@settings(max_examples=100, deadline=None)
@given(pools, st.sampled_from(REGIONS), st.booleans(), st.data())
def test_removing_a_losing_candidate_does_not_change_the_choice(
    pool: tuple[LoadedParameterSet, ...], region: str, production: bool, data: st.DataObject
) -> None:
    try:
        sel = select_for_unit(pool, "ev_charging", region, PERIOD, production)
    except NoApplicableSet:
        return
    losers = [s for s in pool if s.sha256 != sel.chosen.sha256]
    if not losers:
        return
    gone = data.draw(st.sampled_from(losers))
    rest = [s for s in pool if s.sha256 != gone.sha256]
    assert select_for_unit(rest, "ev_charging", region, PERIOD, production).chosen == sel.chosen
