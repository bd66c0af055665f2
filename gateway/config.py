"""Site configuration: closed pydantic models, YAML loading with every error at once.

``load_site(path)`` reads a site YAML and the shipped profiles and returns a
:class:`SiteConfig`, or raises :class:`gateway.errors.ConfigError` listing every problem as
``site.yaml: meters[3].registers[1].type: 'flaot32' is not a type (float32?)``.
Validation itself does no I/O: profiles are passed in (validation context), connecting
happens when the gateway starts. Reference: docs/gateway-config.md.

Other issues extend :class:`SiteConfig` with their own sections (sealing, outbox,
uplink) by adding fields; unknown keys stay errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from common.yaml_models import Issue, PathPart, issues_from, read_yaml, suggest
from drivers.cjt188.config import DEFAULT_QUANTITIES as CJT188_DEFAULT_QUANTITIES
from drivers.cjt188.config import QUANTITIES as CJT188_QUANTITIES
from drivers.cjt188.config import Cjt188MeterSettings
from drivers.cjt188.units import UNITS as CJT188_UNITS
from drivers.dlt645.config import Dlt645Connection
from drivers.dlt645.identifiers import DEFAULT_READ, ITEMS, DataItem, item_quantities
from drivers.line.config import LineConfig
from drivers.mbus.config import DEFAULT_QUANTITIES as MBUS_DEFAULT_QUANTITIES
from drivers.mbus.config import QUANTITIES as MBUS_QUANTITIES
from drivers.mbus.config import MbusMeterSettings
from drivers.modbus.decode import RegisterType
from drivers.modbus.profiles import (
    DEFAULT_GROUP,
    NOT_AGGREGATED,
    Profile,
    RegisterField,
    check_fields,
    load_profiles,
)
from drivers.modbus_rtu.config import ModbusRtuConnection, SerialBus
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.mqtt.config import MqttConnection, MqttSource
from drivers.ocpp.config import ControllerConfig, TapConfig
from evidence.batch import GATEWAY_ID
from gateway.errors import ConfigError
from gateway.evidence_config import EvidenceSettings, UplinkSettings
from gateway.intervals import SeriesSpec, energy_rate_limit
from gateway.status import StatusSettings

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
QUANTITY = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
DEFAULT_POLL = {"fast": 5.0, "slow": 60.0}


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayInfo(Closed):
    """Who this gateway is."""

    id: str = Field(pattern=GATEWAY_ID.pattern, description="also used in MQTT topics")
    site: str = Field(min_length=1)
    description: str = ""
    grid_region: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_]*$", description="power grid region for grid emission factors"
    )


class SystemClockConfig(Closed):
    """Wall time. The gateway stamps and seals only while the kernel reports the clock
    synchronised (NTP) and it reads later than the software's build; ``require_sync: false``
    skips the kernel's report (a time source that does not tell the kernel), not the floor."""

    mode: Literal["system"] = "system"
    require_sync: bool = True


class FastClockConfig(Closed):
    """Simulated time: ``epoch + factor * (wall - wall_start)`` (demo and tests)."""

    mode: Literal["fast"]
    epoch: float
    factor: float = Field(gt=0, le=10_000)
    wall_start: float | None = None


ClockConfig = Annotated[SystemClockConfig | FastClockConfig, Field(discriminator="mode")]


class Nameplate(Closed):
    """What the meter and the installation are rated for."""

    rated_power_kw: float = Field(gt=0, le=100_000)
    meter_class: Literal["0.2S", "0.5S", "0.5", "1", "2", "A", "B", "C", "heat_1", "heat_2", "heat_3"]
    counter_width: Literal[16, 32, 64] | None = Field(
        default=None, description="bits at which counters wrap; default from the register type"
    )
    calibrated_until: dt.date | None = Field(
        default=None, description="last day (China time) of the meter's calibration validity, YYYY-MM-DD"
    )


class MeterBase(Closed):
    """What every meter has, whatever its driver."""

    id: str = Field(pattern=ID_PATTERN)
    scenario: Literal["pv", "ev_charging", "clean_heating"]
    nameplate: Nameplate
    counts: tuple[QUANTITY, ...] = Field(min_length=1, description="quantities that become intervals")
    stats_quantity: QUANTITY | None = Field(default="power", description="gauge giving counter Stats")
    reset_tolerance: float = Field(default=0.0, ge=0, description="counter decreases seen as jitter")
    enabled: bool = True

    @field_validator("counts")
    @classmethod
    def _counted_once(cls, counts: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # One interval series per (meter, quantity): the interval builder refuses a second.
        twice = sorted({q for q in counts if counts.count(q) > 1})
        if twice:
            meter = info.data.get("id")
            whose = f" of meter {meter!r}" if isinstance(meter, str) else ""
            raise ValueError(f"{', '.join(map(repr, twice))} listed more than once in the counts{whose}")
        return counts


class ModbusMeterBase(MeterBase):
    """A Modbus meter: unit id, a shipped profile or inline registers, poll groups."""

    unit_id: int = Field(ge=0, le=255)
    profile: str | None = None
    registers: tuple[RegisterField, ...] = ()
    poll: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], float] = Field(
        default_factory=lambda: dict(DEFAULT_POLL), description="poll group -> seconds"
    )
    max_gap: int | None = Field(default=None, ge=0, le=124, description="overrides the profile's")

    @model_validator(mode="after")
    def _check_source(self) -> ModbusMeterBase:
        if (self.profile is None) == (not self.registers):
            raise ValueError("give either a profile or inline registers (not both)")
        problems = check_fields(self.registers)
        problems += [f"poll.{g}: {s} s is not a period (> 0)" for g, s in self.poll.items() if not s > 0]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def fields(self, profiles: Mapping[str, Profile]) -> tuple[RegisterField, ...]:
        """The meter's static fields (empty for SunSpec: known after discovery)."""
        return profiles[self.profile].fields if self.profile is not None else self.registers


class ModbusTcpMeter(ModbusMeterBase):
    driver: Literal["modbus_tcp"]
    connection: ModbusTcpConnection


class ModbusRtuMeter(ModbusMeterBase):
    driver: Literal["modbus_rtu"]
    connection: ModbusRtuConnection


class MqttMeter(MeterBase):
    driver: Literal["mqtt"]
    connection: MqttConnection
    source: MqttSource


class Dlt645Meter(MeterBase):
    """A DL/T 645-2007 meter on a shared line: its address and the data items read."""

    driver: Literal["dlt645"]
    connection: Dlt645Connection
    read: tuple[str, ...] = Field(
        default=DEFAULT_READ, min_length=1, description="data items (drivers/dlt645)"
    )
    poll: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], float] = Field(
        default_factory=lambda: dict(DEFAULT_POLL), description="poll group -> seconds"
    )

    @field_validator("read")
    @classmethod
    def _known_items(cls, read: tuple[str, ...]) -> tuple[str, ...]:
        problems = []
        for name in read:
            if name not in ITEMS:
                hint = suggest(name, list(ITEMS))
                problems.append(f"{name!r} is not a DL/T 645 data item" + (f" ({hint}?)" if hint else ""))
        twice = sorted({q for q in read if read.count(q) > 1})
        problems += [f"{q!r} listed more than once" for q in twice]
        if problems:
            raise ValueError("; ".join(problems) + f"; known: {', '.join(ITEMS)}")
        return read

    @model_validator(mode="after")
    def _periods(self) -> Dlt645Meter:
        bad = [f"poll.{g}: {s} s is not a period (> 0)" for g, s in self.poll.items() if not s > 0]
        missing = sorted({i.group for i in self.items()} - set(self.poll))
        bad += [f"poll: no period for group {g!r} of the items read" for g in missing]
        if bad:
            raise ValueError("; ".join(bad))
        return self

    def items(self) -> tuple[DataItem, ...]:
        return tuple(ITEMS[name] for name in self.read)


# The energy units a CJ/T 188 meter may count in (its unit code's symbol), kWh per unit.
CJT188_ENERGY_UNITS = {u.symbol: float(u.factor) for u in CJT188_UNITS.values() if u.kind == "energy"}


class Cjt188Meter(MeterBase, Cjt188MeterSettings):
    """A CJ/T 188 heat meter on a shared line: the driver's settings (connection,
    quantities, poll_s, policy) with the common meter fields, and the unit its energy
    counters count in (which sets where they roll over: 10^6 of that unit)."""

    driver: Literal["cjt188"]
    energy_unit: str = Field(default="kWh", description="unit of the meter's energy counters (nameplate)")

    @field_validator("energy_unit")
    @classmethod
    def _energy_unit(cls, unit: str) -> str:
        if unit not in CJT188_ENERGY_UNITS:
            hint = suggest(unit, list(CJT188_ENERGY_UNITS))
            raise ValueError(
                f"{unit!r} is not a CJ/T 188 energy unit"
                + (f" ({hint}?)" if hint else "")
                + f"; known: {', '.join(CJT188_ENERGY_UNITS)}"
            )
        return unit


class MbusMeter(MeterBase, MbusMeterSettings):
    """An EN 13757-3 M-Bus heat meter on a shared line: the driver's settings (connection
    with primary or secondary address, quantities, poll_s, policy) with the common meter
    fields. Energy arrives in kWh whatever the meter's VIF."""

    driver: Literal["mbus"]


# quantity -> (unit, kind) of what the OCPP reader hands over (drivers/ocpp/metering.py)
OCPP_QUANTITIES: dict[str, tuple[str, Literal["counter", "gauge"]]] = {
    "energy_delivered": ("Wh", "counter"),
    "energy_returned": ("Wh", "counter"),
    "power": ("W", "gauge"),
}


class OcppConnector(Closed):
    """Which charger's connector (OCPP 1.6 connectorId, 2.0.1 EVSE id) this meter is."""

    charger: str = Field(pattern=r"^[^/\s]{1,48}$", description="the charge point id (its URL path)")
    connector: int = Field(ge=0, le=255)


class OcppMeter(MeterBase):
    """One connector (or EVSE) of an OCPP charger, read by the site's ``ocpp`` endpoint (tap or
    local controller). Its readings are pushed by the charger every ``expected_period_s``."""

    driver: Literal["ocpp"]
    connection: OcppConnector
    expected_period_s: float = Field(
        default=900.0, gt=0, le=86_400, description="the charger's clock-aligned meter value interval"
    )


class OcppEndpoint(Closed):
    """The gateway's OCPP endpoint: ``mode`` picks the tap (forward to the network's CSMS) or
    the local controller (the gateway is the CSMS); its settings are drivers/ocpp's models."""

    mode: Literal["tap", "controller"]
    tap: TapConfig | None = None
    controller: ControllerConfig | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> OcppEndpoint:
        chosen, other = (self.tap, self.controller) if self.mode == "tap" else (self.controller, self.tap)
        if chosen is None:
            raise ValueError(f"mode {self.mode!r} needs its settings under '{self.mode}'")
        if other is not None:
            unused = "controller" if self.mode == "tap" else "tap"
            raise ValueError(f"'{unused}' is given but mode is {self.mode!r}: remove one")
        return self

    @property
    def settings(self) -> TapConfig | ControllerConfig:
        chosen = self.tap if self.mode == "tap" else self.controller
        assert chosen is not None  # _one_mode
        return chosen


Meter = Annotated[
    ModbusTcpMeter | ModbusRtuMeter | MqttMeter | Dlt645Meter | Cjt188Meter | MbusMeter | OcppMeter,
    Field(discriminator="driver"),
]


class SiteConfig(Closed):
    """One gateway's site: identity, clock, interval length, buses and meters."""

    gateway: GatewayInfo
    clock: ClockConfig = Field(default_factory=SystemClockConfig)
    interval_minutes: int = Field(default=15, ge=1, le=60)
    grace_seconds: float = Field(default=30.0, ge=0, le=600, description="keep intervals open after end")
    boundary_seconds: float = Field(
        default=5.0, ge=0, le=60,
        description="a counter reading this soon after a boundary closes the interval that ended (<= grace)",
    )  # fmt: skip
    serial_buses: tuple[SerialBus, ...] = ()
    lines: tuple[LineConfig, ...] = Field(
        default=(),
        description="shared RS-485 lines (serial port or TCP serial server) of DL/T 645 and RTU meters",
    )
    meters: tuple[Meter, ...] = Field(min_length=1)
    # Defaults: key /etc/puhui/gateway-key.pem, state /var/lib/puhui/gateway (see
    # gateway/evidence_config.py); without an uplink the gateway seals and keeps batches.
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)
    uplink: UplinkSettings | None = None
    status: StatusSettings = Field(default_factory=StatusSettings, description="local status endpoint")
    ocpp: OcppEndpoint | None = Field(default=None, description="OCPP tap or local controller (docs/ocpp.md)")

    @field_validator("interval_minutes")
    @classmethod
    def _divides_hour(cls, minutes: int) -> int:
        if 60 % minutes:
            raise ValueError(f"{minutes} does not divide 60 (1-6, 10, 12, 15, 20, 30, 60)")
        return minutes

    @field_validator("boundary_seconds")
    @classmethod
    def _within_half_interval(cls, boundary: float, info: ValidationInfo) -> float:
        # The gateway uses min(boundary, grace); the interval builder needs it below half an
        # interval (a reading cannot close the interval that ended and open the next one).
        minutes, grace = info.data.get("interval_minutes"), info.data.get("grace_seconds")
        if not isinstance(minutes, int) or not isinstance(grace, float | int):
            return boundary
        if min(boundary, grace) >= minutes * 30:
            raise ValueError(
                f"{boundary:g} s (and grace_seconds {grace:g} s) must be below half an interval "
                f"({minutes * 30} s) for {minutes}-minute intervals"
            )
        return boundary

    @property
    def interval_s(self) -> int:
        return self.interval_minutes * 60


def meter_quantities(meter: MeterBase, profiles: Mapping[str, Profile]) -> set[str]:
    """Quantities a meter can deliver (SunSpec: every mapped point's quantity)."""
    if isinstance(meter, MqttMeter):
        return set(meter.source.fields)
    if isinstance(meter, Dlt645Meter):
        return set(item_quantities(meter.items()))
    if isinstance(meter, Cjt188Meter | MbusMeter):
        return set(meter.quantities)
    if isinstance(meter, OcppMeter):
        return set(OCPP_QUANTITIES)
    assert isinstance(meter, ModbusMeterBase)
    if meter.profile is None:
        return {f.quantity for f in meter.registers if f.quantity}
    profile = profiles[meter.profile]
    if profile.sunspec is not None:
        return {p.quantity for points in profile.sunspec.points.values() for p in points.values()}
    return set(profile.quantities)


def _unknown(name: str, known: set[str]) -> str:
    hint = suggest(name, sorted(known))
    return f"{name!r} is not a quantity of this meter" + (
        f" ({hint}?)" if hint else f"; it has: {', '.join(sorted(known))}"
    )


# -- cross-references, checked on the raw data so they are reported with field errors ------


def reference_issues(data: Any, profiles: Mapping[str, Profile]) -> list[Issue]:
    """Duplicate ids, RTU meters on undeclared buses, two buses on one port, two meters with
    one unit id on one bus, unknown profiles, counted quantities a meter does not have,
    poll groups without a period. Checked on the raw data, so they are reported even when
    the same meter has field errors; tolerant of malformed entries (those get field errors)."""
    if not isinstance(data, dict):
        return []
    meter_list = _list(data.get("meters"))
    issues = [i for n, m in enumerate(meter_list) if isinstance(m, dict) for i in _meter_refs(n, m, profiles)]
    return issues + _bus_issues(data) + _ocpp_issues(data)


def _ocpp_issues(data: dict[str, Any]) -> list[Issue]:
    """OCPP meters need the ``ocpp`` section; one meter per charger connector; a meter id the
    endpoint's ``chargers.<id>.meter_ids`` gives must be the meter's own."""
    issues: list[Issue] = []
    endpoint = data.get("ocpp")
    mode = endpoint.get("mode") if isinstance(endpoint, dict) else None
    settings = endpoint.get(mode) if isinstance(endpoint, dict) and isinstance(mode, str) else None
    chargers = settings.get("chargers") if isinstance(settings, dict) else None
    seen: dict[tuple[object, object], int] = {}
    for i, m in enumerate(_list(data.get("meters"))):
        if not isinstance(m, dict) or m.get("driver") != "ocpp":
            continue
        if endpoint is None:
            issues.append(Issue(("meters", i, "driver"), "an ocpp meter needs the site's 'ocpp' section "
                                                         "(mode tap or controller)"))  # fmt: skip
        conn = m.get("connection")
        if not isinstance(conn, dict):
            continue
        charger, connector = conn.get("charger"), conn.get("connector")
        if not (_scalar(charger) and _scalar(connector)):
            continue
        if (charger, connector) in seen:
            issues.append(Issue(("meters", i, "connection"), f"charger {charger!r} connector {connector} is "
                                f"already meters[{seen[(charger, connector)]}]"))  # fmt: skip
        seen.setdefault((charger, connector), i)
        named = _ocpp_meter_id(chargers, charger, connector)
        if named is not None and named != m.get("id") and isinstance(endpoint, dict):
            where = f"ocpp.{endpoint.get('mode')}.chargers.{charger}.meter_ids"
            msg = f"{where} names connector {connector} {named!r}: use that id here, or drop it there"
            issues.append(Issue(("meters", i, "id"), msg))
    return issues


def _ocpp_meter_id(chargers: Any, charger: object, connector: object) -> str | None:
    cfg = chargers.get(charger) if isinstance(chargers, dict) else None
    ids = cfg.get("meter_ids") if isinstance(cfg, dict) else None
    named = ids.get(connector, ids.get(str(connector))) if isinstance(ids, dict) else None
    return named if isinstance(named, str) else None


def _bus_issues(data: dict[str, Any]) -> list[Issue]:
    buses = [b for b in _list(data.get("serial_buses")) if isinstance(b, dict)]
    meters = _list(data.get("meters"))
    issues = _duplicates("serial_buses", buses, "id") + _duplicates("serial_buses", buses, "port")
    issues += _duplicates("meters", meters, "id") + _line_issues(data)
    bus_ids = [str(b.get("id")) for b in buses]
    on_bus: dict[tuple[str, object], int] = {}
    for i, m in enumerate(meters):
        if not isinstance(m, dict) or m.get("driver") != "modbus_rtu":
            continue
        bus = (m.get("connection") or {}).get("bus") if isinstance(m.get("connection"), dict) else None
        if bus is None:  # on a shared line: checked with the lines
            continue
        if str(bus) not in bus_ids:
            hint = suggest(str(bus), bus_ids)
            msg = f"{bus!r} is not a serial bus" + (f" ({hint}?)" if hint else "; declare it in serial_buses")
            issues.append(Issue(("meters", i, "connection", "bus"), msg))
        unit = m.get("unit_id")
        if bus is None or not _scalar(unit):
            continue
        key = (str(bus), unit)
        if key in on_bus:
            msg = f"unit id {key[1]} is already used on bus {bus!r} by meters[{on_bus[key]}]"
            issues.append(Issue(("meters", i, "unit_id"), msg))
        on_bus.setdefault(key, i)
    return issues


def _line_issues(data: dict[str, Any]) -> list[Issue]:
    """Line ids unique (and not a serial bus's), one line per serial port or server port,
    meters on declared lines, one address (unit id) per line."""
    lines = _list(data.get("lines"))
    issues = _duplicates("lines", lines, "id")
    buses = [b for b in _list(data.get("serial_buses")) if isinstance(b, dict)]
    bus_ids = {b.get("id") for b in buses if _scalar(b.get("id"))}
    bus_ports = {b.get("port") for b in buses if _scalar(b.get("port"))}
    seen: dict[object, int] = {}
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            continue
        if _scalar(line.get("id")) and line.get("id") in bus_ids:
            issues.append(Issue(("lines", i, "id"), f"{line.get('id')!r} is already a serial bus's id"))
        where = (line.get("host"), line.get("port")) if line.get("kind") == "tcp_server" else line.get("port")
        if not _scalar(where) and not (isinstance(where, tuple) and all(map(_scalar, where))):
            continue
        if where in seen:
            issues.append(Issue(("lines", i, "port"), f"{where!r} is already lines[{seen[where]}]'s"))
        elif line.get("kind") == "serial" and where in bus_ports:
            issues.append(Issue(("lines", i, "port"), f"{where!r} is already a serial bus's port"))
        seen.setdefault(where, i)
    return issues + _on_line_issues(data, lines)


LINE_DRIVERS = {
    "modbus_rtu": "unit_id",
    "dlt645": "address",
    "cjt188": "address",
    "mbus": "address",  # the primary address (meters by secondary address: not checked here)
}  # driver -> its address on a line


def _on_line_issues(data: dict[str, Any], lines: list[Any]) -> list[Issue]:
    line_ids = [str(line.get("id")) for line in lines if isinstance(line, dict)]
    taken: dict[tuple[str, str, object], int] = {}
    issues: list[Issue] = []
    for i, m in enumerate(_list(data.get("meters"))):
        if not isinstance(m, dict) or not isinstance(m.get("driver"), str) or m["driver"] not in LINE_DRIVERS:
            continue
        connection = m.get("connection")
        if not isinstance(connection, dict) or connection.get("line") is None:
            continue
        name = connection["line"]
        if str(name) not in line_ids:
            hint = suggest(str(name), line_ids)
            msg = f"{name!r} is not a line" + (f" ({hint}?)" if hint else "; declare it in lines")
            issues.append(Issue(("meters", i, "connection", "line"), msg))
        field = LINE_DRIVERS[str(m["driver"])]
        address = m.get(field) if field == "unit_id" else connection.get(field)
        if not _scalar(address):
            continue
        key = (str(name), str(m["driver"]), address)
        if key in taken:
            path = ("meters", i, field) if field == "unit_id" else ("meters", i, "connection", field)
            issues.append(
                Issue(path, f"{address!r} is already used on line {name!r} by meters[{taken[key]}]")
            )
        taken.setdefault(key, i)
    return issues


def _meter_refs(i: int, m: dict[str, Any], profiles: Mapping[str, Profile]) -> list[Issue]:
    name = m.get("profile")
    if isinstance(name, str) and name not in profiles:
        hint = suggest(name, list(profiles))
        known = f" ({hint}?)" if hint else f"; shipped: {', '.join(sorted(profiles))}"
        return [Issue(("meters", i, "profile"), f"{name!r} is not a shipped profile{known}")]
    fields = _raw_fields(m, profiles)
    if fields is None:
        return []
    quantities = set(fields)
    counts = _list(m.get("counts"))
    issues = [Issue(("meters", i, "counts", j), _unknown(q, quantities))
              for j, q in enumerate(counts) if isinstance(q, str) and q not in quantities]  # fmt: skip
    status = _status_quantities(m, profiles)
    issues += [Issue(("meters", i, "counts", j), f"{q!r} is a status (a coil, an alarm bit, a state code): "
                     "it is read and shown, never counted")
               for j, q in enumerate(counts) if isinstance(q, str) and q in status]  # fmt: skip
    poll = m.get("poll", DEFAULT_POLL)
    groups = {fields[q] for q in counts if isinstance(q, str) and fields.get(q)}
    missing = sorted(g for g in groups if isinstance(poll, dict) and g not in poll)
    if missing:
        issues.append(Issue(("meters", i, "poll"), f"no period for poll group(s) {', '.join(missing)} "
                                                   "of counted quantities"))  # fmt: skip
    return issues


def _raw_fields(m: dict[str, Any], profiles: Mapping[str, Profile]) -> dict[str, str] | None:
    """quantity -> poll group ("" when the driver has no groups), from raw meter data."""
    if m.get("driver") == "dlt645":
        read = m.get("read", DEFAULT_READ)
        items = (
            [ITEMS[n] for n in read if isinstance(n, str) and n in ITEMS]
            if isinstance(read, list | tuple)
            else []
        )
        return {f.quantity: item.group for item in items for f in item.fields} if items else None
    if m.get("driver") == "cjt188":
        quantities = m.get("quantities", CJT188_DEFAULT_QUANTITIES)
        known = (
            [q for q in quantities if q in CJT188_QUANTITIES] if isinstance(quantities, list | tuple) else []
        )
        return {q: "" for q in known} or None  # none known: the quantities error says it
    if m.get("driver") == "mbus":
        quantities = m.get("quantities", MBUS_DEFAULT_QUANTITIES)
        known = (
            [q for q in quantities if q in MBUS_QUANTITIES] if isinstance(quantities, list | tuple) else []
        )
        return {q: "" for q in known} or None  # none known: the quantities error says it
    if m.get("driver") == "ocpp":
        return {q: "" for q in OCPP_QUANTITIES}
    if m.get("driver") == "mqtt":
        source = m.get("source")
        fields = source.get("fields") if isinstance(source, dict) else None
        return {str(q): "" for q in fields} if isinstance(fields, dict) else None
    name = m.get("profile")
    if isinstance(name, str):
        profile = profiles[name]
        if profile.sunspec is not None:
            return {p.quantity: p.group or DEFAULT_GROUP[p.kind]
                    for points in profile.sunspec.points.values() for p in points.values()}  # fmt: skip
        return {f.quantity: f.poll_group for f in profile.fields if f.quantity}
    regs = m.get("registers")
    if not isinstance(regs, list):
        return None
    return {
        str(r["quantity"]): str(r.get("group") or DEFAULT_GROUP.get(str(r.get("kind", "gauge")), "fast"))
        for r in regs
        if isinstance(r, dict) and r.get("quantity")
    }


def _status_quantities(m: dict[str, Any], profiles: Mapping[str, Profile]) -> set[str]:
    """The quantities of a Modbus meter's (raw) fields that are kind status."""
    name = m.get("profile")
    if isinstance(name, str) and name in profiles:
        return {f.quantity for f in profiles[name].fields if f.quantity and f.kind == "status"}
    regs = m.get("registers")
    regs = regs if isinstance(regs, list) else []
    return {
        str(r["quantity"])
        for r in regs
        if isinstance(r, dict)
        and r.get("quantity")
        and (r.get("kind") == "status" or (r.get("kind") is None and _is_bit(r)))
    }


def _is_bit(r: dict[str, Any]) -> bool:
    return r.get("function") in (1, 2) or r.get("type") == "bit" or r.get("bit") is not None


def _scalar(value: Any) -> bool:
    """A value that can be compared as an id (YAML lists and maps cannot be hashed)."""
    return isinstance(value, str | int | float | bool)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _duplicates(section: str, items: list[Any], key: str) -> list[Issue]:
    seen: dict[object, int] = {}
    out: list[Issue] = []
    for i, item in enumerate(items):
        value = item.get(key) if isinstance(item, dict) else None
        if not _scalar(value):
            continue  # missing, or a list or map: the field error says what is expected
        if value in seen:
            out.append(Issue((section, i, key), f"{value!r} is already used by {section}[{seen[value]}]"))
        seen.setdefault(value, i)
    return out


# -- loading ----------------------------------------------------------------------------------


def parse_site(data: Any, file: str, profiles: Mapping[str, Profile]) -> SiteConfig:
    """Validate parsed YAML (no I/O). Raises :class:`ConfigError` with every issue."""
    issues: list[Issue] = []
    site: SiteConfig | None = None
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as exc:
        issues += issues_from(exc, SiteConfig)
    issues += reference_issues(data, profiles)
    if issues or site is None:
        raise ConfigError(file, sorted(issues, key=_order))
    return site


def _order(issue: Issue) -> tuple[tuple[int, str], ...]:
    return tuple((p, "") if isinstance(p, int) else (-1, p) for p in issue.path)


def load_site(path: Path, profiles: Mapping[str, Profile] | None = None) -> SiteConfig:
    """Read and validate a site YAML (profiles default to the shipped ones)."""
    data, issues = read_yaml(path)
    if issues:
        raise ConfigError(path.name, issues)
    return parse_site(data, path.name, load_profiles() if profiles is None else profiles)


def issue_paths(err: ConfigError) -> list[tuple[PathPart, ...]]:
    """The paths an error names (tests, tooling)."""
    return [i.path for i in err.issues]


# -- series for the interval builder -------------------------------------------------------

_WIDTH_OF = {RegisterType.UINT16: 16, RegisterType.UINT32: 32, RegisterType.ACC32: 32}


def series_specs(
    meter: MeterBase, fields: Sequence[RegisterField], poll: Mapping[str, float] | None = None
) -> list[SeriesSpec]:
    """The interval builder's series for a Modbus meter's counted quantities.

    ``fields`` are the meter's fields (profile, inline, or SunSpec after discovery). A
    counter wraps at 2^width x scale (width from the nameplate, else from an unsigned
    16/32-bit register type; none for floats and for SunSpec scale-factor fields, whose
    scale is only known at run time).
    """
    by_quantity = {f.quantity: f for f in fields if f.quantity}
    poll = poll if poll is not None else getattr(meter, "poll", DEFAULT_POLL)
    stats = by_quantity.get(meter.stats_quantity or "")
    out: list[SeriesSpec] = []
    for q in meter.counts:
        f = by_quantity.get(q)
        if f is None or f.kind in NOT_AGGREGATED:
            continue
        period = poll.get(f.poll_group, DEFAULT_POLL["slow"])
        if f.kind == "gauge":
            out.append(SeriesSpec(meter.id, q, f.unit, "gauge", period))
            continue
        out.append(SeriesSpec(
            meter.id, q, f.unit, "counter", period,
            modulus=_modulus(meter, f),
            reset_tolerance=meter.reset_tolerance,
            max_rate=energy_rate_limit(meter.nameplate.rated_power_kw, f.unit),
            per_session=f.per_session,
            stats_quantity=stats.quantity if stats is not None and stats.kind == "gauge" else None,
            stats_unit=stats.unit if stats is not None else "",
        ))  # fmt: skip
    return out


def mqtt_series_specs(meter: MqttMeter) -> list[SeriesSpec]:
    """The interval builder's series for an MQTT meter."""
    period = meter.source.expected_period_s
    fields = meter.source.fields
    stats = fields.get(meter.stats_quantity or "")
    out: list[SeriesSpec] = []
    for q in meter.counts:
        f = fields[q]
        if f.kind == "gauge":
            out.append(SeriesSpec(meter.id, q, f.unit, "gauge", period))
            continue
        out.append(SeriesSpec(
            meter.id, q, f.unit, "counter", period,
            reset_tolerance=meter.reset_tolerance,
            max_rate=energy_rate_limit(meter.nameplate.rated_power_kw, f.unit),
            stats_quantity=meter.stats_quantity if stats is not None and stats.kind == "gauge" else None,
            stats_unit=stats.unit if stats is not None else "",
        ))  # fmt: skip
    return out


DLT645_MODULUS_KWH = 1_000_000.0  # XXXXXX.XX kWh rolls over after 999999.99


def dlt645_series_specs(meter: Dlt645Meter) -> list[SeriesSpec]:
    """The interval builder's series for a DL/T 645 meter's counted quantities."""
    items = meter.items()
    fields = item_quantities(items)
    group = {f.quantity: item.group for item in items for f in item.fields}
    stats = fields.get(meter.stats_quantity or "")
    out: list[SeriesSpec] = []
    for q in meter.counts:
        f = fields[q]
        period = meter.poll.get(group[q], DEFAULT_POLL["slow"])
        if f.kind == "info":
            continue
        if f.kind == "gauge":
            out.append(SeriesSpec(meter.id, q, f.unit, "gauge", period))
            continue
        out.append(SeriesSpec(
            meter.id, q, f.unit, "counter", period,
            modulus=DLT645_MODULUS_KWH,
            reset_tolerance=meter.reset_tolerance,
            max_rate=energy_rate_limit(meter.nameplate.rated_power_kw, f.unit),
            stats_quantity=stats.quantity if stats is not None and stats.kind == "gauge" else None,
            stats_unit=stats.unit if stats is not None else "",
        ))  # fmt: skip
    return out


CJT188_COUNTER_DIGITS = 10**6  # XXXXXX.XX of the meter's unit, XXXXXX h


def cjt188_series_specs(meter: Cjt188Meter) -> list[SeriesSpec]:
    """The interval builder's series for a CJ/T 188 meter's counted quantities. Energy
    arrives in kWh and rolls over at 10^6 of the meter's own unit (1,000,000 kWh for a kWh
    meter, 277,777,777.8 kWh for a GJ one); volume's unit is the meter's, so no modulus."""
    stats = CJT188_QUANTITIES.get(meter.stats_quantity or "")
    out: list[SeriesSpec] = []
    for q in meter.counts:
        spec = CJT188_QUANTITIES[q]
        if spec.kind == "info":
            continue
        if spec.kind == "gauge":
            out.append(SeriesSpec(meter.id, q, spec.unit, "gauge", meter.poll_s))
            continue
        out.append(SeriesSpec(
            meter.id, q, spec.unit, "counter", meter.poll_s,
            modulus=_cjt188_modulus(meter, q),
            reset_tolerance=meter.reset_tolerance,
            max_rate=energy_rate_limit(meter.nameplate.rated_power_kw, spec.unit),
            stats_quantity=meter.stats_quantity if stats is not None and stats.kind == "gauge" else None,
            stats_unit=stats.unit if stats is not None else "",
        ))  # fmt: skip
    return out


def _cjt188_modulus(meter: Cjt188Meter, quantity: str) -> float | None:
    if quantity in ("heat_energy", "cooling_energy"):
        return CJT188_COUNTER_DIGITS * CJT188_ENERGY_UNITS[meter.energy_unit]
    return float(CJT188_COUNTER_DIGITS) if quantity == "operating_hours" else None


def mbus_series_specs(meter: MbusMeter) -> list[SeriesSpec]:
    """The interval builder's series for an M-Bus meter's counted quantities. Energy arrives
    in kWh; where a counter rolls over depends on the record's size and VIF, known only
    from the telegram, so no modulus: a rollover shows as a counter reset, never as energy."""
    stats = MBUS_QUANTITIES.get(meter.stats_quantity or "")
    out: list[SeriesSpec] = []
    for q in meter.counts:
        spec = MBUS_QUANTITIES[q]
        if spec.kind == "info":
            continue
        if spec.kind == "gauge":
            out.append(SeriesSpec(meter.id, q, spec.unit, "gauge", meter.poll_s))
            continue
        out.append(SeriesSpec(
            meter.id, q, spec.unit, "counter", meter.poll_s,
            reset_tolerance=meter.reset_tolerance,
            max_rate=energy_rate_limit(meter.nameplate.rated_power_kw, spec.unit),
            stats_quantity=meter.stats_quantity if stats is not None and stats.kind == "gauge" else None,
            stats_unit=stats.unit if stats is not None else "",
        ))  # fmt: skip
    return out


def ocpp_series_specs(meter: OcppMeter) -> list[SeriesSpec]:
    """The interval builder's series for an OCPP connector: lifetime registers in Wh (no
    modulus: a charger reports the register as a number, it does not wrap at a width), power
    in W as the gauge for stats. ``events``: a transaction's Begin/End readings come on top of
    the clock-aligned ones, so they are not excess samples at the aggregator."""
    stats = OCPP_QUANTITIES.get(meter.stats_quantity or "")
    out: list[SeriesSpec] = []
    for q in meter.counts:
        unit, kind = OCPP_QUANTITIES[q]
        if kind == "gauge":
            out.append(SeriesSpec(meter.id, q, unit, "gauge", meter.expected_period_s, events=True))
            continue
        out.append(SeriesSpec(
            meter.id, q, unit, "counter", meter.expected_period_s, events=True,
            reset_tolerance=meter.reset_tolerance,
            max_rate=energy_rate_limit(meter.nameplate.rated_power_kw, unit),
            stats_quantity=meter.stats_quantity if stats is not None and stats[1] == "gauge" else None,
            stats_unit=stats[0] if stats is not None else "",
        ))  # fmt: skip
    return out


def _modulus(meter: MeterBase, f: RegisterField) -> float | None:
    if f.scale_factor is not None or f.per_session:
        return None
    width = meter.nameplate.counter_width or _WIDTH_OF.get(f.type)
    return None if width is None or width >= 64 else float(2**width) * f.scale
