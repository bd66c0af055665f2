"""OcppSessions (fast tier): session events and signed values in, session records out; its state
survives a restart; a stop sent again is one record; a stop without a start has no energy."""

from __future__ import annotations

import json

from drivers.contract import Sample
from drivers.ocpp.metering import SessionEvent
from gateway.ocpp_sessions import OcppSessions

T = 1_767_225_600.0


def start(tx: str, wh: float, t: float = T) -> SessionEvent:
    return SessionEvent("CP-1", "start", tx, 1, "CP-1.1", t, wh)


def stop(tx: str, wh: float, t: float = T + 3600, connector: int | None = 1) -> SessionEvent:
    meter = None if connector is None else "CP-1.1"
    return SessionEvent("CP-1", "stop", tx, connector, meter, t, wh, reason="Local")


def keeper(changes: list[int] | None = None) -> OcppSessions:
    calls = changes if changes is not None else []
    return OcppSessions(lambda s: None, meters={"CP-1.1"}, keys={}, changed=lambda: calls.append(1))


def test_a_session_without_signatures_is_gateway_signed_with_the_chargers_readings() -> None:
    changes: list[int] = []
    s = keeper(changes)
    s.session(start("7", 1000.0))
    s.session(stop("7", 8500.0))
    [r] = s.take_closed()
    assert (r.register_start_wh, r.register_stop_wh, r.energy_wh) == (1000.0, 8500.0, 7500.0)
    assert r.assurance == "gateway_signed" and r.flags == () and r.signed_values == ()
    assert (r.start_time_ms, r.stop_time_ms, r.stop_reason) == (T * 1000, (T + 3600) * 1000, "Local")
    assert len(changes) == 2 and s.take_closed() == []  # every change asks to be persisted


def test_open_sessions_survive_a_restart_and_a_repeated_stop_is_one_record() -> None:
    before = keeper()
    before.session(start("7", 1000.0))
    before.session(start("8", 50.0))
    before.session(stop("8", 90.0))
    state = json.loads(json.dumps(before.snapshot()))  # as persisted: plain JSON
    after = keeper()
    after.restore(state)
    assert after.open_transactions() == {"CP-1": {"7": 1}}
    [eight] = after.take_closed()  # closed before the restart, not sealed yet: still there
    assert eight.energy_wh == 40.0 and eight.flags == ()
    after.session(stop("8", 90.0))  # sent again: its answer was lost with the old process
    after.session(stop("7", 2000.0))
    [seven] = after.take_closed()
    assert seven.energy_wh == 1000.0 and seven.flags == ("gateway_restart",)


def test_a_stop_without_its_start_has_no_energy_and_says_why() -> None:
    s = keeper()
    s.session(stop("9", 5000.0, connector=None))
    [r] = s.take_closed()
    assert r.energy_wh is None and r.register_start_wh is None and r.flags == ("start_unseen",)
    s.session(start("10", 5000.0))
    s.session(stop("10", 4000.0))
    [down] = s.take_closed()
    assert down.energy_wh is None and down.flags == ("register_decreased",)


def test_samples_of_unconfigured_connectors_are_counted_not_taken() -> None:
    taken: list[Sample] = []
    s = OcppSessions(taken.extend, meters={"CP-1.1"}, keys={})
    s.samples([Sample("CP-1.1", "energy_delivered", 1.0, T), Sample("CP-9.1", "energy_delivered", 2.0, T)])
    assert [x.meter for x in taken] == ["CP-1.1"] and s.counts.unconfigured_samples == 1
