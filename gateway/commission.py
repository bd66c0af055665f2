"""Commissioning tools: probe a register block, scan a bus, check a site against its meters.

What ``puhui gateway probe``, ``scan`` and ``check --live`` do, as async functions that
return data (the CLI prints it)::

    async with Link(TcpTarget("10.0.0.7", 502), timeout_s=2.0) as link:
        block = await link.read_block(unit=1, table="input", address=0x48, count=4)
        lines = drivers.modbus.decode.probe(block.registers, base_address=block.address)

    async with Link(SerialTarget("/dev/ttyUSB0", 9600), timeout_s=0.3) as link:
        async for found in scan_units(link, range(1, 248), sunspec=True): ...

    checks = await check_live(site, load_profiles(), SystemClock(), mqtt_wait_s=30)

A :class:`Link` reads through the gateway's own transports (one pymodbus TCP connection,
or a serial bus owner), so a probe sees exactly what the gateway will see. A failed read
is data, not an exception: :class:`BlockRead` says whether the device answered, answered
with a Modbus exception (a device is there), stayed silent or could not be reached, with
a one-line message naming the link, unit and address.

:func:`check_live` polls every enabled Modbus, DL/T 645 and CJ/T 188 meter once with the
source the gateway builds (:func:`gateway.runtime.modbus_source`, ``dlt645_source``,
``cjt188_source``: same policy, SunSpec discovery included, the meters of a shared line
taking turns on its one owner), waits for one message per MQTT meter with the gateway's
subscriber, and judges the readings against the nameplate (:func:`nameplate_warnings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from common.clock import Clock
from drivers.cjt188.config import QUANTITIES as CJT188_QUANTITIES
from drivers.contract import Invalid, PollSource, Sample
from drivers.dlt645.identifiers import item_quantities
from drivers.errors import SunSpecModelError, SunSpecNotFound
from drivers.line.config import describe_line
from drivers.line.owner import LineOwner
from drivers.mbus.config import QUANTITIES as MBUS_QUANTITIES
from drivers.modbus.errors import (
    DeviceExceptionReply,
    DeviceTimeout,
    DeviceUnreachable,
    ModbusError,
    NotModbusServer,
)
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profiles import Profile
from drivers.modbus.source import RegisterReader, describe
from drivers.modbus.sunspec import DEFAULT_BASES, ChainWalk, SunSpecChain
from drivers.modbus_rtu.config import SerialBus
from drivers.modbus_rtu.driver import RtuRegisterReader, SerialBusOwner
from drivers.modbus_tcp.driver import TcpRegisterReader
from drivers.mqtt.driver import MqttCredentialsError, MqttHealth, MqttSubscriber
from gateway.config import (
    Cjt188Meter,
    Dlt645Meter,
    MbusMeter,
    ModbusMeterBase,
    ModbusRtuMeter,
    ModbusTcpMeter,
    MqttMeter,
    SiteConfig,
)
from gateway.runtime import cjt188_source, dlt645_source, mbus_source, modbus_source, static_fields

Table = Literal["holding", "input"]
LineMeter = Dlt645Meter | Cjt188Meter | MbusMeter
LiveMeter = ModbusTcpMeter | ModbusRtuMeter | MqttMeter | Dlt645Meter | Cjt188Meter | MbusMeter
FUNCTION: dict[str, Literal[3, 4]] = {"holding": 3, "input": 4}

# What a Modbus exception code means to an installer (Modbus Application Protocol v1.1b3, 7).
EXCEPTION_MEANINGS: dict[int, str] = {
    1: "illegal function: the device has no such table (try the other --table)",
    2: "illegal data address: nothing readable at this address and count",
    3: "illegal data value: the device refuses this count",
    4: "server device failure",
    5: "acknowledge: the device is busy with a long command",
    6: "server device busy: try again",
    8: "memory parity error",
    10: "gateway path unavailable: the Modbus gateway has no route to this unit",
    11: "gateway target device failed to respond: no device with this unit id behind the gateway",
}
# Codes a TCP-to-RTU gateway sends on behalf of a unit that is not there.
GATEWAY_ABSENT_CODES = frozenset({10, 11})


def exception_meaning(code: int | None) -> str:
    """``"2 (illegal data address: ...)"`` for a Modbus exception code."""
    if code is None:
        return "with an unknown code"
    return f"{code} ({EXCEPTION_MEANINGS.get(code, 'not a standard exception code')})"


# -- links: where to probe ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpTarget:
    """A Modbus TCP device or TCP-to-RTU gateway."""

    host: str
    port: int = 502

    def __str__(self) -> str:
        return f"tcp {self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialTarget:
    """An RS-485 line (Modbus RTU)."""

    device: str
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    def __str__(self) -> str:
        return f"rtu {self.device} {self.baudrate} 8{self.parity}{self.stopbits}"


Target = TcpTarget | SerialTarget


class Answer(StrEnum):
    """How a unit responded to one read."""

    DATA = "data"
    EXCEPTION = "exception"  # a Modbus exception reply: something answered
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # no TCP connection / serial port
    NOT_MODBUS = "not_modbus"  # something answered, not in Modbus (a web server on the port)
    ERROR = "error"  # a reply that is not a usable answer (wrong length, other unit id...)


# Answers that say the link itself is wrong (not one unit): a scan stops there.
LINK_FAILURES = frozenset({Answer.UNREACHABLE, Answer.NOT_MODBUS})


@dataclass(frozen=True, slots=True)
class BlockRead:
    """The outcome of reading one register block once."""

    target: Target
    unit: int
    table: Table
    address: int
    count: int
    answer: Answer
    registers: tuple[int, ...] = ()
    exception_code: int | None = None
    error: str | None = None  # one line naming target, unit and address
    latency_s: float = 0.0

    @property
    def where(self) -> str:
        last = self.address + self.count - 1
        return (
            f"{self.target} unit {self.unit} {self.table} 0x{self.address:04X}..0x{last:04X} ({self.address})"
        )

    @property
    def present(self) -> bool:
        """A device with this unit id answered (with data or an exception of its own)."""
        if self.answer is Answer.EXCEPTION:
            return self.exception_code not in GATEWAY_ABSENT_CODES
        return self.answer is Answer.DATA


class Link:
    """An installer's connection to one device or bus (async context manager).

    Reads go through the gateway's transports; after a failed read the TCP connection is
    dropped (as the gateway's policy does) so a late answer cannot be taken for the next.
    """

    def __init__(self, target: Target, *, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._stack = contextlib.AsyncExitStack()
        self._reader: RegisterReader | None = None

    async def __aenter__(self) -> Link:
        async with contextlib.AsyncExitStack() as stack:
            if isinstance(self.target, TcpTarget):
                tcp = TcpRegisterReader(self.target.host, self.target.port, timeout_s=self.timeout_s)
                stack.push_async_callback(tcp.aclose)
                self._reader = tcp
            else:
                owner = await stack.enter_async_context(SerialBusOwner(self._bus()))
                self._reader = RtuRegisterReader(owner)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _bus(self) -> SerialBus:
        assert isinstance(self.target, SerialTarget)
        t = self.target
        return SerialBus(
            id="commissioning", port=t.device, baudrate=t.baudrate, parity=t.parity,
            stopbits=t.stopbits, timeout_s=self.timeout_s, inter_frame_delay_ms=5.0,
        )  # fmt: skip

    async def read_block(self, unit: int, table: Table, address: int, count: int) -> BlockRead:
        """Read ``count`` registers at ``address`` of ``unit`` once; never raises for the device."""
        if self._reader is None:
            raise RuntimeError("Link is not open (use async with)")
        request = ReadRequest(unit, FUNCTION[table], address, count, ())
        blank = BlockRead(self.target, unit, table, address, count, Answer.DATA)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        read = replace(await self._attempt(self._reader, request, blank), latency_s=loop.time() - t0)
        if read.answer is not Answer.DATA:
            await self._reader.reset()
        if read.answer is Answer.UNREACHABLE and isinstance(self.target, TcpTarget):
            problem = await tcp_connect_problem(self.target, self.timeout_s)
            read = replace(read, error=f"{read.where}: {problem}")
        return read

    async def _attempt(self, reader: RegisterReader, request: ReadRequest, blank: BlockRead) -> BlockRead:
        where = blank.where
        prefix = f"{describe(request)}: "  # the transport's own description of the request
        try:
            # The transport times out after timeout_s; this deadline only guards against a
            # hang (an RTU request may first wait for the bus).
            async with asyncio.timeout(2 * self.timeout_s + 1.0):
                words = await reader.read(request)
        except DeviceExceptionReply as exc:
            msg = f"{where}: exception reply {exception_meaning(exc.code)}"
            return replace(blank, answer=Answer.EXCEPTION, exception_code=exc.code, error=msg)
        except (DeviceTimeout, TimeoutError):
            msg = f"{where}: no answer within {self.timeout_s:g} s"
            return replace(blank, answer=Answer.TIMEOUT, error=msg)
        except DeviceUnreachable as exc:
            error = f"{where}: {str(exc).removeprefix(prefix)}"
            return replace(blank, answer=Answer.UNREACHABLE, error=error)
        except NotModbusServer as exc:  # a wrong port: no unit id or address will do better
            error = f"{where}: {str(exc).removeprefix(prefix)} (wrong port or address?)"
            return replace(blank, answer=Answer.NOT_MODBUS, error=error)
        except ModbusError as exc:
            return replace(blank, answer=Answer.ERROR, error=f"{where}: {str(exc).removeprefix(prefix)}")
        if len(words) != request.count:
            msg = f"{where}: answered {len(words)} registers instead of {request.count}"
            return replace(blank, answer=Answer.ERROR, error=msg)
        return replace(blank, answer=Answer.DATA, registers=tuple(words))


async def tcp_connect_problem(target: TcpTarget, timeout_s: float) -> str:
    """Why a plain TCP connection to ``target`` fails (refused, timed out, unknown host), or
    that it works (then the Modbus layer is the problem)."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(target.host, target.port)
    except TimeoutError:
        return f"cannot connect: no TCP answer within {timeout_s:g} s (host down, wrong IP or a firewall?)"
    except socket.gaierror as exc:
        return f"cannot connect: host {target.host!r} not found ({exc.strerror})"
    except ConnectionRefusedError:
        return f"cannot connect: connection refused (nothing listens on port {target.port}: wrong port?)"
    except OSError as exc:
        return f"cannot connect: {os.strerror(exc.errno) if exc.errno else exc}"
    writer.close()
    with contextlib.suppress(OSError):  # closing a connection we only opened to test it
        await writer.wait_closed()
    return "TCP connects, but the Modbus connection failed or was closed by the device"


# -- scan ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SunSpecFinding:
    """What a SunSpec walk of one unit found: the chain, no marker (both None), or an error."""

    chain: SunSpecChain | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class UnitScan:
    """One unit id of a scan: its read and, if asked and present, its SunSpec finding."""

    unit: int
    read: BlockRead
    sunspec: SunSpecFinding | None = None


async def scan_units(
    link: Link,
    units: Iterable[int],
    *,
    table: Table = "holding",
    address: int = 0,
    count: int = 1,
    sunspec: bool = False,
) -> AsyncIterator[UnitScan]:
    """Try each unit id in turn with one small read (sequential: one bus, one request at a
    time). Stops after a result whose link is unreachable or not Modbus at all: every other
    unit would be too."""
    for unit in units:
        read = await link.read_block(unit, table, address, count)
        finding = await find_sunspec(link, unit) if sunspec and read.present else None
        yield UnitScan(unit, read, finding)
        if read.answer in LINK_FAILURES:
            return


async def find_sunspec(link: Link, unit: int, bases: Sequence[int] = DEFAULT_BASES) -> SunSpecFinding:
    """Walk the SunSpec chain of ``unit`` (marker "SunS" at 40000, 0, 50000, then the model
    headers) with :class:`drivers.modbus.sunspec.ChainWalk`."""
    walk = ChainWalk(bases)
    try:
        while (request := walk.request()) is not None:
            read = await link.read_block(unit, "holding", *request)
            if read.answer in (*LINK_FAILURES, Answer.ERROR):
                return SunSpecFinding(error=read.error)
            walk.feed(read.registers if read.answer is Answer.DATA else None)
        return SunSpecFinding(chain=walk.chain)
    except SunSpecNotFound:
        return SunSpecFinding()
    except SunSpecModelError as exc:
        return SunSpecFinding(error=f"{link.target} unit {unit}: {exc}")


# -- check --live -------------------------------------------------------------------------------

POWER_KW = {"W": 1e-3, "kW": 1.0, "MW": 1e3}
ENERGY_KWH = {"Wh": 1e-3, "kWh": 1.0, "MWh": 1e3, "MJ": 1 / 3.6, "GJ": 1e3 / 3.6}
POWER_MARGIN = 1.5  # a gauge above 1.5 x rated power is suspicious
COUNTER_YEARS = 30  # a counter above 30 years at rated power is suspicious


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    """What a meter's configuration says about one quantity."""

    unit: str
    kind: str  # counter, gauge or info
    per_session: bool = False


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded quantity of a live check."""

    quantity: str
    value: float | Invalid
    unit: str
    kind: str
    counted: bool  # among the meter's ``counts``
    per_session: bool = False


@dataclass(frozen=True, slots=True)
class MeterCheck:
    """The live check of one meter."""

    meter: str
    driver: str
    where: str
    reachable: bool
    error: str | None = None  # why it is not reachable (the driver's error)
    readings: tuple[Reading, ...] = ()
    missing: tuple[str, ...] = ()  # counted quantities the meter did not deliver
    warnings: tuple[str, ...] = ()
    latency_s: float | None = None

    @property
    def ok(self) -> bool:
        """Reachable and delivering every counted quantity (warnings do not fail a meter)."""
        return self.reachable and not self.missing


def quantity_specs(meter: LiveMeter, profiles: Mapping[str, Profile]) -> dict[str, QuantitySpec]:
    """Unit and kind of every quantity the meter's configuration can deliver (SunSpec: the
    shipped mapping's points, as the gateway plans them before discovery)."""
    if isinstance(meter, MqttMeter):
        return {q: QuantitySpec(f.unit, f.kind) for q, f in meter.source.fields.items()}
    if isinstance(meter, Dlt645Meter):
        return {q: QuantitySpec(f.unit, f.kind) for q, f in item_quantities(meter.items()).items()}
    if isinstance(meter, Cjt188Meter):
        return {
            q: QuantitySpec(CJT188_QUANTITIES[q].unit, CJT188_QUANTITIES[q].kind) for q in meter.quantities
        }
    if isinstance(meter, MbusMeter):
        return {q: QuantitySpec(MBUS_QUANTITIES[q].unit, MBUS_QUANTITIES[q].kind) for q in meter.quantities}
    fields = static_fields(meter, profiles)
    return {f.quantity: QuantitySpec(f.unit, f.kind, f.per_session) for f in fields if f.quantity}


NO_VALUE_HINT = {
    "modbus": "NaN or not implemented (wrong register or type?)",
    "line": "the meter sends no value (a meter or sensor fault: see its display)",
}


def nameplate_warnings(
    rated_power_kw: float, readings: Iterable[Reading], *, no_value: str = NO_VALUE_HINT["modbus"]
) -> list[str]:
    """Values that look wrong for the nameplate: power above 1.5 x rated, a counted quantity
    that is not a number (``no_value`` says what that suggests for the driver), an energy
    counter that is 0 (except per-session counters), negative, or above 30 years at rated
    power."""
    out: list[str] = []
    for r in readings:
        if isinstance(r.value, Invalid):
            if r.counted:
                out.append(f"{r.quantity}: {r.value}: {no_value}")
            continue
        if r.kind == "gauge" and r.unit in POWER_KW:
            limit = POWER_MARGIN * rated_power_kw
            if abs(r.value) * POWER_KW[r.unit] > limit:
                out.append(
                    f"{r.quantity}: {r.value:g} {r.unit} is beyond ±{limit:g} kW ({POWER_MARGIN:g} x rated "
                    f"power {rated_power_kw:g} kW): wrong scale, byte order or nameplate?"
                )
        if r.kind == "counter" and r.counted:
            out.extend(_counter_warnings(r, rated_power_kw))
    return out


def _counter_warnings(r: Reading, rated_power_kw: float) -> list[str]:
    assert not isinstance(r.value, Invalid)
    if r.value < 0:
        return [
            f"{r.quantity}: {r.value:g} {r.unit}: an energy counter cannot be negative (type or byte order?)"
        ]
    if r.value == 0 and not r.per_session:
        return [f"{r.quantity}: reads 0 {r.unit}: a brand-new meter, or the wrong register?"]
    to_kwh = ENERGY_KWH.get(r.unit)
    ceiling = rated_power_kw * 8760 * COUNTER_YEARS
    if to_kwh is not None and r.value * to_kwh > ceiling:
        return [
            f"{r.quantity}: {r.value:g} {r.unit} is more than {COUNTER_YEARS} years at rated power "
            f"{rated_power_kw:g} kW: wrong unit, scale or byte order?"
        ]
    return []


def judge(
    meter: LiveMeter,
    specs: Mapping[str, QuantitySpec],
    samples: Iterable[Sample],
    *,
    where: str,
    error: str | None = None,
    latency_s: float | None = None,
) -> MeterCheck:
    """A meter's check from the samples one poll (or message) gave: the last value of each
    quantity, counted quantities without one, and the nameplate warnings."""
    latest = {s.quantity: s.value for s in samples}
    counted = set(meter.counts)
    readings = tuple(
        Reading(q, latest[q], spec.unit, spec.kind, q in counted, spec.per_session)
        for q, spec in specs.items()
        if q in latest
    )
    missing = tuple(q for q in meter.counts if q not in latest) if error is None else ()
    hint = NO_VALUE_HINT["line" if isinstance(meter, Dlt645Meter | Cjt188Meter | MbusMeter) else "modbus"]
    warnings = nameplate_warnings(meter.nameplate.rated_power_kw, readings, no_value=hint)
    return MeterCheck(
        meter.id, meter.driver, where, error is None, error, readings, missing, tuple(warnings), latency_s
    )


def modbus_where(meter: ModbusMeterBase, site: SiteConfig) -> str:
    """``tcp 10.0.0.7:502 unit 3`` or ``rtu bus1 (/dev/ttyUSB0) unit 5``."""
    if isinstance(meter, ModbusTcpMeter):
        return f"tcp {meter.connection.host}:{meter.connection.port} unit {meter.unit_id}"
    assert isinstance(meter, ModbusRtuMeter)
    if meter.connection.line is not None:
        lines = {line.id: describe_line(line) for line in site.lines}
        return f"rtu on {lines.get(meter.connection.line, meter.connection.line)} unit {meter.unit_id}"
    ports = {b.id: b.port for b in site.serial_buses}
    return f"rtu {meter.connection.bus} ({ports.get(meter.connection.bus or '', '?')}) unit {meter.unit_id}"


async def check_live(
    site: SiteConfig, profiles: Mapping[str, Profile], clock: Clock, *, mqtt_wait_s: float = 30.0
) -> list[MeterCheck]:
    """Poll every enabled Modbus, DL/T 645, CJ/T 188 and M-Bus meter once and wait up to
    ``mqtt_wait_s`` for one message per MQTT meter, concurrently, with the gateway's own
    sources; one check per meter, site order."""
    modbus = [m for m in site.meters if m.enabled and isinstance(m, ModbusTcpMeter | ModbusRtuMeter)]
    mqtt = [m for m in site.meters if m.enabled and isinstance(m, MqttMeter)]
    on_line = [m for m in site.meters if m.enabled and isinstance(m, Dlt645Meter | Cjt188Meter | MbusMeter)]
    results: dict[str, MeterCheck] = {}
    async with contextlib.AsyncExitStack() as stack:
        used = {m.connection.bus for m in modbus if isinstance(m, ModbusRtuMeter)}
        buses = {
            b.id: await stack.enter_async_context(SerialBusOwner(b))
            for b in site.serial_buses
            if b.id in used
        }
        on_lines = {m.connection.line for m in modbus if isinstance(m, ModbusRtuMeter) and m.connection.line}
        on_lines |= {m.connection.line for m in on_line}
        lines = {
            line.id: await stack.enter_async_context(LineOwner(line))
            for line in site.lines
            if line.id in on_lines
        }
        async with asyncio.TaskGroup() as group:
            polls = [
                group.create_task(_poll_once(m, site, profiles, clock, buses, lines), name=f"check:{m.id}")
                for m in modbus
            ]
            polls += [
                group.create_task(_poll_line_meter(m, site, clock, lines), name=f"check:{m.id}")
                for m in on_line
            ]
            listens = [
                group.create_task(_listen_once(meters, profiles, clock, mqtt_wait_s), name=f"check:mqtt:{i}")
                for i, meters in enumerate(_by_connection(mqtt))
            ]
    for task in polls:
        check = task.result()
        results[check.meter] = check
    for listen in listens:
        results.update({c.meter: c for c in listen.result()})
    return [results[m.id] for m in site.meters if m.id in results]


async def _poll_once(
    meter: ModbusTcpMeter | ModbusRtuMeter,
    site: SiteConfig,
    profiles: Mapping[str, Profile],
    clock: Clock,
    buses: Mapping[str, SerialBusOwner],
    lines: Mapping[str, LineOwner],
) -> MeterCheck:
    where = modbus_where(meter, site)
    specs = quantity_specs(meter, profiles)
    source = modbus_source(meter, profiles, clock, buses, lines)
    async with source:
        result = await source.poll()
    return judge(meter, specs, result.samples, where=where, error=result.error, latency_s=result.latency_s)


def line_where(meter: LineMeter, site: SiteConfig) -> str:
    """``dlt645 on line east (tcp 10.0.0.9:8899) address 000012345678``."""
    lines = {line.id: describe_line(line) for line in site.lines}
    line = lines.get(meter.connection.line, meter.connection.line)
    if isinstance(meter, MbusMeter):
        c = meter.connection
        where = f"address {c.address}" if c.address is not None else f"secondary {c.secondary_address}"
        return f"mbus on {line} {where}"
    protocol = "dlt645" if isinstance(meter, Dlt645Meter) else "cjt188"
    return f"{protocol} on {line} address {meter.connection.address}"


async def _poll_line_meter(
    meter: LineMeter, site: SiteConfig, clock: Clock, lines: Mapping[str, LineOwner]
) -> MeterCheck:
    source: PollSource
    if isinstance(meter, Dlt645Meter):
        source = dlt645_source(meter, lines, clock)
    elif isinstance(meter, MbusMeter):
        source = mbus_source(meter, lines, clock)
    else:
        source = cjt188_source(meter, lines, clock)
    async with source:
        result = await source.poll()
    return judge(
        meter, quantity_specs(meter, {}), result.samples, where=line_where(meter, site), error=result.error,
        latency_s=result.latency_s,
    )  # fmt: skip


def _by_connection(meters: Sequence[MqttMeter]) -> list[list[MqttMeter]]:
    groups: dict[object, list[MqttMeter]] = {}
    for m in meters:
        groups.setdefault(m.connection, []).append(m)
    return list(groups.values())


async def _listen_once(
    meters: Sequence[MqttMeter], profiles: Mapping[str, Profile], clock: Clock, wait_s: float
) -> list[MeterCheck]:
    samples: list[Sample] = []
    # No client id: a clean session of its own, so a running gateway's session is not taken over.
    subscriber = MqttSubscriber(
        meters[0].connection, [(m.id, m.source) for m in meters], samples.extend, clock
    )
    try:
        async with subscriber:
            await _wait_for_messages(subscriber, wait_s)
            health = dict(subscriber.health)
    except MqttCredentialsError as exc:  # the broker password file cannot be read
        return [
            judge(m, quantity_specs(m, profiles), (), where=_mqtt_where(m), error=str(exc)) for m in meters
        ]
    return [_judge_mqtt(m, health[m.id], samples, profiles, wait_s) for m in meters]


async def _wait_for_messages(subscriber: MqttSubscriber, wait_s: float) -> None:
    try:
        async with asyncio.timeout(wait_s):
            await subscriber.wait_until(lambda health: all(h.messages > 0 for h in health.values()))
    except TimeoutError:
        return  # the meters still silent are reported by _judge_mqtt


def _judge_mqtt(
    meter: MqttMeter,
    health: MqttHealth,
    samples: Sequence[Sample],
    profiles: Mapping[str, Profile],
    wait_s: float,
) -> MeterCheck:
    specs = quantity_specs(meter, profiles)
    where = _mqtt_where(meter)
    if health.messages == 0:
        why = f"{meter.id} ({where}): no message within {wait_s:g} s"
        why += f"; {health.last_error}" if health.last_error else ""
        return judge(meter, specs, (), where=where, error=why)
    check = judge(meter, specs, [s for s in samples if s.meter == meter.id], where=where)
    if health.last_error is None:
        return check
    return replace(check, warnings=(health.last_error, *check.warnings))


def _mqtt_where(meter: MqttMeter) -> str:
    return f"mqtt {meter.connection.host}:{meter.connection.port} topic {meter.source.topic!r}"
