"""Gateway site configs for a running firmware_sim fleet (demo, end-to-end tests).

:func:`site_for` maps every simulated device of one fleet site to the meter an installer
would configure for it: the shipped profile (Modbus) or driver (DL/T 645, CJ/T 188) of its
kind, its endpoint (TCP port, RTU pseudo-terminal, MQTT topic, or a shared RS-485 line: the
fleet's line becomes a ``lines:`` entry, its simulated transparent serial server or pty),
its scenario from its physics, and the quantities that count.
The result is plain YAML-ready data; the caller adds the ``evidence`` and ``uplink``
sections and validates it with :func:`gateway.config.parse_site` like any file.

Main meters of a whole site (``load`` physics) are left out: they measure consumption that
no methodology credits.
"""

from __future__ import annotations

from typing import Any

from firmware_sim import Fleet
from firmware_sim.config import DEFAULT_TOPICS, MQTT_KINDS, DeviceSpec, FleetConfig, expand
from firmware_sim.device import Device

SCENARIO = {"heating": "clean_heating", "pv": "pv", "pv_house": "pv", "ev": "ev_charging"}
PROFILE = {
    "sdm630": "sdm630",
    "sdm120": "sdm120",
    "sunspec_inverter": "sunspec",
    "sunspec_meter": "sunspec",
    "heat_meter": "heat-meter-converter",
    "alfen": "alfen-socket",
    "abb": "abb-terra-ac",
}
COUNTS = {
    "sdm630": ["energy_import"],
    "sdm120": ["energy_import"],
    "sunspec_inverter": ["energy_generated"],
    "sunspec_meter": ["energy_import", "energy_export"],
    "heat_meter": ["heat_energy"],
    "alfen": ["energy_delivered"],
    "abb": ["session_energy"],
    "dlt645_meter": ["energy_import"],
    "cjt188_heat_meter": ["heat_energy"],
    "mbus_heat_meter": ["heat_energy"],
}
HEAT_KINDS = frozenset({"heat_meter", "cjt188_heat_meter", "mbus_heat_meter"})
DLT645_READ = ["energy_import", "power"]  # the counter that counts, and the gauge for its stats
LINE_BAUDRATE = 9600  # the gateway's view of a simulated line that does not pace (fleet: no baudrate)


def _rated_kw(spec: DeviceSpec) -> float:
    ph = spec.config.physics
    for attr in ("rated_kw", "power_limit_kw", "kwp"):
        value = getattr(ph, attr, None)
        if value:  # a heat pump delivers up to COP x its electrical rating as heat
            return float(value) * (4.0 if attr == "rated_kw" and spec.kind in HEAT_KINDS else 1.0)
    return 30.0


def _meter_class(kind: str) -> str:
    heat = dict.fromkeys(HEAT_KINDS, "heat_2")
    return {**heat, "alfen": "B", "abb": "B"}.get(kind, "1")


def site_for(
    fleet: Fleet,
    site: str,
    gateway_id: str,
    *,
    interval_minutes: int = 15,
    poll_s: float = 60.0,
    fast_poll_s: float | None = None,
    timeout_s: float = 2.0,
    mqtt: tuple[str, int] | None = None,
    mqtt_tls: dict[str, str] | None = None,
    grace_s: float | None = None,
    line_timeout_s: float | None = None,
) -> dict[str, Any]:
    """The site config (as data) of fleet site ``site``, for gateway ``gateway_id``
    (``grace_s``: how long intervals stay open after their end; default min(30, 2 x poll);
    ``mqtt_tls``: the MQTT meters' broker connection ``tls`` settings, plain TCP if None;
    ``line_timeout_s``: per request on a shared line, default ``timeout_s``)."""
    meters: list[dict[str, Any]] = []
    buses: dict[str, str] = {}
    lines: dict[str, dict[str, Any]] = {}
    specs = {s.name: s for s in expand(fleet.config)}
    for name, dev in fleet.devices.items():
        spec = specs[name]
        if spec.site.name != site:
            continue
        scenario = SCENARIO.get(spec.config.physics.model)
        if scenario is None:
            continue
        kind = spec.kind
        base = {
            "scenario": scenario,
            "nameplate": {"rated_power_kw": _rated_kw(spec), "meter_class": _meter_class(kind)},
        }
        if kind in ("mqtt_plain", "mqtt_tasmota"):
            if mqtt is None:
                raise ValueError(f"{name}: an MQTT meter needs the broker (mqtt=(host, port))")
            mqtt_meter = _mqtt_meter(dev, spec, mqtt, mqtt_tls)
            meters.append({"id": name, "driver": "mqtt", **base, **mqtt_meter, "counts": ["energy"]})
            continue
        ep = dev.endpoint
        poll = {"fast": fast_poll_s or poll_s, "slow": poll_s}
        if ep.transport == "line":
            line = _line_entry(lines, dev, spec, line_timeout_s or timeout_s)
            meters.append({"id": name, **_line_meter(dev, spec, line, poll), **base})
            continue
        if ep.rtu_path is not None:
            bus = buses.setdefault(ep.rtu_path, f"bus{len(buses) + 1}")
            connection: dict[str, Any] = {"bus": bus}
            driver = "modbus_rtu"
        else:
            connection = {"host": ep.host or "127.0.0.1", "port": ep.port, "timeout_s": timeout_s}
            driver = "modbus_tcp"
        units = [u for u in ep.units if u != 200] if kind == "alfen" else [ep.unit or 1]
        for unit in units:
            meter_id = f"{name}-s{unit}" if kind == "alfen" else name
            meters.append({
                "id": meter_id, "driver": driver, "connection": connection, "unit_id": unit,
                "profile": PROFILE[kind], "counts": COUNTS[kind], "poll": poll, **base,
            })  # fmt: skip
    if not meters:
        raise ValueError(f"fleet site {site!r} has no creditable devices")
    data: dict[str, Any] = {
        "gateway": {"id": gateway_id, "site": site},
        "interval_minutes": interval_minutes,
        "grace_seconds": min(30.0, 2 * poll_s) if grace_s is None else grace_s,
        "serial_buses": [
            {"id": bus, "port": path, "baudrate": 115200, "inter_frame_delay_ms": 1}
            for path, bus in buses.items()
        ],
        "meters": meters,
    }
    if lines:
        data["lines"] = list(lines.values())
    return data


def _line_entry(
    lines: dict[str, dict[str, Any]], dev: Device, spec: DeviceSpec, timeout_s: float
) -> dict[str, Any]:
    """The ``lines:`` entry of the fleet line ``dev`` hangs on (added once): its simulated
    transparent serial server, or its pseudo-terminal as a local serial port."""
    ep = dev.endpoint
    assert ep.line is not None  # a device on a line knows its line's name
    if ep.line not in lines:
        fleet_line = next(line for line in spec.site.lines if line.name == ep.line)
        where: dict[str, Any] = (
            {"kind": "serial", "port": ep.rtu_path}
            if ep.rtu_path is not None
            else {"kind": "tcp_server", "host": ep.host or "127.0.0.1", "port": ep.port}
        )
        lines[ep.line] = {
            "id": ep.line, **where, "baudrate": fleet_line.baudrate or LINE_BAUDRATE, "parity": "E",
            "timeout_s": timeout_s, "inter_frame_delay_ms": 1,
        }  # fmt: skip
    return lines[ep.line]


def _line_meter(
    dev: Device, spec: DeviceSpec, line_entry: dict[str, Any], poll: dict[str, float]
) -> dict[str, Any]:
    """A meter on a shared line: DL/T 645, CJ/T 188 and M-Bus (each request timed like the
    line's), or Modbus RTU by its unit id."""
    ep, line = dev.endpoint, line_entry["id"]
    if spec.kind == "dlt645_meter":
        return {
            "driver": "dlt645", "connection": {"line": line, "address": ep.address},
            "read": list(DLT645_READ), "counts": COUNTS[spec.kind], "poll": {"fast": poll["fast"]},
        }  # fmt: skip
    if spec.kind == "cjt188_heat_meter":
        return {
            "driver": "cjt188", "connection": {"line": line, "address": ep.address},
            "energy_unit": spec.config.energy_unit, "counts": COUNTS[spec.kind], "poll_s": poll["fast"],
            "policy": {"timeout_s": line_entry["timeout_s"]},
        }  # fmt: skip
    if spec.kind == "mbus_heat_meter":  # its primary address is the device's unit
        return {
            "driver": "mbus", "connection": {"line": line, "address": ep.unit}, "counts": COUNTS[spec.kind],
            "poll_s": poll["fast"], "policy": {"timeout_s": line_entry["timeout_s"]},
        }  # fmt: skip
    return {
        "driver": "modbus_rtu", "connection": {"line": line}, "unit_id": ep.unit or 1,
        "profile": PROFILE[spec.kind], "counts": COUNTS[spec.kind], "poll": poll,
    }  # fmt: skip


def mqtt_meter_topics(config: FleetConfig) -> list[tuple[str, str]]:
    """(site, topic) of every MQTT meter :func:`site_for` configures, from the fleet config
    alone (before any device runs): what a broker's access list must let through."""
    topics = []
    for spec in expand(config):
        if spec.kind in MQTT_KINDS and spec.config.physics.model in SCENARIO:
            template = spec.config.topic or DEFAULT_TOPICS[spec.kind]  # as firmware_sim.build does
            topics.append((spec.site.name, template.format(site=spec.site.name, name=spec.name)))
    return topics


def _mqtt_meter(
    dev: Device, spec: DeviceSpec, broker: tuple[str, int], tls: dict[str, str] | None
) -> dict[str, Any]:
    topic = dev.endpoint.topic
    if spec.kind == "mqtt_tasmota":  # "Time" is whole seconds, local: on a fast clock, receipt time
        fields = {
            "energy": {"path": "ENERGY.Total", "unit": "kWh", "kind": "counter"},
            "power": {"path": "ENERGY.Power", "unit": "W"},
        }
        source: dict[str, Any] = {"topic": topic, "fields": fields}
    else:
        fields = {
            "energy": {"path": "energy_kwh", "unit": "kWh", "kind": "counter"},
            "power": {"path": "power_w", "unit": "W"},
        }
        source = {"topic": topic, "fields": fields, "time": {"path": "ts", "format": "epoch_s"}}
    source["expected_period_s"] = float(spec.config.interval_s)
    connection: dict[str, Any] = {"host": broker[0], "port": broker[1]}
    if tls is not None:
        connection["tls"] = dict(tls)
    return {"connection": connection, "source": source}
