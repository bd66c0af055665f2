"""Per-record checks of imported sessions (docs/ev-sessions.md, *Checks*).

Each refusal names the session id and the field. A record is checked on its own
(:func:`check_record`: times, readings, energy vs readings, power vs duration vs nameplate)
and against the sessions already held on its connector and the earlier ones of the same file
(:func:`check_continuity`: no overlap in time, register readings that never go back).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aggregator.sessions.records import Refusal, SessionRecord

ENERGY_ABS_TOLERANCE_WH = 10.0  # the usual resolution of a reading in a charging order (0.01 kWh)
ENERGY_REL_TOLERANCE = 0.001  # and 0.1 % of the energy, for readings rounded before subtraction
POWER_TOLERANCE = 0.02  # average power may exceed the nameplate by 2 % (clock and meter rounding)
MAX_POWER_KW = 1000.0  # assumed engineering bound when the record names no nameplate
FUTURE_SLACK_MS = 300_000  # a session may end at most 5 minutes after the aggregator's clock


@dataclass(frozen=True, slots=True)
class Span:
    """A session already held on a connector (or taken earlier in the same import)."""

    session_id: str
    start_ms: int
    stop_ms: int
    start_wh: float
    stop_wh: float

    @classmethod
    def of(cls, r: SessionRecord) -> Span:
        return cls(r.session_id, r.start_ms, r.stop_ms, r.start_wh, r.stop_wh)


def check_record(r: SessionRecord, now_ms: int) -> Refusal | None:
    """A refusal if the record contradicts itself, else None."""
    sid = r.session_id
    if r.stop_ms <= r.start_ms:
        return Refusal(sid, "stop", "the session does not end after it starts")
    if r.stop_ms > now_ms + FUTURE_SLACK_MS:
        return Refusal(sid, "stop", "the session ends in the future (aggregator clock)")
    if r.stop_wh < r.start_wh:
        return Refusal(sid, "stop_reading", f"{r.stop_wh:g} Wh is below the start reading {r.start_wh:g} Wh")
    read = r.stop_wh - r.start_wh
    tolerance = ENERGY_ABS_TOLERANCE_WH + ENERGY_REL_TOLERANCE * read
    if abs(r.energy_wh - read) > tolerance:
        return Refusal(
            sid, "energy",
            f"{r.energy_wh:g} Wh does not match the readings ({r.stop_wh:g} - {r.start_wh:g} = {read:g} Wh, "
            f"tolerance {tolerance:.4g} Wh)",
        )  # fmt: skip
    hours = (r.stop_ms - r.start_ms) / 3_600_000
    limit_kw = MAX_POWER_KW if r.nameplate_kw is None else r.nameplate_kw * (1 + POWER_TOLERANCE)
    if r.energy_wh > limit_kw * 1000.0 * hours + ENERGY_ABS_TOLERANCE_WH:
        average = r.energy_wh / 1000.0 / hours
        what = "the assumed 1 MW bound" if r.nameplate_kw is None else f"the nameplate {r.nameplate_kw:g} kW"
        return Refusal(
            sid, "energy",
            f"{r.energy_wh / 1000:g} kWh in {hours * 60:.4g} min is an average of {average:.4g} kW, "
            f"above {what}",
        )  # fmt: skip
    return None


def check_continuity(
    candidates: Iterable[SessionRecord], held: Mapping[tuple[str, str, str], Sequence[Span]]
) -> tuple[list[SessionRecord], list[Refusal]]:
    """Take the candidates that fit on their connector, in start order: none overlaps a held or
    taken session, and its readings lie between its neighbours' (a session's start reading is
    not below the previous session's stop reading, its stop reading not above the next one's
    start). ``held``: the sessions already stored per connector (any order)."""
    spans = {k: sorted(v, key=lambda s: s.start_ms) for k, v in held.items()}
    taken: list[SessionRecord] = []
    refused: list[Refusal] = []
    for r in sorted(candidates, key=lambda r: (r.connector_key, r.start_ms, r.session_id)):
        line = spans.setdefault(r.connector_key, [])
        pos = bisect.bisect_left([s.start_ms for s in line], r.start_ms)
        why = _misfit(r, line[pos - 1] if pos else None, line[pos] if pos < len(line) else None)
        if why is not None:
            refused.append(why)
            continue
        line.insert(pos, Span.of(r))
        taken.append(r)
    return taken, refused


def _misfit(r: SessionRecord, prev: Span | None, nxt: Span | None) -> Refusal | None:
    sid, where = r.session_id, f"charger {r.charger} connector {r.connector}"
    if prev is not None and prev.stop_ms > r.start_ms:
        return Refusal(sid, "start", f"overlaps session {prev.session_id} on {where}")
    if nxt is not None and nxt.start_ms < r.stop_ms:
        return Refusal(sid, "stop", f"overlaps session {nxt.session_id} on {where}")
    if prev is not None and r.start_wh < prev.stop_wh:
        return Refusal(
            sid, "start_reading",
            f"{r.start_wh:g} Wh is below the stop reading {prev.stop_wh:g} Wh of the previous session "
            f"{prev.session_id} on {where}",
        )  # fmt: skip
    if nxt is not None and r.stop_wh > nxt.start_wh:
        return Refusal(
            sid, "stop_reading",
            f"{r.stop_wh:g} Wh is above the start reading {nxt.start_wh:g} Wh of the next session "
            f"{nxt.session_id} on {where}",
        )  # fmt: skip
    return None
