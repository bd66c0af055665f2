"""What the gateway reads from OCPP traffic: register samples, sessions, signed values, problems.

One :class:`MeteringReader` per charge point sees every frame in both directions (the tap
forwards them, the local controller receives and answers them) and hands what it reads to a
:class:`MeteringSink`. Both modes use this one reader, so they produce the same samples.

Read (OCPP 1.6J): StartTransaction (+ its CALLRESULT's transactionId), MeterValues,
StopTransaction with transactionData; sampled values with ``format: SignedData`` carry OCMF.
Read (OCPP 2.0.1): TransactionEvent (Started/Updated/Ended) with meterValue, MeterValues;
``signedMeterValue`` carries OCMF. Energy registers become counter samples
(``energy_delivered``, Wh) per connector (1.6) or EVSE (2.0.1), meter id ``<charger>.<n>``;
a reading from an OCMF record that verifies with the meter's pinned key is *meter-signed*
(``Sample.source`` ends in ``+ocmf``). Nothing here raises on a frame: a malformed one is
reported as a :class:`FrameProblem` naming the field.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from common.clock import Clock
from drivers.contract import Sample
from drivers.ocpp import ocmf
from drivers.ocpp.errors import OcmfError, OcmfFormatError, OcmfKeyError

log = logging.getLogger(__name__)

OcppVersion = Literal["ocpp1.6", "ocpp2.0.1"]
SignatureStatus = Literal["verified", "signature_failed", "no_pinned_key", "key_mismatch", "malformed"]
Direction = Literal["charger", "csms"]

ENERGY = "energy_delivered"  # Wh, a lifetime register (counter)
ENERGY_RETURNED = "energy_returned"  # Wh, export register (V2G)
POWER = "power"  # W (gauge)
METER_SIGNED = "+ocmf"  # Sample.source suffix of a reading whose OCMF signature verified
# measurand -> (quantity, unit -> factor to the quantity's unit)
MEASURANDS: dict[str, tuple[str, dict[str, Decimal]]] = {
    "Energy.Active.Import.Register": (ENERGY, {"Wh": Decimal(1), "kWh": Decimal(1000)}),
    "Energy.Active.Export.Register": (ENERGY_RETURNED, {"Wh": Decimal(1), "kWh": Decimal(1000)}),
    "Power.Active.Import": (POWER, {"W": Decimal(1), "kW": Decimal(1000)}),
}
DEFAULT_MEASURAND = "Energy.Active.Import.Register"
OUTLET = ("Outlet", None)  # locations read; Inlet (grid side) and EV are not the delivered energy
EXCERPT_CHARS = 200
MAX_OPEN_TRANSACTIONS = 256  # per charger; a few connectors have at most a few open at a time


def is_meter_signed(sample: Sample) -> bool:
    """The reading came from an OCMF record that verified with the meter's pinned key."""
    return sample.source.endswith(METER_SIGNED)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A charging session started or stopped, as the charger reported it."""

    charger: str
    kind: Literal["start", "stop"]
    transaction_id: str
    connector: int | None  # 1.6 connectorId, 2.0.1 EVSE id; None if never learnt
    meter: str | None  # meter id of the connector
    time: float  # the message's timestamp (charger clock)
    meter_wh: float | None  # meterStart/meterStop (1.6), Transaction.Begin/End register (2.0.1)
    id_tag: str | None = None
    reason: str | None = None
    protocol: OcppVersion = "ocpp1.6"


@dataclass(frozen=True, slots=True)
class SignedValue:
    """A signed meter value as carried (kept as evidence) and what checking it gave."""

    charger: str
    connector: int | None
    meter: str | None
    transaction_id: str | None
    context: str | None  # Transaction.Begin, Sample.Clock, Transaction.End, ...
    carried: str  # exactly as in the frame (OCMF text, its base64/hex, or a JSON wrapper)
    record: str | None  # the OCMF record text, None if it could not be unwrapped
    status: SignatureStatus
    detail: str = ""
    readings: tuple[ocmf.OcmfReading, ...] = ()

    @property
    def meter_signed(self) -> bool:
        return self.status == "verified"


@dataclass(frozen=True, slots=True)
class FrameProblem:
    """A frame (forwarded unchanged) whose metering content could not be read, and why."""

    charger: str
    direction: Direction
    problem: str
    frame: str  # the first EXCERPT_CHARS characters
    time: float


class MeteringSink(Protocol):
    """Where the reader hands what it read. Called on the forwarding path: be quick (queue)."""

    def samples(self, samples: Sequence[Sample]) -> None: ...

    def session(self, event: SessionEvent) -> None: ...

    def signed(self, value: SignedValue) -> None: ...

    def problem(self, problem: FrameProblem) -> None: ...


@dataclass
class CollectingSink:
    """A sink that keeps everything in lists (tests, the bench, a first look at a site)."""

    sample_list: list[Sample] = field(default_factory=list)
    sessions: list[SessionEvent] = field(default_factory=list)
    signed_values: list[SignedValue] = field(default_factory=list)
    problems: list[FrameProblem] = field(default_factory=list)

    def samples(self, samples: Sequence[Sample]) -> None:
        self.sample_list.extend(samples)

    def session(self, event: SessionEvent) -> None:
        self.sessions.append(event)

    def signed(self, value: SignedValue) -> None:
        self.signed_values.append(value)

    def problem(self, problem: FrameProblem) -> None:
        self.problems.append(problem)


@dataclass
class ReaderCounts:
    frames: int = 0
    metering_calls: int = 0
    samples: int = 0
    sessions: int = 0
    signed_verified: int = 0
    signed_failed: int = 0  # every other status
    problems: int = 0


class _Bad(Exception):
    """A field that cannot be read: ``where`` names it inside the message."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class MeterKeys:
    """The meters' public keys pinned for one charger: per connector, or one for all (None)."""

    keys: Mapping[int | None, ec.EllipticCurvePublicKey] = field(default_factory=dict)

    def for_connector(self, connector: int | None) -> ec.EllipticCurvePublicKey | None:
        return self.keys.get(connector) or self.keys.get(None)


@dataclass
class _Start:
    connector: int
    meter_wh: float
    time: float
    id_tag: str | None


class MeteringReader:
    """Reads one charge point's frames, both ways. Keep one per charger id: the transaction to
    connector map survives reconnects; :meth:`open` starts each new connection."""

    def __init__(
        self,
        charger: str,
        sink: MeteringSink,
        clock: Clock,
        *,
        keys: MeterKeys | None = None,
        meter_ids: Mapping[int, str] | None = None,
    ) -> None:
        self.charger = charger
        self.sink = sink
        self.clock = clock
        self.keys = keys or MeterKeys()
        self.meter_ids = dict(meter_ids or {})
        self.version: OcppVersion = "ocpp1.6"
        self.counts = ReaderCounts()
        self._pending: dict[str, _Start] = {}  # StartTransaction unique id -> its request
        self._tx_connector: dict[str, int] = {}  # transaction id -> connector / EVSE
        self._v16 = {"StartTransaction": self._start16, "StopTransaction": self._stop16,
                     "MeterValues": self._meter_values16}  # fmt: skip
        self._v201 = {"TransactionEvent": self._transaction_event, "MeterValues": self._meter_values201}

    def open(self, version: OcppVersion) -> None:
        """A new connection speaking ``version``; calls in flight on the old one are void."""
        self.version = version
        self._pending.clear()

    def meter(self, connector: int) -> str:
        return self.meter_ids.get(connector) or f"{self.charger}.{connector}"

    def resume_transaction(self, transaction_id: str, connector: int) -> None:
        """A transaction known to be open on ``connector`` (a restarted gateway's durable state),
        so its stop is read as if this reader had seen its start."""
        self._remember(transaction_id, connector)

    # -- frames ---------------------------------------------------------------------------------------
    def from_charger(self, frame: str | bytes) -> None:
        """A frame the charger sent (the CSMS gets it unchanged)."""
        self.counts.frames += 1
        msg = self._decode(frame, "charger")
        if msg is None or msg[0] != 2:
            return
        action, payload = msg[2], msg[3] if len(msg) > 3 else None
        handler = self._handlers().get(action) if isinstance(action, str) else None
        if handler is None:
            return
        self.counts.metering_calls += 1
        try:
            if not isinstance(msg[1], str) or not isinstance(payload, dict):
                raise _Bad("frame", "expected [2, <unique id>, <action>, {payload}]")
            handler(msg[1], payload)
        except _Bad as bad:
            self._problem("charger", f"{action}: {bad}", frame)

    def from_csms(self, frame: str | bytes) -> None:
        """A frame the CSMS (or the local controller) sent to the charger."""
        self.counts.frames += 1
        if not self._pending:
            return  # only answers to StartTransaction carry metering facts
        msg = self._decode(frame, "csms")
        if msg is None or msg[0] not in (3, 4) or not isinstance(msg[1], str):
            return
        start = self._pending.pop(msg[1], None)
        if start is None or msg[0] == 4:
            return
        try:
            self._started16(start, msg[2] if len(msg) > 2 else None)
        except _Bad as bad:
            self._problem("csms", f"StartTransaction result: {bad}", frame)

    def _decode(self, frame: str | bytes, direction: Direction) -> list[Any] | None:
        if not isinstance(frame, str):
            self._problem(direction, "binary frame (OCPP-J frames are text)", frame)
            return None
        try:
            msg = json.loads(frame, parse_float=Decimal)
        except RecursionError:
            self._problem(direction, "not JSON: nested too deeply", frame)
            return None
        except ValueError as exc:
            self._problem(direction, f"not JSON: {exc}", frame)
            return None
        if not isinstance(msg, list) or len(msg) < 3 or msg[0] not in (2, 3, 4) or isinstance(msg[0], bool):
            self._problem(direction, "not an OCPP-J message ([2|3|4, <unique id>, ...])", frame)
            return None
        return msg

    def _handlers(self) -> Mapping[str, Callable[[str, dict[str, Any]], None]]:
        if self.version == "ocpp1.6":
            return self._v16
        return self._v201

    # -- OCPP 1.6J --------------------------------------------------------------------------------------
    def _start16(self, unique_id: str, p: dict[str, Any]) -> None:
        connector = _int(p, "connectorId")
        wh = float(_number(p, "meterStart"))
        t = _time(p, "timestamp")
        self._pending[unique_id] = _Start(connector, wh, t, _opt_str(p, "idTag"))
        self._emit([Sample(self.meter(connector), ENERGY, wh, t, self.version)])

    def _started16(self, start: _Start, result: Any) -> None:
        if not isinstance(result, dict):
            raise _Bad("payload", "expected an object")
        tx = str(_int(result, "transactionId"))
        self._remember(tx, start.connector)
        self._session("start", tx, start.connector, start.time, start.meter_wh, start.id_tag, None)

    def _meter_values16(self, unique_id: str, p: dict[str, Any]) -> None:
        connector = _int(p, "connectorId")
        tx = p.get("transactionId")
        if isinstance(tx, int) and not isinstance(tx, bool):
            self._remember(str(tx), connector)
        self._meter_values(p.get("meterValue"), "meterValue", connector, None if tx is None else str(tx))

    def _stop16(self, unique_id: str, p: dict[str, Any]) -> None:
        tx = str(_int(p, "transactionId"))
        wh = float(_number(p, "meterStop"))
        t = _time(p, "timestamp")
        connector = self._tx_connector.pop(tx, None)
        if connector is not None:
            self._emit([Sample(self.meter(connector), ENERGY, wh, t, self.version)])
            if p.get("transactionData") is not None:
                self._meter_values(p["transactionData"], "transactionData", connector, tx)
        else:
            why = "connector unknown (started before the gateway saw it): meterStop not read as a sample"
            self._problem("charger", f"StopTransaction: transactionId {tx}: {why}", p)
        self._session("stop", tx, connector, t, wh, _opt_str(p, "idTag"), _opt_str(p, "reason"))

    # -- OCPP 2.0.1 -------------------------------------------------------------------------------------
    def _transaction_event(self, unique_id: str, p: dict[str, Any]) -> None:
        kind = _str(p, "eventType")
        t = _time(p, "timestamp")
        info = p.get("transactionInfo")
        if not isinstance(info, dict):
            raise _Bad("transactionInfo", "missing or not an object")
        tx = _str(info, "transactionId", "transactionInfo.transactionId")
        evse = p.get("evse")
        if evse is not None:
            if not isinstance(evse, dict):
                raise _Bad("evse", "not an object")
            self._remember(tx, _int(evse, "id", "evse.id"))
        connector = self._tx_connector.get(tx)
        readings: list[Sample] = []
        if p.get("meterValue") is not None:
            if connector is None:
                raise _Bad("evse", f"transaction {tx}: EVSE unknown, meterValue not read")
            readings = self._meter_values(p["meterValue"], "meterValue", connector, tx)
        if kind in ("Started", "Ended"):
            token = p.get("idToken")
            id_tag = token.get("idToken") if isinstance(token, dict) else None
            energy = [s.value for s in readings if s.quantity == ENERGY and isinstance(s.value, float)]
            wh = (energy[0] if kind == "Started" else energy[-1]) if energy else None
            reason = info.get("stoppedReason") if kind == "Ended" else None
            self._session("start" if kind == "Started" else "stop", tx, connector, t, wh, _s(id_tag),
                          _s(reason))  # fmt: skip
        if kind == "Ended":
            self._tx_connector.pop(tx, None)

    def _meter_values201(self, unique_id: str, p: dict[str, Any]) -> None:
        self._meter_values(p.get("meterValue"), "meterValue", _int(p, "evseId"), None)

    # -- meter values (both versions) ----------------------------------------------------------------
    def _meter_values(self, values: Any, where: str, connector: int, tx: str | None) -> list[Sample]:
        if not isinstance(values, list):
            raise _Bad(where, "expected a list of meter values")
        out: list[Sample] = []
        for i, mv in enumerate(values):
            try:
                out.extend(self._meter_value(mv, f"{where}[{i}]", connector, tx))
            except _Bad as bad:
                self._problem("charger", f"{bad}", mv)
        self._emit(out)
        return out

    def _meter_value(self, mv: Any, where: str, connector: int, tx: str | None) -> list[Sample]:
        if not isinstance(mv, dict):
            raise _Bad(where, "expected an object")
        t = _time(mv, "timestamp", f"{where}.timestamp")
        values = mv.get("sampledValue")
        if not isinstance(values, list):
            raise _Bad(f"{where}.sampledValue", "expected a list")
        plain: list[Sample] = []
        signed: list[Sample] = []
        for j, sv in enumerate(values):
            at = f"{where}.sampledValue[{j}]"
            try:
                self._sampled_value(sv, at, connector, tx, t, plain, signed)
            except _Bad as bad:
                self._problem("charger", f"{bad}", sv)
        return self._merge(plain, signed, connector)

    def _sampled_value(self, sv: Any, at: str, connector: int, tx: str | None, t: float,
                       plain: list[Sample], signed: list[Sample]) -> None:  # fmt: skip
        if not isinstance(sv, dict):
            raise _Bad(at, "expected an object")
        measurand = sv.get("measurand", DEFAULT_MEASURAND)
        if not isinstance(measurand, str) or measurand not in MEASURANDS:
            return
        if sv.get("phase") is not None or sv.get("location") not in OUTLET:
            return  # per-phase values and other locations: the total at the outlet is the register
        quantity, units = MEASURANDS[measurand]
        blob = self._signed_blob(sv, at)
        if blob is not None and quantity == ENERGY:
            context = sv.get("context") if isinstance(sv.get("context"), str) else None
            signed.extend(self._check_signed(blob, connector, tx, context))
        if self.version == "ocpp1.6" and sv.get("format") == "SignedData":
            return  # the value is the signed blob, read above
        value = self._plain_value(sv, at, units)
        plain.append(Sample(self.meter(connector), quantity, value, t, self.version))

    def _plain_value(self, sv: dict[str, Any], at: str, units: Mapping[str, Decimal]) -> float:
        if self.version == "ocpp1.6":
            raw = sv.get("value")
            if not isinstance(raw, str):
                raise _Bad(f"{at}.value", "expected a string")
            try:
                number = Decimal(raw.strip())
            except InvalidOperation:
                raise _Bad(f"{at}.value", f"{raw[:20]!r} is not a number") from None
            unit, multiplier = sv.get("unit", next(iter(units))), 0
        else:
            number = _number(sv, "value", f"{at}.value")
            uom = sv.get("unitOfMeasure") or {}
            if not isinstance(uom, dict):
                raise _Bad(f"{at}.unitOfMeasure", "expected an object")
            unit, multiplier = uom.get("unit", next(iter(units))), uom.get("multiplier", 0)
            if not isinstance(multiplier, int) or isinstance(multiplier, bool) or abs(multiplier) > 9:
                raise _Bad(f"{at}.unitOfMeasure.multiplier", f"{multiplier!r} is not an integer in -9..9")
        if not isinstance(unit, str) or unit not in units:
            raise _Bad(f"{at}.unit", f"{_short(unit)} is not one of {', '.join(units)}")
        if not number.is_finite() or abs(number.adjusted()) > ocmf.MAX_EXPONENT:
            raise _Bad(f"{at}.value", f"{number} is out of range")
        return float(number * units[unit] * Decimal(10) ** multiplier)

    def _signed_blob(self, sv: dict[str, Any], at: str) -> tuple[str, str | None] | None:
        """(what carries the record, its encoding method) or None if the value is not signed."""
        if self.version == "ocpp1.6":
            if sv.get("format") != "SignedData":
                return None
            raw = sv.get("value")
            if not isinstance(raw, str):
                raise _Bad(f"{at}.value", "expected a string")
            return raw, None
        smv = sv.get("signedMeterValue")
        if smv is None:
            return None
        if not isinstance(smv, dict) or not isinstance(smv.get("signedMeterData"), str):
            raise _Bad(f"{at}.signedMeterValue", "expected an object with signedMeterData")
        method = smv.get("encodingMethod")
        return smv["signedMeterData"], method if isinstance(method, str) else ""

    # -- signed values -------------------------------------------------------------------------------
    def _check_signed(self, blob: tuple[str, str | None], connector: int, tx: str | None,
                      context: str | None) -> list[Sample]:  # fmt: skip
        carried, method = blob
        record_text: str | None = None
        record: ocmf.OcmfRecord | None = None
        status: SignatureStatus = "malformed"
        detail = ""
        try:
            carried_record, method = _unwrap_json(carried, method)
            if method not in (None, "OCMF"):
                raise OcmfError(f"encodingMethod {method!r}: only OCMF is read")
            record_text = ocmf.unwrap(carried_record)
            record = ocmf.parse(record_text)
            status, detail = self._verify(record, connector)
        except OcmfError as exc:
            detail = str(exc)
        value = SignedValue(self.charger, connector, self.meter(connector), tx, context, carried, record_text,
                            status, detail, record.readings if record else ())  # fmt: skip
        self.counts.signed_verified += status == "verified"
        self.counts.signed_failed += status != "verified"
        if status != "verified":
            log.warning("charger %s connector %s: signed meter value %s: %s", self.charger, connector,
                        status, detail)  # fmt: skip
        self.sink.signed(value)
        source = self.version + (METER_SIGNED if status == "verified" else "")
        return [
            Sample(self.meter(connector), ENERGY, r.wh, r.time, source if r.usable else self.version)
            for r in value.readings
            if r.wh is not None
            and (r.is_import_register or r.obis is None)  # no RI: the sampled value's register
        ]

    def _verify(self, record: ocmf.OcmfRecord, connector: int) -> tuple[SignatureStatus, str]:
        key = self.keys.for_connector(connector)
        if key is None:
            return "no_pinned_key", "no meter key pinned for this charger"
        try:
            ok = ocmf.verify(record, key)
        except OcmfKeyError as exc:
            return "key_mismatch", str(exc)
        return ("verified", "") if ok else ("signature_failed", "signature does not match the pinned key")

    def _merge(self, plain: list[Sample], signed: list[Sample], connector: int) -> list[Sample]:
        """A verified signed energy reading replaces the plain one of the same meter value."""
        verified = [_wh(s) for s in signed if is_meter_signed(s)]
        if not verified:
            return plain + signed
        kept = [s for s in plain if s.quantity != ENERGY]
        for s in plain:
            if s.quantity == ENERGY and all(abs(v - _wh(s)) > 1.0 for v in verified):
                self._problem("charger", f"connector {connector}: plain energy {s.value} Wh differs from "
                              f"the meter-signed reading(s) {verified}", None)  # fmt: skip
        return kept + signed

    def _remember(self, tx: str, connector: int) -> None:
        self._tx_connector.pop(tx, None)  # re-insert: the dict's order is last use
        self._tx_connector[tx] = connector
        if len(self._tx_connector) > MAX_OPEN_TRANSACTIONS:  # stops never seen: forget the oldest
            del self._tx_connector[next(iter(self._tx_connector))]

    # -- output ---------------------------------------------------------------------------------------
    def _emit(self, samples: list[Sample]) -> None:
        if samples:
            self.counts.samples += len(samples)
            self.sink.samples(samples)

    def _session(self, kind: Literal["start", "stop"], tx: str, connector: int | None, t: float,
                 wh: float | None, id_tag: str | None, reason: str | None) -> None:  # fmt: skip
        self.counts.sessions += 1
        meter = None if connector is None else self.meter(connector)
        self.sink.session(SessionEvent(self.charger, kind, tx, connector, meter, t, wh, id_tag, reason,
                                       self.version))  # fmt: skip

    def _problem(self, direction: Direction, problem: str, frame: Any) -> None:
        self.counts.problems += 1
        text = frame if isinstance(frame, str) else _excerpt(frame)
        log.warning("charger %s: %s", self.charger, problem)
        self.sink.problem(
            FrameProblem(self.charger, direction, problem, text[:EXCERPT_CHARS], self.clock.now())
        )


# -- field helpers (raise _Bad naming the field) ------------------------------------------------------


def _wh(sample: Sample) -> float:
    return sample.value if isinstance(sample.value, float) else float("nan")


def _excerpt(value: Any) -> str:
    if isinstance(value, bytes):
        return value[:EXCERPT_CHARS].hex()
    try:
        return json.dumps(value, default=str)[:EXCERPT_CHARS]
    except (ValueError, RecursionError):
        return repr(value)[:EXCERPT_CHARS]


def _int(m: dict[str, Any], key: str, where: str | None = None) -> int:
    v = m.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**31:
        raise _Bad(where or key, f"{_short(v)} is not a non-negative integer")
    return v


def _number(m: dict[str, Any], key: str, where: str | None = None) -> Decimal:
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, int | Decimal):
        raise _Bad(where or key, f"{_short(v)} is not a number")
    d = Decimal(v)
    if not d.is_finite() or abs(d.adjusted()) > ocmf.MAX_EXPONENT:
        raise _Bad(where or key, f"{_short(v)} is out of range")
    return d


def _str(m: dict[str, Any], key: str, where: str | None = None) -> str:
    v = m.get(key)
    if not isinstance(v, str) or not v:
        raise _Bad(where or key, f"{_short(v)} is not a non-empty string")
    return v


def _opt_str(m: dict[str, Any], key: str) -> str | None:
    return _s(m.get(key))


def _s(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _time(m: dict[str, Any], key: str, where: str | None = None) -> float:
    v = m.get(key)
    if not isinstance(v, str):
        raise _Bad(where or key, f"{_short(v)} is not an RFC 3339 time")
    try:
        when = datetime.datetime.fromisoformat(v)
    except ValueError:
        raise _Bad(where or key, f"{_short(v)} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)  # OCPP times are UTC; a charger omitting Z means UTC
    return when.timestamp()


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _unwrap_json(carried: str, method: str | None) -> tuple[str, str | None]:
    """A 1.6 SignedData value may be the 2.0.1 structure as JSON text (OCA application note)."""
    if method is not None or not carried.lstrip().startswith("{"):
        return carried, method
    try:
        inner = json.loads(carried)
    except (ValueError, RecursionError):
        raise OcmfFormatError("(SignedData)", "starts with '{' but is not JSON") from None
    data = inner.get("signedMeterData", inner.get("signedMeterValue")) if isinstance(inner, dict) else None
    if not isinstance(data, str):
        raise OcmfFormatError("(SignedData)", "JSON without a signedMeterData string")
    encoding = inner.get("encodingMethod", "OCMF")
    return data, encoding if isinstance(encoding, str) else ""
