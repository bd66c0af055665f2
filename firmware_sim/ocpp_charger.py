"""A simulated OCPP charger (1.6J or 2.0.1, with the `ocpp` package) driven by the EV physics.

Each connector (EVSE) is an exact :class:`~firmware_sim.meter.Meter` over an
:class:`~firmware_sim.physics.EvModel`: a car arriving starts a transaction, leaving stops it,
and every ``meter_interval_s`` (clock-aligned) the lifetime energy register is reported.
Messages go into an outbox first and leave in order once the CSMS answered the previous one,
so a charger that lost its CSMS queues its transaction messages and sends them when it is
back (as OCPP asks). A signing charger adds an OCMF record to its Begin, clock and End
readings; a dishonest one (``tamper_wh``) inflates the End reading after signing.

Every frame sent and received is logged as bytes (:attr:`SimCharger.wire`) so tests can
compare them with what the CSMS got. ``quirky_json`` sends JSON with spaces and non-ASCII
text: a proxy that re-serialised frames would change those bytes. The charger does not check
its own calls against the OCPP schemas (the CSMS it talks to does; a CALLERROR would show in
:attr:`SimCharger.call_errors`): that halves the simulator's CPU.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ocpp.exceptions import OCPPError
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from common.backoff import Backoff
from common.clock import Clock
from firmware_sim.meter import Meter
from firmware_sim.ocmf_meter import OcmfMeter
from firmware_sim.physics.ev import EvModel
from firmware_sim.physics.noise import u01

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
TICK_WALL_S = 0.05  # how often (wall seconds) the physics catches up with the clock
CALL_TIMEOUT_S = 15.0  # wall seconds a CALL may wait for its answer


@dataclass(frozen=True)
class OcppChargerSpec:
    """One simulated charger."""

    name: str  # the charge point id (path /<name>)
    version: Literal["1.6", "2.0.1"] = "1.6"
    connectors: int = 1
    power_limit_kw: float = 11.0
    arrivals_per_day: float = 3.0
    mean_energy_kwh: float = 20.0
    seed: int = 0
    signing: str | None = None  # OCMF SA, e.g. "ECDSA-secp256r1-SHA256"; None: no signed values
    signed_as: Literal["ocmf", "json"] = "ocmf"  # 1.6 SignedData: the record, or the 2.0.1 structure as JSON
    tamper_wh: int = 0  # a dishonest charger adds this to its signed End readings (and meterStop)
    meter_interval_s: int = 900
    heartbeat_s: int = 3600
    quirky_json: bool = False


@dataclass
class WireLog:
    """Every frame this charger sent and received, as the bytes on the wire (UTF-8 text)."""

    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)


@dataclass
class _Call:
    """A queued CALL: ``make`` builds the payload when it is sent (1.6 ids known by then)."""

    make: Callable[[], Any]
    on_result: Callable[[Any], None] | None = None


@dataclass
class _Session:
    number: int
    id_tag: str
    transaction: str  # local handle (1.6) or the transaction id (2.0.1)
    seq: int = 0


class _Wire:
    """The connection the ocpp ChargePoint uses: logs frames, optionally rewrites our JSON style."""

    def __init__(self, ws: ClientConnection, log: WireLog, quirky: bool) -> None:
        self._ws, self._log, self._quirky = ws, log, quirky

    async def recv(self) -> str | bytes:
        frame = await self._ws.recv()
        self._log.received.append(frame.encode() if isinstance(frame, str) else frame)
        return frame

    async def send(self, frame: str) -> None:
        if self._quirky:  # same message, other bytes: spaces after separators, UTF-8 not \\u escapes
            frame = json.dumps(json.loads(frame), ensure_ascii=False, separators=(", ", ": "))
        await self._ws.send(frame)
        self._log.sent.append(frame.encode())


class SimCharger:
    """One simulated charger; :meth:`run` connects (and reconnects) and plays the physics."""

    def __init__(
        self,
        spec: OcppChargerSpec,
        clock: Clock,
        url: str,
        *,
        step_s: int = 10,
        start: float | None = None,
        truth_interval_s: int = 900,
    ) -> None:
        self.spec, self.clock, self.url, self.step_s = spec, clock, url.rstrip("/") + "/" + spec.name, step_s
        t0 = math.floor((clock.now() if start is None else start) / step_s) * step_s
        self.meters = {
            c: Meter(
                EvModel(
                    spec.power_limit_kw, spec.arrivals_per_day, spec.mean_energy_kwh, seed=spec.seed * 16 + c
                ),
                start=t0,
                step_s=step_s,
                interval_s=truth_interval_s,
                log_steps=True,
                initial_wh=round(1_000_000 + 9_000_000 * u01(spec.seed, 1, c)),
            )
            for c in range(1, spec.connectors + 1)
        }
        self.signer = (
            OcmfMeter(f"SIM{spec.seed:06d}", spec.signing, spec.tamper_wh)
            if spec.signing is not None
            else None
        )
        self.wire = WireLog()
        self.connected = asyncio.Event()
        self.connections = 0
        self.refused = 0  # connection attempts that failed (refused, handshake rejected)
        self.produced_until = t0
        self.sessions_started = 0
        self.call_errors: list[str] = []
        self._t = t0
        self._outbox: deque[_Call] = deque()
        self._progress = asyncio.Condition()
        self._open: dict[int, _Session] = {}
        self._tx_ids: dict[str, int] = {}  # 1.6: local handle -> the CSMS's transactionId
        self._backoff = Backoff(0.05, 1.0, rng=random.Random(spec.seed))

    # -- running --------------------------------------------------------------------------------------
    async def run(self, until: float | None = None) -> None:
        """Produce readings up to clock time ``until`` (forever if None) and send them."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._produce(until), name=f"sim-ocpp-{self.spec.name}-physics")
            tg.create_task(self._connect_loop(), name=f"sim-ocpp-{self.spec.name}-link")

    async def wait_sent_through(self, t: float) -> None:
        """Return once everything produced up to clock time ``t`` has been answered by the CSMS."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.produced_until >= t and not self._outbox)

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            try:
                async with connect(
                    self.url, subprotocols=[self._subprotocol()], proxy=None, compression=None, open_timeout=5
                ) as ws:
                    attempt = 0
                    self.connections += 1
                    await self._session(ws)
            except* (OSError, InvalidHandshake, InvalidURI):
                self.refused += 1
            except* (ConnectionClosed, TimeoutError):  # lost, or a CALL unanswered: reconnect
                pass
            self.connected.clear()
            await asyncio.sleep(self._backoff.delay(attempt))  # wall seconds: a real reconnect pace
            attempt += 1

    def _subprotocol(self) -> Subprotocol:
        return Subprotocol("ocpp1.6" if self.spec.version == "1.6" else "ocpp2.0.1")

    async def _session(self, ws: ClientConnection) -> None:
        wire = _Wire(ws, self.wire, self.spec.quirky_json)
        cls = ChargePoint16 if self.spec.version == "1.6" else ChargePoint201
        cp = cls(self.spec.name, wire, response_timeout=CALL_TIMEOUT_S)
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(cp.start(), name=f"sim-ocpp-{self.spec.name}-listen")
            await self._boot(cp)
            self.connected.set()
            await self._drain(cp)
            listener.cancel()

    async def _boot(self, cp: Any) -> None:
        v16 = self.spec.version == "1.6"
        boot = (
            call16.BootNotification(charge_point_model="SIM-AC-22", charge_point_vendor="puhui-sim 充电")
            if v16
            else call201.BootNotification(
                charging_station={"model": "SIM-AC-22", "vendor_name": "puhui-sim 充电"}, reason="PowerUp"
            )
        )
        await cp.call(boot, suppress=False, skip_schema_validation=True)
        for c in self.meters:
            await cp.call(self._status(c, c in self._open), suppress=False, skip_schema_validation=True)

    async def _drain(self, cp: Any) -> None:
        """Send queued calls in order; a call leaves the queue once the CSMS answered it."""
        while True:
            if not self._outbox:
                try:
                    async with asyncio.timeout(self.spec.heartbeat_s / self.clock.factor):
                        async with self._progress:
                            await self._progress.wait_for(lambda: bool(self._outbox))
                except TimeoutError:
                    heartbeat = call16.Heartbeat() if self.spec.version == "1.6" else call201.Heartbeat()
                    await cp.call(heartbeat, suppress=False, skip_schema_validation=True)
                    continue
            item = self._outbox[0]
            try:
                result = await cp.call(item.make(), suppress=False, skip_schema_validation=True)
            except OCPPError as exc:  # the CSMS answered with a CALLERROR: answered all the same
                self.call_errors.append(repr(exc))
            else:
                if item.on_result is not None:
                    item.on_result(result)
            self._outbox.popleft()
            async with self._progress:
                self._progress.notify_all()

    # -- physics --------------------------------------------------------------------------------------
    async def _produce(self, until: float | None) -> None:
        period = max(float(self.step_s), TICK_WALL_S * self.clock.factor)
        while until is None or self._t < until:
            self._advance(self.clock.now() if until is None else min(self.clock.now(), until))
            async with self._progress:
                self._progress.notify_all()
            await self.clock.sleep(period)

    def _advance(self, now: float) -> None:
        while self._t + self.step_s <= now:
            t = self._t + self.step_s
            for c, meter in self.meters.items():
                before = meter.sample
                meter.advance_to(t)
                if t % self.spec.meter_interval_s == 0:
                    self._queue_reading(c, t)
                self._transition(c, before, meter.sample, t)
            self._t = self.produced_until = t

    def _transition(self, c: int, before: Any, after: Any, t: float) -> None:
        new_car = after.session != before.session
        if before.ev_state != "A" and (after.ev_state == "A" or new_car) and c in self._open:
            self._queue_stop(c, t)
        if after.ev_state != "A" and (before.ev_state == "A" or new_car):
            self._queue_start(c, t, after.session)

    def register_wh(self, c: int) -> int:
        """The connector's lifetime register as the charger reports it (whole Wh)."""
        return round(self.meters[c].counter_wh())

    def _power_w(self, c: int) -> int:
        return round(self.meters[c].sample.power_w)

    # -- messages -------------------------------------------------------------------------------------
    def _queue_start(self, c: int, t: float, number: int) -> None:
        self.sessions_started += 1
        tag = f"{self.spec.name[-6:]}{c}{number:05d}"[-20:]
        tx = f"{self.spec.name}-{c}-{number}"
        session = self._open[c] = _Session(number, tag, tx)
        wh, ts = self.register_wh(c), iso(t)
        signed = self._sign(t, wh, "B", tag)
        if self.spec.version == "1.6":
            self._outbox.append(_Call(lambda: call16.Authorize(id_tag=tag)))
            self._outbox.append(
                _Call(
                    lambda: call16.StartTransaction(connector_id=c, id_tag=tag, meter_start=wh, timestamp=ts),
                    lambda r: self._tx_ids.__setitem__(tx, r.transaction_id),
                )
            )
            self._outbox.append(_Call(lambda: self._status(c, True)))
            if signed is not None:
                mv = [{"timestamp": ts, "sampled_value": [self._signed16(signed, "Transaction.Begin")]}]
                self._outbox.append(
                    _Call(
                        lambda: call16.MeterValues(
                            connector_id=c, meter_value=mv, transaction_id=self._tx_ids.get(tx, 0)
                        )
                    )
                )
            return
        mv = [{"timestamp": ts, "sampled_value": [self._value201(wh, "Transaction.Begin", signed)]}]
        event = self._event201("Started", "EVDetected", session, ts, mv, evse=c)
        self._outbox.append(_Call(lambda: self._status(c, True)))
        self._outbox.append(_Call(lambda: event))

    def _queue_reading(self, c: int, t: float) -> None:
        wh, ts, session = self.register_wh(c), iso(t), self._open.get(c)
        signed = self._sign(t, wh, "C", session.id_tag) if session is not None else None
        if self.spec.version == "1.6":
            values = [
                {"value": str(wh), "context": "Sample.Clock", "measurand": ENERGY, "unit": "Wh"},
                {"value": str(self._power_w(c)), "context": "Sample.Clock", "measurand": POWER, "unit": "W"},
            ]
            if signed is not None:
                values.append(self._signed16(signed, "Sample.Clock"))
            mv = [{"timestamp": ts, "sampled_value": values}]
            tx = session.transaction if session is not None else None
            self._outbox.append(
                _Call(
                    lambda: call16.MeterValues(
                        connector_id=c,
                        meter_value=mv,
                        transaction_id=None if tx is None else self._tx_ids.get(tx, 0),
                    )
                )
            )
            return
        power = {
            "value": self._power_w(c),
            "context": "Sample.Clock",
            "measurand": POWER,
            "unit_of_measure": {"unit": "W"},
        }
        mv = [{"timestamp": ts, "sampled_value": [self._value201(wh, "Sample.Clock", signed), power]}]
        if session is None:
            self._outbox.append(_Call(lambda: call201.MeterValues(evse_id=c, meter_value=mv)))
        else:
            event = self._event201("Updated", "MeterValueClock", session, ts, mv)
            self._outbox.append(_Call(lambda: event))

    def _queue_stop(self, c: int, t: float) -> None:
        session = self._open.pop(c)
        wh, ts = self.register_wh(c), iso(t)
        signed = self._sign(t, wh, "E", session.id_tag)
        reported = wh + self.spec.tamper_wh  # a dishonest charger's plain value agrees with its lie
        if self.spec.version == "1.6":
            data = (
                None
                if signed is None
                else [{"timestamp": ts, "sampled_value": [self._signed16(signed, "Transaction.End")]}]
            )
            tx = session.transaction
            self._outbox.append(
                _Call(
                    lambda: call16.StopTransaction(
                        meter_stop=reported,
                        timestamp=ts,
                        transaction_id=self._tx_ids.pop(tx, 0),
                        reason="EVDisconnected",
                        id_tag=session.id_tag,
                        transaction_data=data,
                    )
                )
            )
            self._outbox.append(_Call(lambda: self._status(c, False)))
            return
        mv = [{"timestamp": ts, "sampled_value": [self._value201(reported, "Transaction.End", signed)]}]
        event = self._event201("Ended", "EVDeparted", session, ts, mv, stopped="EVDisconnected")
        self._outbox.append(_Call(lambda: event))
        self._outbox.append(_Call(lambda: self._status(c, False)))

    def _sign(self, t: float, wh: int, tx: str, tag: str) -> str | None:
        return None if self.signer is None else self.signer.sign_reading(t, wh, tx, tag, self.spec.name)

    def _signed16(self, record: str, context: str) -> dict[str, Any]:
        value = record
        if self.spec.signed_as == "json":  # the OCA application note's way: the 2.0.1 structure as text
            value = json.dumps(
                {
                    "signedMeterData": _b64(record),
                    "signingMethod": self.spec.signing,
                    "encodingMethod": "OCMF",
                    "publicKey": self._public_key_b64(),
                }
            )
        return {"value": value, "context": context, "format": "SignedData", "measurand": ENERGY, "unit": "Wh"}

    def _value201(self, wh: int, context: str, signed: str | None) -> dict[str, Any]:
        value: dict[str, Any] = {
            "value": wh,
            "context": context,
            "measurand": ENERGY,
            "unit_of_measure": {"unit": "Wh"},
        }
        if signed is not None:
            value["signed_meter_value"] = {
                "signed_meter_data": _b64(signed),
                "signing_method": self.spec.signing,
                "encoding_method": "OCMF",
                "public_key": self._public_key_b64(),
            }
        return value

    def _event201(
        self,
        kind: str,
        trigger: str,
        s: _Session,
        ts: str,
        mv: list[dict[str, Any]],
        *,
        evse: int | None = None,
        stopped: str | None = None,
    ) -> Any:
        info: dict[str, Any] = {"transaction_id": s.transaction, "charging_state": "Charging"}
        if stopped is not None:
            info = {"transaction_id": s.transaction, "stopped_reason": stopped}
        s.seq += 1
        return call201.TransactionEvent(
            event_type=kind,
            timestamp=ts,
            trigger_reason=trigger,
            seq_no=s.seq - 1,
            transaction_info=info,
            meter_value=mv,
            evse=None if evse is None else {"id": evse, "connector_id": 1},
            id_token={"id_token": s.id_tag, "type": "Local"} if kind == "Started" else None,
        )

    def _status(self, c: int, occupied: bool) -> Any:
        ts = iso(self.clock.now())
        if self.spec.version == "1.6":
            return call16.StatusNotification(
                connector_id=c,
                error_code="NoError",
                status="Charging" if occupied else "Available",
                timestamp=ts,
            )
        return call201.StatusNotification(
            timestamp=ts, connector_status="Occupied" if occupied else "Available", evse_id=c, connector_id=1
        )

    def _public_key_b64(self) -> str:
        assert self.signer is not None
        return _b64(bytes.fromhex(self.signer.public_key_hex()))


def iso(t: float) -> str:
    """OCPP time: RFC 3339 UTC with milliseconds and Z."""
    when = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")
