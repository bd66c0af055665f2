"""The gateway at run time: a site config becomes running acquisition.

::

    Modbus TCP / RTU schedules ─┐                                    ┌─> IntervalSink.submit
    (SunSpec discovered live)   ├─> IntervalBuilder ─> closer task ──┤   (evidence pipeline:
    MQTT subscribers ───────────┘   (samples)          (clock-aligned)   seal, outbox, uplink)

:class:`Gateway` is an async context manager: on entry it opens the serial buses, starts a
:class:`gateway.poller.Poller` for every Modbus meter, one
:class:`drivers.mqtt.driver.MqttSubscriber` per MQTT broker connection, and the closer
task that hands every closed interval, together with the builder's state, to the sink
(:class:`IntervalHandover`). The sink persists both in one step, so after a restart the
builder resumes from the last persisted counter readings (energy across a stop is counted,
not lost), and records a failed submit did not take are submitted again before any later
state: the persisted state never moves past a record the sink does not hold.

The runner guarantees no concurrent calls into one component: everything runs on one
event loop; the builder is only touched between awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.clock import Clock
from drivers.cjt188.source import Cjt188Source
from drivers.contract import PollSource, Sample
from drivers.dlt645.source import Dlt645Source
from drivers.line.owner import LineOwner
from drivers.mbus.source import MbusSource
from drivers.modbus.profiles import Profile, RegisterField, load_profiles
from drivers.modbus.source import ModbusSource, ReadPolicy, RegisterReader
from drivers.modbus.sunspec_source import SunSpecSource, template_fields
from drivers.modbus_rtu.driver import RtuRegisterReader, SerialBusOwner, rtu_policy, rtu_source
from drivers.modbus_rtu.framing import LineRegisterReader
from drivers.modbus_tcp.driver import TcpConnections, tcp_policy, tcp_reader, tcp_source
from drivers.mqtt.driver import MqttSubscriber
from drivers.ocpp import ChargerConfig, ControllerConfig, OcppController, OcppTap, TapConfig
from drivers.ocpp.config import enrolled_reader
from evidence.records import IntervalRecord, SessionRecord
from gateway.clock_guard import ClockGuard
from gateway.config import (
    Cjt188Meter,
    Dlt645Meter,
    MbusMeter,
    ModbusMeterBase,
    ModbusRtuMeter,
    ModbusTcpMeter,
    MqttMeter,
    OcppEndpoint,
    OcppMeter,
    SiteConfig,
    cjt188_series_specs,
    dlt645_series_specs,
    mbus_series_specs,
    mqtt_series_specs,
    ocpp_series_specs,
    series_specs,
)
from gateway.intervals import IntervalBuilder, SeriesSpec
from gateway.ocpp_sessions import OcppSessions
from gateway.poller import Poller, Schedule

log = logging.getLogger(__name__)
OCPP_STATE = "ocpp_sessions"  # key of the OCPP sessions' state beside the builder snapshot
SealedRecord = IntervalRecord | SessionRecord


class IntervalSink(Protocol):
    """Where closed intervals go (the evidence pipeline). ``submit`` returns once the
    records and the builder state are durable together; if it raises, neither is (the
    caller submits the same records again, with a later state)."""

    def builder_state(self) -> Mapping[str, Any] | None: ...

    async def submit(self, records: Sequence[SealedRecord], builder_state: Mapping[str, Any]) -> None: ...


@dataclass
class MemorySink:
    """Keeps intervals (and OCPP session records) in memory (acquisition tests,
    ``puhui gateway run --dry-run``)."""

    records: list[IntervalRecord] = field(default_factory=list)
    state: Mapping[str, Any] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: list[SessionRecord] = field(default_factory=list)

    def builder_state(self) -> Mapping[str, Any] | None:
        return self.state

    async def submit(self, records: Sequence[SealedRecord], builder_state: Mapping[str, Any]) -> None:
        self.records.extend(r for r in records if isinstance(r, IntervalRecord))
        self.sessions.extend(r for r in records if isinstance(r, SessionRecord))
        self.state = builder_state
        self.changed.set()


class IntervalHandover:
    """Hands closed intervals, with the builder state that no longer holds them, to a sink.

    Records taken out of the builder stay here until a submit has taken them: after a
    failed submit they go first into the next one (the shutdown one included), so the
    state the sink persists never runs ahead of the records it holds. If none succeeds
    before the process ends, the persisted state is older than those records and the
    restarted builder emits their intervals again, from what it still knows (``gap``).
    """

    def __init__(
        self, builder: IntervalBuilder, sink: IntervalSink, sessions: OcppSessions | None = None
    ) -> None:
        self.builder = builder
        self.sink = sink
        self.sessions = sessions  # OCPP sessions: their records and state go with the builder's
        self.unsubmitted: list[IntervalRecord] = []
        self.submitted = 0  # interval records the sink has taken
        self._lock = asyncio.Lock()  # the closer and the session persister both submit

    async def resume(self) -> bool:
        """Continue from the state the sink holds (True), or on a fresh sink persist the new
        builder's state at once (False): a restart after a failed first submit then still
        emits the intervals that process closed."""
        state = self.sink.builder_state()
        if state is not None:
            self.builder.restore(state)
            if self.sessions is not None:
                self.sessions.restore(state.get(OCPP_STATE))
            return True
        await self.persist()
        return False

    async def close_due(self) -> list[IntervalRecord]:
        """Close every due interval; submit them, after any a failed submit left, if any."""
        self.unsubmitted += self.builder.close_due()
        if not self.unsubmitted:
            return []
        return await self.persist()

    async def persist(self) -> list[IntervalRecord]:
        """Submit the records not submitted yet (possibly none) with the builder state (and
        the OCPP session records closed since, with the sessions' state)."""
        async with self._lock:
            records = list(self.unsubmitted)
            state = self.builder.snapshot()
            closed = self.sessions.take_closed() if self.sessions is not None else []
            if self.sessions is not None:
                state[OCPP_STATE] = self.sessions.snapshot()
            try:
                await self.sink.submit([*records, *closed], state)
            except BaseException:
                if self.sessions is not None:
                    self.sessions.put_back(closed)
                raise
            del self.unsubmitted[: len(records)]
            self.submitted += len(records)
            return records


@dataclass(frozen=True)
class Plan:
    """What a site config turns into before anything connects."""

    series: tuple[SeriesSpec, ...]
    modbus: tuple[ModbusMeterBase, ...]
    mqtt: tuple[MqttMeter, ...]
    dlt645: tuple[Dlt645Meter, ...] = ()
    cjt188: tuple[Cjt188Meter, ...] = ()
    mbus: tuple[MbusMeter, ...] = ()
    ocpp: tuple[OcppMeter, ...] = ()


def plan_site(site: SiteConfig, profiles: Mapping[str, Profile]) -> Plan:
    """The builder's series and the meters per driver (enabled meters only; no I/O)."""
    series: list[SeriesSpec] = []
    modbus: list[ModbusMeterBase] = []
    mqtt: list[MqttMeter] = []
    dlt645: list[Dlt645Meter] = []
    cjt188: list[Cjt188Meter] = []
    mbus: list[MbusMeter] = []
    ocpp: list[OcppMeter] = []
    for meter in site.meters:
        if not meter.enabled:
            continue
        if isinstance(meter, OcppMeter):
            ocpp.append(meter)
            series.extend(ocpp_series_specs(meter))
            continue
        if isinstance(meter, MqttMeter):
            mqtt.append(meter)
            series.extend(mqtt_series_specs(meter))
            continue
        if isinstance(meter, Dlt645Meter):
            dlt645.append(meter)
            series.extend(dlt645_series_specs(meter))
            continue
        if isinstance(meter, Cjt188Meter):
            cjt188.append(meter)
            series.extend(cjt188_series_specs(meter))
            continue
        if isinstance(meter, MbusMeter):
            mbus.append(meter)
            series.extend(mbus_series_specs(meter))
            continue
        assert isinstance(meter, ModbusMeterBase)
        modbus.append(meter)
        series.extend(series_specs(meter, static_fields(meter, profiles)))
    return Plan(tuple(series), tuple(modbus), tuple(mqtt), tuple(dlt645), tuple(cjt188), tuple(mbus),
                tuple(ocpp))  # fmt: skip


def static_fields(meter: ModbusMeterBase, profiles: Mapping[str, Profile]) -> tuple[RegisterField, ...]:
    """The fields the gateway plans a Modbus meter with before it has read anything: the
    profile's or inline registers, or for SunSpec the shipped mapping's points (the
    registers themselves are known only after discovery)."""
    if meter.profile is not None:
        profile = profiles[meter.profile]
        if profile.sunspec is not None:
            return template_fields(profile.sunspec)
    return meter.fields(profiles)


def modbus_source(
    meter: ModbusMeterBase,
    profiles: Mapping[str, Profile],
    clock: Clock,
    buses: Mapping[str, SerialBusOwner],
    lines: Mapping[str, LineOwner] | None = None,
    tcp: TcpConnections | None = None,
) -> PollSource:
    """The poll source of one Modbus meter (not connected yet). ``lines``: the owners of the
    shared lines (RTU meters on a ``line``); ``tcp``: connections shared per host:port."""
    lines = lines or {}
    profile = profiles[meter.profile] if meter.profile is not None else None
    max_gap = meter.max_gap if meter.max_gap is not None else (profile.max_gap if profile else 0)
    if profile is not None and profile.sunspec is not None:
        # Over TCP or RS-485 alike (most residential inverters speak SunSpec on their RS-485
        # port): discovery walks the model chain through the meter's reader like any read.
        reader, policy = _transport(meter, buses, lines, tcp)
        return SunSpecSource(
            meter.id,
            reader,
            clock,
            unit=meter.unit_id,
            mapping=profile.sunspec,
            policy=policy,
            max_gap=max_gap,
        )
    if isinstance(meter, ModbusTcpMeter):
        return tcp_source(
            meter.id, meter.connection, meter.unit_id, meter.fields(profiles), clock, max_gap=max_gap,
            connections=tcp,
        )  # fmt: skip
    assert isinstance(meter, ModbusRtuMeter)
    if meter.connection.line is not None:
        reader, policy = _transport(meter, buses, lines, tcp)
        return ModbusSource(
            meter.id,
            meter.fields(profiles),
            reader,
            clock,
            unit=meter.unit_id,
            policy=policy,
            max_gap=max_gap,
        )
    owner = buses[_bus(meter)]
    return rtu_source(meter.id, owner, meter.unit_id, meter.fields(profiles), clock, max_gap=max_gap)


def _bus(meter: ModbusRtuMeter) -> str:
    bus = meter.connection.bus
    assert bus is not None  # the connection model holds either a bus or a line
    return bus


def line_rtu_policy(owner: LineOwner) -> ReadPolicy:
    """The read policy of an RTU meter on a shared line: no deadline of its own beyond the
    line's (the line times each request from its write; waiting for the line is others'
    timeouts, bounded by theirs), and no retry (the next slot is the retry)."""
    return ReadPolicy(timeout_s=60.0, retries=0)


def _transport(
    meter: ModbusMeterBase,
    buses: Mapping[str, SerialBusOwner],
    lines: Mapping[str, LineOwner],
    tcp: TcpConnections | None,
) -> tuple[RegisterReader, ReadPolicy]:
    """The register reader and read policy of a meter's connection (as its source gets them)."""
    if isinstance(meter, ModbusTcpMeter):
        policy = tcp_policy(meter.connection)
        reader = tcp_reader(meter.connection, policy) if tcp is None else tcp.reader(meter.connection, policy)
        return reader, policy
    assert isinstance(meter, ModbusRtuMeter)
    if meter.connection.line is not None:
        line = lines[meter.connection.line]
        reader = LineRegisterReader(line, timeout_s=line.config.timeout_s, meter=meter.id)
        return reader, line_rtu_policy(line)
    owner = buses[_bus(meter)]
    return RtuRegisterReader(owner), rtu_policy(owner)


def used_lines(plan: Plan) -> set[str]:
    """The ids of the lines the plan's meters hang on (only those are opened)."""
    rtu = {m.connection.line for m in plan.modbus if isinstance(m, ModbusRtuMeter) and m.connection.line}
    dlt645, cjt188 = {m.connection.line for m in plan.dlt645}, {m.connection.line for m in plan.cjt188}
    return rtu | dlt645 | cjt188 | {m.connection.line for m in plan.mbus}


def dlt645_source(meter: Dlt645Meter, lines: Mapping[str, LineOwner], clock: Clock) -> Dlt645Source:
    """The poll source of a DL/T 645 meter on its line's owner."""
    line = lines[meter.connection.line]
    timeout = meter.connection.timeout_s or line.config.timeout_s
    return Dlt645Source(meter.id, meter.connection.address, meter.items(), line, clock, timeout_s=timeout)


CJT188_POLL_GROUP = "all"  # one request reads the whole block: one poll group


def cjt188_source(meter: Cjt188Meter, lines: Mapping[str, LineOwner], clock: Clock) -> Cjt188Source:
    """The poll source of a CJ/T 188 heat meter on its line's owner."""
    return Cjt188Source.from_settings(meter.id, meter, lines[meter.connection.line], clock)


MBUS_POLL_GROUP = "all"  # one telegram carries every quantity: one poll group


def mbus_source(meter: MbusMeter, lines: Mapping[str, LineOwner], clock: Clock) -> MbusSource:
    """The poll source of an M-Bus heat meter on its line's owner."""
    return MbusSource.from_settings(meter.id, meter, lines[meter.connection.line], clock)


def next_close(now: float, interval_s: int, grace_s: float) -> float:
    """The first instant after ``now`` at which an interval becomes closable."""
    return (math.floor((now - grace_s) / interval_s) + 1) * interval_s + grace_s


class Gateway:
    """Acquisition and interval closing for one site (async context manager)."""

    def __init__(
        self,
        site: SiteConfig,
        *,
        clock: Clock,
        sink: IntervalSink,
        profiles: Mapping[str, Profile] | None = None,
        clock_guard: ClockGuard | None = None,
    ) -> None:
        self.site = site
        self.clock_guard = clock_guard  # None: the clock is trusted (simulated time, tests)
        self.clock = clock
        self.sink = sink
        self.profiles = load_profiles() if profiles is None else profiles
        self.plan = plan_site(site, self.profiles)
        self.builder = self._new_builder()
        self.poller: Poller | None = None
        self.subscribers: list[MqttSubscriber] = []
        self.buses: dict[str, SerialBusOwner] = {}
        self.lines: dict[str, LineOwner] = {}
        self.ocpp_sessions = (
            OcppSessions(self._take, meters={m.id for m in self.plan.ocpp}, keys=self._ocpp_keys(),
                         changed=self._sessions_changed)
            if self.plan.ocpp else None
        )  # fmt: skip
        self.ocpp: OcppTap | OcppController | None = None
        self._sessions_dirty = asyncio.Event()
        self.handover = IntervalHandover(self.builder, sink, self.ocpp_sessions)
        self._schedules: list[Schedule] = []
        self._closer: asyncio.Task[None] | None = None
        self._ocpp_persister: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()
        # meter -> quantity -> the last sample read (the status page), taken or not
        self.last_readings: dict[str, dict[str, Sample]] = {}
        self.held_back_samples = 0  # read while the clock was not good: not in any interval
        self._fresh_when_good = False  # a fresh builder made on a bad clock: remade once it is good
        self.last_closed_end: int | None = None  # end of the latest interval handed to the sink

    def _new_builder(self) -> IntervalBuilder:
        site = self.site
        return IntervalBuilder(
            self.plan.series, clock=self.clock, interval_s=site.interval_s, grace_s=site.grace_seconds,
            # the boundary reading must arrive while its interval is still open
            boundary_s=min(site.boundary_seconds, site.grace_seconds),
        )  # fmt: skip

    async def __aenter__(self) -> Gateway:
        if self.sink.builder_state() is None and not self._clock_good():
            # A fresh builder takes its first interval from the clock: not from this one.
            self._fresh_when_good = True
            log.warning("gateway %s: intervals start once the clock is good", self.site.gateway.id)
        elif await self.handover.resume():
            log.info("gateway %s: interval state restored", self.site.gateway.id)
        async with contextlib.AsyncExitStack() as stack:
            used = {m.connection.bus for m in self.plan.modbus if isinstance(m, ModbusRtuMeter)}
            for bus in self.site.serial_buses:
                if bus.id in used:
                    self.buses[bus.id] = await stack.enter_async_context(SerialBusOwner(bus))
            on_lines = used_lines(self.plan)
            for line in self.site.lines:
                if line.id in on_lines:
                    self.lines[line.id] = await stack.enter_async_context(LineOwner(line))
            tcp = TcpConnections([m.connection for m in self.plan.modbus if isinstance(m, ModbusTcpMeter)])
            self._schedules = [
                Schedule(modbus_source(m, self.profiles, self.clock, self.buses, self.lines, tcp), m.poll)
                for m in self.plan.modbus
            ]
            self._schedules += [
                Schedule(dlt645_source(m, self.lines, self.clock), m.poll) for m in self.plan.dlt645
            ]
            self._schedules += [
                Schedule(cjt188_source(m, self.lines, self.clock), {CJT188_POLL_GROUP: m.poll_s})
                for m in self.plan.cjt188
            ]
            self._schedules += [
                Schedule(mbus_source(m, self.lines, self.clock), {MBUS_POLL_GROUP: m.poll_s})
                for m in self.plan.mbus
            ]
            if self._schedules:
                self.poller = await stack.enter_async_context(Poller(self._schedules, self._take, self.clock))
            for connection, meters in _by_connection(self.plan.mqtt).items():
                subscriber = MqttSubscriber(
                    connection,
                    [(m.id, m.source) for m in meters],
                    self._take,
                    self.clock,
                    client_id=f"puhui-{self.site.gateway.id}-meters-{len(self.subscribers)}",
                )
                self.subscribers.append(await stack.enter_async_context(subscriber))
            group = await stack.enter_async_context(asyncio.TaskGroup())
            first = next_close(self.clock.now(), self.site.interval_s, self.site.grace_seconds)
            self._closer = group.create_task(self._close_loop(first), name=f"closer:{self.site.gateway.id}")
            if self.ocpp_sessions is not None:
                name = f"ocpp-sessions:{self.site.gateway.id}"
                self._ocpp_persister = group.create_task(self._persist_sessions(), name=name)
                self.ocpp = await stack.enter_async_context(self._ocpp_endpoint(self.ocpp_sessions))
            self._stack = stack.pop_all()
        log.info(
            "gateway %s: %d Modbus meter(s), %d DL/T 645 meter(s), %d CJ/T 188 meter(s), "
            "%d M-Bus meter(s), %d MQTT meter(s), %d OCPP connector(s), %d series, %d-min intervals",
            self.site.gateway.id, len(self.plan.modbus), len(self.plan.dlt645), len(self.plan.cjt188),
            len(self.plan.mbus), len(self.plan.mqtt), len(self.plan.ocpp), len(self.plan.series),
            self.site.interval_minutes,
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._closer is not None:
            self._closer.cancel()
        if self._ocpp_persister is not None:
            self._ocpp_persister.cancel()
        try:
            await self._stack.aclose()
        finally:
            # Persist the latest counter readings (and any closed interval a failed submit
            # left) so a restart resumes from them; intervals still open are not emitted
            # (they would be partial): they close after restart. Not a builder whose timeline
            # came from a bad clock: the next start makes a fresh one.
            if not self._fresh_when_good:
                await self.handover.persist()

    # -- OCPP ---------------------------------------------------------------------------------

    def _ocpp_endpoint(self, sessions: OcppSessions) -> OcppTap | OcppController:
        """The tap or local controller, its readers for sessions open at the last stop resumed."""
        assert self.site.ocpp is not None  # an ocpp meter needs the section (config check)
        config = ocpp_driver_config(self.site.ocpp, self.plan.ocpp)
        endpoint: OcppTap | OcppController
        if isinstance(config, TapConfig):
            endpoint = OcppTap(config, sessions, self.clock)
        else:
            endpoint = OcppController(config, sessions, self.clock)
        for charger, transactions in sessions.open_transactions().items():
            reader = enrolled_reader(config.chargers, charger, sessions, self.clock)
            for tx, connector in transactions.items():
                reader.resume_transaction(tx, connector)
            endpoint.readers[charger] = reader
        return endpoint

    def _ocpp_keys(self) -> dict[str, Any]:
        if self.site.ocpp is None or not self.plan.ocpp:
            return {}
        chargers = ocpp_driver_config(self.site.ocpp, self.plan.ocpp).chargers
        return {name: cfg.meter_keys() for name, cfg in chargers.items()}

    def _sessions_changed(self) -> None:
        self._sessions_dirty.set()

    async def _persist_sessions(self) -> None:
        """Persist the OCPP sessions' state (and any closed session record) as soon as it
        changed: a session's start survives a kill that comes before the next interval close."""
        while True:
            await self._sessions_dirty.wait()
            self._sessions_dirty.clear()
            if self._clock_good():
                await self.handover.persist()

    def _take(self, samples: Sequence[Sample]) -> None:
        last, meter, readings = self.last_readings, None, {}
        for s in samples:  # a poll's samples are one meter's: one lookup while it stays the same
            if s.meter != meter:
                meter = s.meter
                readings = last.get(meter) or last.setdefault(meter, {})
            readings[s.quantity] = s
        if not self._clock_good():
            # Stamped by a clock not to be trusted: kept out of every interval. The builder
            # continues from its last good counter readings once time is good.
            self.held_back_samples += len(samples)
            return
        self.builder.add_many(samples)

    def _clock_good(self) -> bool:
        if self.clock_guard is None:
            return True
        if not self.clock_guard.ok():
            return False
        if self._fresh_when_good:  # the first good moment: the builder's timeline starts now
            self._fresh_when_good = False
            self.builder = self._new_builder()
            self.handover = IntervalHandover(self.builder, self.sink, self.ocpp_sessions)
        return True

    async def _close_loop(self, due: float) -> None:
        interval, grace = self.site.interval_s, self.site.grace_seconds
        while True:
            await self.clock.sleep_until(due)
            await self.close_now()
            due = next_close(max(due, self.clock.now()), interval, grace)

    @property
    def closed_intervals(self) -> int:
        """Interval records the sink has taken."""
        return self.handover.submitted

    async def close_now(self) -> list[IntervalRecord]:
        """Close every due interval and hand them, with the builder state, to the sink
        (after any records a failed submit left); returns the records submitted. Closes
        nothing while the clock guard says time is not good (its boundaries would be wrong)."""
        if not self._clock_good():
            return []
        records = await self.handover.close_due()
        if records:
            self.last_closed_end = max(r.end for r in records)
        return records

    def reading_units(self) -> dict[tuple[str, str], str]:
        """(meter, quantity) -> unit, for every field the plan knows (SunSpec: the mapping's)."""
        units: dict[tuple[str, str], str] = {}
        for meter in self.plan.modbus:
            for f in static_fields(meter, self.profiles):
                if f.quantity:
                    units[(meter.id, f.quantity)] = f.unit
        for m in self.plan.mqtt:
            units.update({(m.id, q): f.unit for q, f in m.source.fields.items()})
        units.update({(s.meter, s.quantity): s.unit for s in self.plan.series})
        return units


def ocpp_driver_config(endpoint: OcppEndpoint, meters: Sequence[OcppMeter]) -> TapConfig | ControllerConfig:
    """The endpoint's driver settings with each OCPP meter's id as its connector's meter id
    (the config check refused a different one there), and every metered charger enrolled."""
    settings = endpoint.settings
    chargers = dict(settings.chargers)
    for m in meters:
        name, connector = m.connection.charger, m.connection.connector
        cfg = chargers.get(name, ChargerConfig())
        chargers[name] = cfg.model_copy(update={"meter_ids": {**cfg.meter_ids, connector: m.id}})
    return settings.model_copy(update={"chargers": chargers})


def _by_connection(meters: Sequence[MqttMeter]) -> dict[Any, list[MqttMeter]]:
    out: dict[Any, list[MqttMeter]] = {}
    for m in meters:
        out.setdefault(m.connection, []).append(m)
    return out


__all__ = [
    "Gateway",
    "IntervalHandover",
    "IntervalSink",
    "MemorySink",
    "Plan",
    "modbus_source",
    "next_close",
    "plan_site",
]
