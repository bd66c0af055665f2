"""OCPP charging sessions become ``session`` evidence records (docs/ocpp.md, "Session records").

:class:`OcppSessions` is the :class:`drivers.ocpp.MeteringSink` of the gateway's OCPP
endpoint: register samples go on to the interval builder (``take``), session starts and the
signed meter values of a transaction are held as open sessions, and a stop closes one into a
:class:`evidence.records.SessionRecord`. The open sessions are part of the gateway's durable
state (:meth:`snapshot` / :meth:`restore`, persisted with the builder's snapshot), and every
change asks for that state to be persisted at once (``changed``): a gateway killed mid-session
still knows the session's start when the stop arrives after its restart.

Assurance: ``meter_signed`` only if the session's Begin and End readings both come from OCMF
records that verified with the meter key pinned at enrolment (and are usable: status good, no
energy error, time synchronised or relative); then the register bounds are those signed
readings. Otherwise ``gateway_signed``, with the charger's plain meterStart/meterStop (1.6) or
Transaction.Begin/End values (2.0.1).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization

from drivers.contract import Sample
from drivers.ocpp import FrameProblem, SessionEvent, SignedValue
from drivers.ocpp.metering import MeterKeys
from evidence.errors import MalformedRecord
from evidence.records import CarriedValue, SessionFlag, SessionRecord, decode_record

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_OPEN = 4096  # transactions held at once (all chargers); a start whose stop never comes ages out
MAX_SIGNED_PER_SESSION = 512  # a week of 15-minute clock readings, and more
RECENT_STOPS = 1024  # stops remembered, so a stop the charger sends again is not a second session
MISMATCH_WH = 1.0  # a plain bound differing more than this from the signed one is flagged
BEGIN, END = ("B", "Transaction.Begin"), ("E", "Transaction.End")


@dataclass
class _Open:
    """A session (or the signed values of a transaction) not stopped yet."""

    charger: str
    transaction_id: str
    connector: int | None = None
    meter: str | None = None
    start_time: float | None = None
    start_wh: float | None = None
    protocol: str = "ocpp1.6"
    restored: bool = False
    signed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SessionCounts:
    started: int = 0
    closed: int = 0
    meter_signed: int = 0
    problems: int = 0
    unconfigured_samples: int = 0
    aged_out: int = 0


class OcppSessions:
    """Metering sink of the OCPP endpoint: samples to the builder, sessions to records."""

    def __init__(
        self,
        take: Callable[[Sequence[Sample]], None],
        *,
        meters: set[str],
        keys: Mapping[str, MeterKeys],
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._take, self._meters, self._keys, self._changed = take, meters, keys, changed
        self.counts = SessionCounts()
        self._open: dict[tuple[str, str], _Open] = {}
        self._closed: list[SessionRecord] = []
        self._unconfigured: set[str] = set()
        self._recent: dict[tuple[str, str], None] = {}  # stops seen lately, oldest first

    # -- MeteringSink ---------------------------------------------------------------------------
    def samples(self, samples: Sequence[Sample]) -> None:
        known = [s for s in samples if s.meter in self._meters]
        for s in samples:
            if s.meter not in self._meters:
                self.counts.unconfigured_samples += 1
                if s.meter not in self._unconfigured:  # loudly, once per meter: these are not counted
                    self._unconfigured.add(s.meter)
                    log.warning("OCPP meter %s is not in the site's meters: its readings are not counted "
                                "(add a meter with driver: ocpp for it)", s.meter)  # fmt: skip
        if known:
            self._take(known)

    def session(self, event: SessionEvent) -> None:
        key = (event.charger, event.transaction_id)
        if event.kind == "start":
            entry = self._entry(key)
            entry.connector, entry.meter, entry.protocol = event.connector, event.meter, event.protocol
            entry.start_time, entry.start_wh = event.time, event.meter_wh
            self.counts.started += 1
        elif key in self._recent and key not in self._open:
            # sent again: its answer was lost (a gateway killed between forwarding and reading)
            log.info("charger %s transaction %s: stop seen again; one session record", *key)
            return
        else:
            entry = self._open.pop(key) if key in self._open else _Open(event.charger, event.transaction_id)
            self._recent[key] = None
            if len(self._recent) > RECENT_STOPS:
                del self._recent[next(iter(self._recent))]
            record = self._record(entry, event)
            self._closed.append(record)
            self.counts.closed += 1
            self.counts.meter_signed += record.assurance == "meter_signed"
        self._changed()

    def signed(self, value: SignedValue) -> None:
        if value.transaction_id is None:
            return  # a reading outside a transaction: a sample, not a session's
        entry = self._entry((value.charger, value.transaction_id))
        if entry.connector is None:
            entry.connector, entry.meter = value.connector, value.meter
        if len(entry.signed) >= MAX_SIGNED_PER_SESSION:
            log.warning("charger %s transaction %s: more than %d signed values; later ones are not kept in "
                        "its session record", value.charger, value.transaction_id,
                        MAX_SIGNED_PER_SESSION)  # fmt: skip
            return
        entry.signed.append(_signed_state(value))
        self._changed()

    def problem(self, problem: FrameProblem) -> None:
        self.counts.problems += 1

    # -- the gateway's calls --------------------------------------------------------------------
    def take_closed(self) -> list[SessionRecord]:
        """The session records closed since the last call (the caller submits them)."""
        out, self._closed = self._closed, []
        return out

    def put_back(self, records: Sequence[SessionRecord]) -> None:
        """Records a failed submit did not take: first in line again."""
        self._closed[:0] = records

    def open_transactions(self) -> dict[str, dict[str, int]]:
        """charger -> transaction id -> connector of the open sessions (to resume readers)."""
        out: dict[str, dict[str, int]] = {}
        for (charger, tx), entry in self._open.items():
            if entry.connector is not None:
                out.setdefault(charger, {})[tx] = entry.connector
        return out

    def snapshot(self) -> dict[str, Any]:
        """The open sessions and closed records not submitted yet, as plain JSON data."""
        return {
            "version": STATE_VERSION,
            "open": [vars(e) for e in self._open.values()],
            "closed": [r.to_json() for r in self._closed],
            "recent_stops": [list(k) for k in self._recent],
        }

    def restore(self, state: Any) -> None:
        """Continue from :meth:`snapshot` data (None: nothing to restore). The sessions open
        then are flagged ``gateway_restart`` when they close."""
        if state is None:
            return
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not an OCPP sessions snapshot (version {STATE_VERSION})")
        for raw in state["open"]:
            entry = _Open(**{**raw, "restored": True})
            self._open[(entry.charger, entry.transaction_id)] = entry
        self._recent = {(str(c), str(t)): None for c, t in state.get("recent_stops", [])}
        for raw in state["closed"]:  # the reference decoder judges what was persisted
            record = decode_record(json.dumps(raw, separators=(",", ":")).encode())
            if not isinstance(record, SessionRecord):
                raise MalformedRecord(f"OCPP sessions snapshot: a closed entry is a {record.type} record")
            self._closed.append(record)
        log.info(
            "OCPP sessions restored: %d open, %d closed not yet sealed", len(self._open), len(self._closed)
        )

    # -- building records -----------------------------------------------------------------------
    def _entry(self, key: tuple[str, str]) -> _Open:
        entry = self._open.get(key)
        if entry is None:
            entry = self._open[key] = _Open(*key)
            if len(self._open) > MAX_OPEN:
                oldest = next(iter(self._open))
                del self._open[oldest]
                self.counts.aged_out += 1
                log.warning("OCPP sessions: more than %d open; forgot transaction %s of charger %s (its "
                            "stop, if it comes, is flagged start_unseen)", MAX_OPEN, oldest[1],
                            oldest[0])  # fmt: skip
        return entry

    def _record(self, entry: _Open, stop: SessionEvent) -> SessionRecord:
        flags: set[SessionFlag] = set()
        connector = entry.connector if entry.connector is not None else stop.connector
        meter = entry.meter or stop.meter
        if entry.start_time is None:
            flags.add("start_unseen")
        if entry.restored:
            flags.add("gateway_restart")
        if any(v["status"] != "verified" for v in entry.signed):
            flags.add("signature_failed")
        begin, end = _bound(entry.signed, BEGIN), _bound(entry.signed, END)
        start_wh, stop_wh = entry.start_wh, stop.meter_wh
        assurance = "gateway_signed"
        if begin is not None and end is not None:
            assurance = "meter_signed"
            for plain, signed in ((start_wh, begin), (stop_wh, end)):
                if plain is not None and abs(plain - signed) > MISMATCH_WH:
                    flags.add("register_mismatch")
            start_wh, stop_wh = begin, end
        energy = None
        if start_wh is not None and stop_wh is not None and "start_unseen" not in flags:
            if stop_wh >= start_wh:
                energy = float(stop_wh - start_wh)
            else:
                flags.add("register_decreased")
        key = self._pinned_key(stop.charger, connector)
        return SessionRecord(
            stop.charger, connector, meter, stop.transaction_id, stop.protocol,
            _ms(entry.start_time), _ms(stop.time) or 0,
            _float(start_wh) if "start_unseen" not in flags else None, _float(stop_wh), energy, stop.reason,
            tuple(CarriedValue(v["context"], v["carried"], v["status"]) for v in entry.signed),
            key, assurance, tuple(sorted(flags)),  # type: ignore[arg-type]
        )  # fmt: skip

    def _pinned_key(self, charger: str, connector: int | None) -> str | None:
        keys = self._keys.get(charger)
        key = keys.for_connector(connector) if keys is not None else None
        if key is None:
            return None
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return der.hex()


def _signed_state(value: SignedValue) -> dict[str, Any]:
    """What a session keeps of a signed value: as carried, its status, and its usable,
    verified energy readings by OCMF transaction type (B, C, E) for the bounds."""
    readings = [
        [r.transaction, r.wh]
        for r in value.readings
        if value.meter_signed and r.usable and r.wh is not None and (r.is_import_register or r.obis is None)
    ]
    return {"context": value.context, "carried": value.carried, "status": value.status, "readings": readings}


def _bound(signed: list[dict[str, Any]], which: tuple[str, str]) -> float | None:
    """The verified reading of the session's Begin or End (OCMF TX, else the OCPP context)."""
    tx, context = which
    for v in signed if tx == "B" else reversed(signed):
        if v["status"] != "verified":
            continue
        for reading_tx, wh in v["readings"]:
            if reading_tx == tx or (reading_tx is None and v["context"] == context):
                return float(wh)
    return None


def _ms(t: float | None) -> int | None:
    return None if t is None else round(t * 1000)


def _float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)
