"""The package verifier's session logic as pure functions (puhui/verify_sessions.py): listed
sessions found in their sources, the import's checks again, credited energy adding up. An
honest listing passes; any one change is refused with exactly one problem naming the session."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.sessions.manifest import Manifest
from aggregator.sessions.records import SessionRecord
from evidence import generate_key
from firmware_sim.ev_platform import manifest, to_json
from puhui.verify_sessions import (
    check_chain_sessions,
    check_sessions,
    credited_energy,
    recheck_records,
    resolve_sessions,
    source_file,
)
from tests.aggregator.sessions.support import NETWORK, WEEK, WEEK_END, week_orders

NET = "net-x"
T0_MS = 1_772_380_800_000  # 2026-03-01T16:00Z


@st.composite
def sessions(draw: st.DrawFn) -> list[SessionRecord]:
    """Sessions on a few connectors, one after another on each, registers never going back."""
    n = draw(st.integers(1, 12))
    clock: dict[str, tuple[int, float]] = {}
    out = []
    for i in range(n):
        charger = draw(st.sampled_from(["CP-1", "CP-2", "CP-3"]))
        t, wh = clock.get(charger, (T0_MS, draw(st.floats(0, 1e6))))
        start = t + draw(st.integers(0, 3_600_000))
        minutes = draw(st.integers(1, 600))
        energy = round(draw(st.floats(0, 11.0)) * 1000 * minutes / 60, 2)  # at most the 11 kW nameplate
        stop = start + minutes * 60_000
        out.append(SessionRecord(NET, f"s-{i}", charger, "1", start, stop, wh, wh + energy, energy, 11.0))
        clock[charger] = (stop, wh + energy + draw(st.sampled_from([0.0, 5.0])))
    return out


def _listing(records: list[SessionRecord], n_sources: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    sources: dict[str, dict[str, SessionRecord]] = {f"{k:064x}": {} for k in range(n_sources)}
    items = []
    for i, r in enumerate(records):
        sha = f"{i % n_sources:064x}"
        sources[sha][r.session_id] = r
        items.append({"session_id": r.session_id, "sha256": r.sha256, "source_sha256": sha,
                      "energy_wh": r.energy_wh, "status": "credited"})  # fmt: skip
    return items, sources


def _level(items: list[dict[str, Any]]) -> dict[str, Any]:
    total = math.fsum(i["energy_wh"] for i in items if i["status"] == "credited")
    return {"levels": {"platform_attested": {"credited": True, "activity": {"energy_mwh": total / 1e6}}}}


@given(sessions(), st.integers(1, 3))
def test_an_honest_listing_resolves_every_session(records: list[SessionRecord], n_sources: int) -> None:
    items, sources = _listing(records, n_sources)
    problems: list[str] = []
    found = resolve_sessions(NET, items, sources, problems)
    assert problems == []
    assert [s.record for s in found] == records
    assert [s.source_sha256 for s in found] == [i["source_sha256"] for i in items]
    assert credited_energy(items, _level(items)) is None
    manifests = {sha: Manifest(NET, sha, 0, T0_MS, T0_MS + 10**10, "k", b"") for sha in sources}
    recheck_records(NET, found, manifests, problems)
    assert problems == []


CHANGES = ("not_in_source", "digest", "energy", "other_source", "twice", "source_absent")


@given(sessions(), st.integers(2, 3), st.sampled_from(CHANGES), st.data())
def test_one_change_is_one_problem_naming_the_session(
    records: list[SessionRecord], n_sources: int, change: str, data: st.DataObject
) -> None:
    items, sources = _listing(records, n_sources)
    k = data.draw(st.integers(0, len(items) - 1))
    item, sid = items[k], items[k]["session_id"]
    own = item["source_sha256"]
    if change == "not_in_source":
        del sources[own][sid]
    elif change == "digest":
        item["sha256"] = "0" * 64
    elif change == "energy":
        item["energy_wh"] += data.draw(st.sampled_from([-1.0, 0.01, 1000.0]))
    elif change == "other_source":
        item["source_sha256"] = next(s for s in sources if s != own)
    elif change == "twice":
        items.append(dict(item))
    else:
        item["source_sha256"] = "f" * 64
    problems: list[str] = []
    found = resolve_sessions(NET, items, sources, problems)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"sessions: {NET} session {sid}"), problems
    assert len(found) == len(records) - (change != "twice")


@given(sessions(), st.floats(1e-3, 1e6), st.booleans())
def test_credited_energy_that_does_not_add_up_is_named(
    records: list[SessionRecord], delta_wh: float, more: bool
) -> None:
    items, _ = _listing(records, 1)
    level = _level(items)
    activity = level["levels"]["platform_attested"]["activity"]
    total = activity["energy_mwh"] * 1e6
    if not more and delta_wh > total:
        delta_wh = total + 1.0  # below zero: still not the sum
    activity["energy_mwh"] += (delta_wh if more else -delta_wh) / 1e6
    if math.isclose(total, activity["energy_mwh"] * 1e6, rel_tol=1e-9, abs_tol=1e-6):
        return  # below the comparison's resolution
    problem = credited_energy(items, level)
    assert problem is not None and problem.startswith("statement: assurance.levels.platform_attested credits")


@given(sessions())
def test_sessions_not_credited_do_not_count(records: list[SessionRecord]) -> None:
    items, _ = _listing(records, 1)
    for i in items:
        i["status"] = "assurance_refused"
    refused = {"levels": {"platform_attested": {"credited": False, "activity": {"energy_mwh": 0.0}}}}
    assert credited_energy(items, refused) is None
    assert credited_energy(items, None) is None  # a statement with no assurance section


@given(sessions(), st.sampled_from(["energy", "overlap", "period", "network"]), st.data())
def test_a_source_record_the_import_would_refuse_is_named(
    records: list[SessionRecord], fault: str, data: st.DataObject
) -> None:
    items, sources = _listing(records, 1)
    manifests = {sha: Manifest(NET, sha, 0, T0_MS, T0_MS + 10**10, "k", b"") for sha in sources}
    k = data.draw(st.integers(0, len(records) - 1))
    r = records[k]
    if fault == "energy":
        bad = SessionRecord(NET, r.session_id, r.charger, "1", r.start_ms, r.stop_ms, r.start_wh, r.stop_wh,
                            r.energy_wh + 100.0 + 0.01 * r.energy_wh, 11.0)  # fmt: skip
    elif fault == "overlap":
        other = next((o for o in records if o.charger == r.charger and o is not r), None)
        if other is None:
            return
        bad = SessionRecord(NET, r.session_id, r.charger, "1", other.start_ms, other.start_ms + 60_000,
                            r.start_wh, r.start_wh, 0.0, 11.0)  # fmt: skip
    elif fault == "period":
        bad = SessionRecord(NET, r.session_id, r.charger, "1", T0_MS - 120_000, T0_MS - 60_000, 0.0, 0.0, 0.0)
    else:
        bad = SessionRecord("net-y", r.session_id, r.charger, "1", r.start_ms, r.stop_ms, r.start_wh,
                            r.stop_wh, r.energy_wh, 11.0)  # fmt: skip
    sha = items[k]["source_sha256"]
    sources[sha][r.session_id] = bad
    items[k]["sha256"], items[k]["energy_wh"] = bad.sha256, bad.energy_wh
    problems: list[str] = []
    found = resolve_sessions(NET, items, sources, problems)
    assert problems == []
    recheck_records(NET, found, manifests, problems)
    assert problems and all(p.startswith(f"sessions: {NET} session s-") for p in problems), problems
    assert (
        any(p.startswith(f"sessions: {NET} session {r.session_id}") for p in problems) or fault == "overlap"
    )


def test_a_source_gives_the_record_of_an_id_the_import_took() -> None:
    """Two records under one id, the first refused by the import's checks (energy vs readings):
    the import took the second, and so does the verifier."""
    orders = week_orders()[:1]
    bad = replace(orders[0], energy_kwh=orders[0].energy_kwh + 5.0)
    data = to_json([bad, orders[0]])
    key = generate_key()
    sha = hashlib.sha256(data).hexdigest()
    signed = manifest(key, NETWORK, data, 2, WEEK, WEEK_END)
    members = {f"sessions/{sha}.source": data, f"sessions/{sha}.manifest": signed}
    problems: list[str] = []
    src = source_file(members, sha, NETWORK, key.public_key, problems)
    assert problems == [] and src is not None
    assert src.records[orders[0].session_id].energy_wh == orders[0].energy_kwh * 1000


@pytest.mark.parametrize("listing", [[], "x", {"items": 3}, {"items": None}])
def test_a_malformed_listing_is_a_problem_not_a_traceback(listing: Any) -> None:
    problems: list[str] = []
    body = {"evidence": {"sessions": listing, "chain_sessions": listing}}
    assert check_sessions({}, {}, body, {}, [], problems) is None
    check_chain_sessions(body, "gw", {}, [], problems)
    assert problems == [
        "statement: evidence.sessions is not a listing with items",
        "statement: evidence.chain_sessions is not a listing with items",
    ]
