"""Fleet files: closed pydantic models, validated without I/O, all errors reported at once.

A fleet has a clock, a physics step, a ground-truth interval, an optional MQTT broker
and control endpoint, and sites with devices. ``count: N`` on a device expands it into N
devices named by ``name.format(i=...)`` with seeds ``seed + i`` (and ports ``port + i``).
"""

from __future__ import annotations

import datetime
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.tls import TlsSettings
from common.yaml_models import read_yaml
from firmware_sim.errors import FleetConfigError

ZHANGJIAKOU = (40.77, 114.88)

DeviceKind = Literal[
    "sdm630",
    "sdm120",
    "sunspec_inverter",
    "sunspec_meter",
    "alfen",
    "abb",
    "heat_meter",
    "dlt645_meter",
    "cjt188_heat_meter",
    "mbus_heat_meter",
    "chint_dtsu666",
    "chint_ddsu666",
    "huawei_sun2000",
    "sungrow_sg",
    "mqtt_tasmota",
    "mqtt_plain",
]
MQTT_KINDS = frozenset({"mqtt_tasmota", "mqtt_plain"})
# Which physics each kind may meter (explicit table, no guessing).
ALLOWED_PHYSICS: dict[str, frozenset[str]] = {
    "sdm630": frozenset({"pv", "heating", "ev", "load", "pv_house"}),
    "sdm120": frozenset({"pv", "heating", "ev", "load", "pv_house"}),
    "sunspec_inverter": frozenset({"pv"}),
    "sunspec_meter": frozenset({"pv_house", "load", "heating", "ev"}),
    "alfen": frozenset({"ev"}),
    "abb": frozenset({"ev"}),
    "heat_meter": frozenset({"heating"}),
    "dlt645_meter": frozenset({"pv", "heating", "ev", "load", "pv_house"}),
    "cjt188_heat_meter": frozenset({"heating"}),
    "mbus_heat_meter": frozenset({"heating"}),
    "chint_dtsu666": frozenset({"pv", "heating", "ev", "load", "pv_house"}),
    "chint_ddsu666": frozenset({"pv", "heating", "ev", "load", "pv_house"}),
    "huawei_sun2000": frozenset({"pv"}),
    "sungrow_sg": frozenset({"pv"}),
    "mqtt_tasmota": frozenset({"pv", "heating", "ev", "load", "pv_house"}),
    "mqtt_plain": frozenset({"pv", "heating", "ev", "load", "pv_house"}),
}
# kinds only on a shared line; an M-Bus meter's primary address is its unit (+ i)
LINE_ONLY_KINDS = frozenset({"dlt645_meter", "cjt188_heat_meter", "mbus_heat_meter"})
ADDRESS_DIGITS = {"dlt645_meter": 12, "cjt188_heat_meter": 14}  # a DL/T 645 or CJ/T 188 address
DEFAULT_TOPICS = {"mqtt_tasmota": "tele/{name}/SENSOR", "mqtt_plain": "puhui/{site}/{name}/reading"}


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PvPhysics(Closed):
    model: Literal["pv"]
    kwp: float = Field(gt=0, le=1000)
    tilt: float = Field(default=30.0, ge=0, le=90)
    cloudiness: float = Field(default=0.3, ge=0, le=1)


class HeatingPhysics(Closed):
    model: Literal["heating"]
    area_m2: float = Field(default=120.0, gt=0)
    loss_w_m2k: float = Field(default=1.8, gt=0, le=10)
    setpoint_c: float = Field(default=18.0, ge=5, le=30)
    heater: Literal["heat_pump", "electric_boiler"] = "heat_pump"
    rated_kw: float = Field(default=12.0, gt=0)


class EvPhysics(Closed):
    model: Literal["ev"]
    power_limit_kw: float = Field(default=11.0, gt=0, le=350)
    arrivals_per_day: float = Field(default=2.0, ge=0)
    mean_energy_kwh: float = Field(default=20.0, gt=0)


class LoadPhysics(Closed):
    model: Literal["load"]
    base_w: float = Field(default=200.0, ge=0)
    peak_w: float = Field(default=1500.0, ge=0)


class PvHousePhysics(Closed):
    model: Literal["pv_house"]
    kwp: float = Field(gt=0, le=1000)
    tilt: float = Field(default=30.0, ge=0, le=90)
    cloudiness: float = Field(default=0.3, ge=0, le=1)
    base_w: float = Field(default=200.0, ge=0)
    peak_w: float = Field(default=1500.0, ge=0)


Physics = Annotated[
    PvPhysics | HeatingPhysics | EvPhysics | LoadPhysics | PvHousePhysics,
    Field(discriminator="model"),
]
PHYSICS_TAGS = frozenset({"pv", "heating", "ev", "load", "pv_house"})


class DeviceConfig(Closed):
    """One device (or ``count`` alike devices) of a site."""

    kind: DeviceKind
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:{}-]+$")
    physics: Physics
    count: int = Field(default=1, ge=1, le=5000)
    seed: int | None = None
    initial_kwh: float | None = Field(default=None, ge=0)
    port: int | Literal["auto"] = "auto"  # Modbus TCP port (same port = units behind one gateway)
    unit: int = Field(default=1, ge=1, le=247)
    rtu_bus: str | None = None  # serve over Modbus RTU on a pseudo-terminal bus of this name
    line: str | None = None  # hang on this shared line of the site (DL/T 645, CJ/T 188; Modbus: RTU)
    address: str | None = Field(default=None, pattern=r"^[0-9]{12}([0-9]{2})?$")  # 12/14 digits; + i
    energy_unit: Literal["kWh", "MWh", "GJ"] = "kWh"  # cjt188/mbus_heat_meter: the unit it counts heat in
    sockets: int = Field(default=2, ge=1, le=2)  # alfen only
    topic: str | None = None  # MQTT kinds: template with {site}, {name}
    interval_s: float = Field(default=10.0, gt=0)  # MQTT publish interval, simulated seconds
    energy_decimals: int = Field(default=3, ge=0, le=9)  # mqtt_tasmota "Total" resolution

    @model_validator(mode="after")
    def _coherent(self) -> DeviceConfig:
        allowed = ALLOWED_PHYSICS[self.kind]
        if self.physics.model not in allowed:
            raise ValueError(
                f"kind {self.kind} cannot meter physics {self.physics.model!r}"
                f" (one of: {', '.join(sorted(allowed))})"
            )
        if self.count > 1 and "{i" not in self.name:
            raise ValueError("count > 1 needs a name template with {i}, e.g. 'meter-{i:03d}'")
        _check_template(self.name)
        mqtt = self.kind in MQTT_KINDS
        if mqtt and (self.port != "auto" or self.rtu_bus is not None):
            raise ValueError("MQTT meters have no Modbus port or rtu_bus")
        if not mqtt and self.topic is not None:
            raise ValueError("topic is only for MQTT meters")
        if self.rtu_bus is not None and self.port != "auto":
            raise ValueError("give either port (Modbus TCP) or rtu_bus (Modbus RTU), not both")
        self._check_line(mqtt)
        return self

    def _check_line(self, mqtt: bool) -> None:
        if self.kind in LINE_ONLY_KINDS and self.line is None:
            raise ValueError(f"kind {self.kind} hangs on a shared line: give line (one of the site's lines)")
        if self.line is not None and (mqtt or self.port != "auto" or self.rtu_bus is not None):
            raise ValueError("a device on a line has no port, rtu_bus or MQTT topic")
        if self.address is not None and self.kind not in ADDRESS_DIGITS:
            raise ValueError(
                "address is a DL/T 645 or CJ/T 188 meter's; Modbus devices have a unit, M-Bus meters "
                "a unit as their primary address"
            )
        digits = ADDRESS_DIGITS.get(self.kind)
        if self.address is not None and digits is not None and len(self.address) != digits:
            raise ValueError(f"address of a {self.kind} has {digits} digits, got {self.address!r}")
        if self.energy_unit != "kWh" and self.kind not in ("cjt188_heat_meter", "mbus_heat_meter"):
            raise ValueError("energy_unit is a cjt188_heat_meter's or an mbus_heat_meter's")


def _check_template(name: str) -> None:
    """``name.format(i=...)`` works (``{x}``, ``{}`` or ``{i[0]}`` would raise at expansion)."""
    try:
        name.format(i=0)
    except (ValueError, LookupError, AttributeError, TypeError) as exc:
        raise ValueError(f"name {name!r} is not a template with only {{i}} in it ({exc})") from exc


class LineConfig(Closed):
    """A shared RS-485 line of a site, reached on a pty or behind a transparent serial server."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    serve: Literal["pty", "tcp_server"] = "tcp_server"
    port: int | Literal["auto"] = "auto"  # tcp_server only
    baudrate: int | None = Field(default=None, gt=0, description="pace answers as on the wire (bench)")
    silence_ms: float = Field(default=50.0, gt=0, description="an unclaimed buffer is dropped after this")


class SiteConfig(Closed):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    latitude: float = Field(default=ZHANGJIAKOU[0], ge=-90, le=90)
    longitude: float = Field(default=ZHANGJIAKOU[1], ge=-180, le=180)
    lines: list[LineConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _lines_declared(self) -> SiteConfig:
        names = [line.name for line in self.lines]
        if len(set(names)) != len(names):
            raise ValueError(f"line names must be unique in site {self.name}")
        for d in self.devices:
            if d.line is not None and d.line not in names:
                raise ValueError(f"{d.name}: line {d.line!r} is not a line of site {self.name} ({names})")
        return self


class ClockConfig(Closed):
    epoch: datetime.datetime = datetime.datetime(2025, 1, 15, tzinfo=datetime.UTC)
    factor: float = Field(default=1.0, gt=0)

    @property
    def epoch_s(self) -> float:
        e = self.epoch if self.epoch.tzinfo else self.epoch.replace(tzinfo=datetime.UTC)
        return e.timestamp()


class MqttConfig(Closed):
    """The broker the MQTT meters publish to, over ``connections`` shared connections.

    ``tls``: TLS to the broker; a client certificate (``cert_file`` + ``key_file``, key
    mode 0600) is the publishers' identity on a broker with an access list (``puhui broker``).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    connections: int = Field(default=1, ge=1, le=64)
    qos: Literal[0, 1] = 0
    tls: TlsSettings | None = None


class ControlConfig(Closed):
    port: int | Literal["auto"] = "auto"


class FleetConfig(Closed):
    """A whole fleet file."""

    name: str = "fleet"
    host: str = "127.0.0.1"
    clock: ClockConfig = ClockConfig()
    step_s: int = Field(default=10, ge=1, le=900)
    truth_interval_s: int = Field(default=900, ge=1)
    truth_steps: bool = Field(
        default=False,
        description="also log true cumulative energy per step (16 bytes a step and channel), "
        "for truth between any two reading times",
    )
    mqtt: MqttConfig | None = None
    control: ControlConfig | None = ControlConfig()
    sites: list[SiteConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> FleetConfig:
        if self.truth_interval_s % self.step_s:
            raise ValueError(f"truth_interval_s must be a multiple of step_s ({self.step_s})")
        specs = expand(self)
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique; repeated: {', '.join(dupes[:5])}")
        if self.mqtt is None and any(s.kind in MQTT_KINDS for s in specs):
            raise ValueError("MQTT meters need an 'mqtt:' broker section")
        _check_shared_ports(specs)
        return self


@dataclass(frozen=True)
class DeviceSpec:
    """One concrete device after ``count`` expansion."""

    site: SiteConfig
    config: DeviceConfig
    name: str
    seed: int
    port: int | None  # None = auto
    index: int
    unit: int  # unit + index on an RTU bus or a line, else the configured unit
    address: str | None = None  # DL/T 645 / CJ/T 188: address + index, 12 / 14 digits

    @property
    def kind(self) -> str:
        return self.config.kind


def expand(fleet: FleetConfig) -> list[DeviceSpec]:
    """Every device of every site, ``count`` expanded, in file order."""
    out: list[DeviceSpec] = []
    for site in fleet.sites:
        for dev in site.devices:
            base = dev.seed if dev.seed is not None else zlib.crc32(dev.name.encode())
            for i in range(dev.count):
                name = dev.name.format(i=i) if dev.count > 1 else dev.name
                port = None if dev.port == "auto" else dev.port + i
                unit = dev.unit + i if dev.rtu_bus is not None or dev.line is not None else dev.unit
                address = None
                if dev.kind in ADDRESS_DIGITS:
                    address = f"{int(dev.address or dev.unit) + i:0{ADDRESS_DIGITS[dev.kind]}d}"
                out.append(DeviceSpec(site, dev, name, base + i, port, i, unit, address))
    return out


def _check_shared_ports(specs: Sequence[DeviceSpec]) -> None:
    seen: dict[tuple[str, int | str], list[DeviceSpec]] = {}
    for s in specs:
        key: tuple[str, int | str] | None = None
        if s.port is not None:
            key = ("tcp", s.port)
        elif s.config.rtu_bus is not None:
            key = ("rtu", s.config.rtu_bus)
        elif s.config.line is not None:
            key = ("line", f"{s.site.name}/{s.config.line}")
        if key is None:
            continue
        for other in seen.setdefault(key, []):
            if _units(s) & _units(other):
                raise ValueError(f"{s.name} and {other.name} share {key[0]} {key[1]} and a unit id")
        seen[key].append(s)


def _units(s: DeviceSpec) -> set[int | str]:
    if s.address is not None:
        return {s.address}
    return {s.unit} if s.kind != "alfen" else {200, *range(1, s.config.sockets + 1)}


def _loc_path(loc: Sequence[int | str]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and loc[i - 1] == "physics" and part in PHYSICS_TAGS:
            continue  # discriminator tag pydantic inserts
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def parse_fleet(data: Any, source: str = "fleet") -> FleetConfig:
    """Validate already-loaded YAML/JSON data; raise :class:`FleetConfigError` with all errors."""
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_loc_path(err['loc'])}: {msg}")
        raise FleetConfigError(source, problems) from exc


def load_fleet(path: str | Path) -> FleetConfig:
    """Read and validate a fleet YAML file (unreadable, not UTF-8, not YAML: an error too)."""
    p = Path(path)
    data, issues = read_yaml(p)
    if issues:
        raise FleetConfigError(p.name, [f"{i.where}: {i.message}" if i.path else i.message for i in issues])
    return parse_fleet(data, p.name)
