"""From a fleet device spec to a :class:`Device`: physics, meters and register maps.

The kind table below is the explicit registry of device kinds (no scanning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from firmware_sim.cjt188 import ENERGY_UNITS as CJT188_ENERGY_UNITS
from firmware_sim.cjt188 import Cjt188HeatMeter
from firmware_sim.config import (
    DEFAULT_TOPICS,
    DeviceSpec,
    EvPhysics,
    FleetConfig,
    HeatingPhysics,
    LoadPhysics,
    PvHousePhysics,
    PvPhysics,
)
from firmware_sim.device import Device, Endpoint
from firmware_sim.dlt645_meter import MODULUS_WH as DLT645_MODULUS_WH
from firmware_sim.dlt645_meter import Dlt645Responder
from firmware_sim.line_contract import LineResponder
from firmware_sim.mbus import ENERGY_RECORDS as MBUS_ENERGY_RECORDS
from firmware_sim.mbus import MbusHeatMeter
from firmware_sim.meter import MWS_PER_WH, Meter
from firmware_sim.physics import EvModel, HeatingModel, LoadModel, PvHouseModel, PvModel
from firmware_sim.physics.noise import u01
from firmware_sim.physics.sample import PowerModel
from firmware_sim.registers import chargers, chint, eastron, heatmeter, huawei, sungrow, sunspec
from firmware_sim.registers.base import UnitMap
from firmware_sim.rtu_responder import RtuResponder

MQTT_MODULUS_WH = 1.0e9  # 1 000 000 kWh


@dataclass(frozen=True)
class KindSpec:
    modulus_wh: float
    maps: Callable[[DeviceSpec], dict[int, UnitMap]]
    quantity: str = "electric"
    per_session: bool = False


def _rated_w(spec: DeviceSpec) -> float:
    ph = spec.config.physics
    if isinstance(ph, PvPhysics | PvHousePhysics):
        return ph.kwp * 1000.0 * 1.2 + getattr(ph, "peak_w", 0.0)
    if isinstance(ph, HeatingPhysics):
        return ph.rated_kw * 1000.0 * 1.2
    if isinstance(ph, EvPhysics):
        return ph.power_limit_kw * 1000.0 * 1.2
    return ph.peak_w * 1.2


def _unit(make: Callable[[DeviceSpec], UnitMap]) -> Callable[[DeviceSpec], dict[int, UnitMap]]:
    return lambda spec: {spec.unit: make(spec)}


def _alfen_units(spec: DeviceSpec) -> dict[int, UnitMap]:
    ph = spec.config.physics
    limit = ph.power_limit_kw if isinstance(ph, EvPhysics) else 11.0
    units: dict[int, UnitMap] = {chargers.ALFEN_STATION_UNIT: chargers.AlfenStationMap(spec.config.sockets)}
    for s in range(1, spec.config.sockets + 1):
        units[s] = chargers.AlfenSocketMap(f"socket{s}", limit)
    return units


def _abb(spec: DeviceSpec) -> UnitMap:
    ph = spec.config.physics
    return chargers.AbbMap(ph.power_limit_kw if isinstance(ph, EvPhysics) else 11.0)


KINDS: dict[str, KindSpec] = {
    "sdm630": KindSpec(eastron.MODULUS_WH, _unit(lambda s: eastron.EastronMap(3))),
    "sdm120": KindSpec(eastron.MODULUS_WH, _unit(lambda s: eastron.EastronMap(1))),
    "sunspec_inverter": KindSpec(sunspec.MODULUS_WH, _unit(lambda s: sunspec.InverterMap(_rated_w(s)))),
    "sunspec_meter": KindSpec(sunspec.MODULUS_WH, _unit(lambda s: sunspec.AcMeterMap(_rated_w(s)))),
    "alfen": KindSpec(chargers.ALFEN_MODULUS_WH, _alfen_units),
    "abb": KindSpec(chargers.ABB_MODULUS_WH, _unit(_abb), per_session=True),
    "heat_meter": KindSpec(heatmeter.MODULUS_WH, _unit(lambda s: heatmeter.HeatMeterMap()), quantity="heat"),
    "dlt645_meter": KindSpec(DLT645_MODULUS_WH, lambda s: {}),
    "chint_dtsu666": KindSpec(chint.MODULUS_WH, _unit(lambda s: chint.Dtsu666Map())),
    "chint_ddsu666": KindSpec(chint.MODULUS_WH, _unit(lambda s: chint.Ddsu666Map())),
    "huawei_sun2000": KindSpec(huawei.MODULUS_WH, _unit(lambda s: huawei.Sun2000Map(_rated_w(s)))),
    "sungrow_sg": KindSpec(sungrow.MODULUS_WH, _unit(lambda s: sungrow.SungrowSgMap(_rated_w(s)))),
    # modulus for a kWh meter; a cjt188_heat_meter's is that of its energy_unit (_modulus_wh)
    "cjt188_heat_meter": KindSpec(1.0e9, lambda s: {}, quantity="heat"),
    "mbus_heat_meter": KindSpec(1.0e9, lambda s: {}, quantity="heat"),  # as cjt188_heat_meter's
    "mqtt_tasmota": KindSpec(MQTT_MODULUS_WH, lambda s: {}),
    "mqtt_plain": KindSpec(MQTT_MODULUS_WH, lambda s: {}),
}


def make_model(spec: DeviceSpec, seed: int, quantity: str = "electric") -> PowerModel:
    """The physics model of a device (or of one socket, with its own seed)."""
    ph, site = spec.config.physics, spec.site
    if isinstance(ph, PvPhysics):
        return PvModel(ph.kwp, site.latitude, site.longitude, ph.tilt, ph.cloudiness, seed=seed)
    if isinstance(ph, PvHousePhysics):
        pv = PvModel(ph.kwp, site.latitude, site.longitude, ph.tilt, ph.cloudiness, seed=seed)
        return PvHouseModel(pv, LoadModel(ph.base_w, ph.peak_w, seed=seed))
    if isinstance(ph, HeatingPhysics):
        return HeatingModel(
            ph.area_m2,
            ph.loss_w_m2k,
            ph.setpoint_c,
            heater=ph.heater,
            rated_kw=ph.rated_kw,
            output="heat" if quantity == "heat" else "electric",
            seed=seed,
        )
    if isinstance(ph, EvPhysics):
        return EvModel(ph.power_limit_kw, ph.arrivals_per_day, ph.mean_energy_kwh, seed=seed)
    assert isinstance(ph, LoadPhysics)
    return LoadModel(ph.base_w, ph.peak_w, seed=seed)


def initial_wh(spec: DeviceSpec) -> float:
    """Starting counter: configured, or 1 000-10 000 kWh drawn from the seed (never 0,
    which SunSpec clients read as "not implemented")."""
    if spec.config.initial_kwh is not None:
        return spec.config.initial_kwh * 1000.0
    return round(1_000_000.0 + 9_000_000.0 * u01(spec.seed, 1, 0))


def build_device(spec: DeviceSpec, fleet: FleetConfig, start: float) -> Device:
    """A device whose meters start at clock time ``start`` (aligned to the step grid)."""
    kind = KINDS[spec.kind]
    channels = [f"socket{s}" for s in range(1, spec.config.sockets + 1)] if spec.kind == "alfen" else ["main"]
    meters = {}
    for i, ch in enumerate(channels):
        seed = spec.seed * 16 + i
        first = 0.0 if kind.per_session else initial_wh(spec) + 1000.0 * i
        meters[ch] = Meter(
            make_model(spec, seed, kind.quantity),
            start=start,
            step_s=fleet.step_s,
            interval_s=fleet.truth_interval_s,
            initial_wh=first,
            modulus_wh=_modulus_wh(spec, kind),
            quantity=kind.quantity,
            channel=ch,
            per_session=kind.per_session,
            log_steps=fleet.truth_steps,
        )
    units = kind.maps(spec)
    return Device(
        name=spec.name,
        kind=spec.kind,
        site=spec.site.name,
        seed=spec.seed,
        serial=10_000_000 + spec.seed % 90_000_000,
        meters=meters,
        units=units,
        endpoint=_endpoint(spec, fleet, units),
    )


def _modulus_wh(spec: DeviceSpec, kind: KindSpec) -> float:
    """Where the device's counter rolls over: a CJ/T 188 meter shows XXXXXX.XX of its unit,
    an M-Bus meter 10^8 of its counting step (8 BCD digits; its int32 counters alike)."""
    if spec.kind == "mbus_heat_meter":
        return MBUS_ENERGY_RECORDS[spec.config.energy_unit][2] * 10**8 / MWS_PER_WH
    if spec.kind != "cjt188_heat_meter":
        return kind.modulus_wh
    _code, mws_per_step = CJT188_ENERGY_UNITS[spec.config.energy_unit]
    return mws_per_step * 10**8 / MWS_PER_WH


def _dlt645(device: Device, spec: DeviceSpec) -> LineResponder:
    assert spec.address is not None  # expand() gives every DL/T 645 meter its address
    return Dlt645Responder(device, spec.address)


def _cjt188(device: Device, spec: DeviceSpec) -> LineResponder:
    assert spec.address is not None  # expand() gives every CJ/T 188 meter its address
    return Cjt188HeatMeter(device, spec.address, energy_unit=spec.config.energy_unit)


def _mbus(device: Device, spec: DeviceSpec) -> LineResponder:
    # primary address: the device's unit (+ i); identification number: its serial (8 digits)
    return MbusHeatMeter(device, spec.unit, f"{device.serial:08d}", energy_unit=spec.config.energy_unit)


# Kind -> how a device of that kind answers on a shared line (other kinds: Modbus RTU).
LINE_RESPONDERS: dict[str, Callable[[Device, DeviceSpec], LineResponder]] = {
    "dlt645_meter": _dlt645,
    "cjt188_heat_meter": _cjt188,
    "mbus_heat_meter": _mbus,
}


def line_responder(device: Device, spec: DeviceSpec) -> LineResponder:
    """The responder of a device on a shared line, by its kind."""
    make = LINE_RESPONDERS.get(spec.kind)
    return make(device, spec) if make is not None else RtuResponder(device)


def _endpoint(spec: DeviceSpec, fleet: FleetConfig, units: dict[int, UnitMap]) -> Endpoint:
    if spec.config.line is not None:
        unit = None if spec.address is not None else spec.unit
        return Endpoint("line", unit=unit, line=spec.config.line, address=spec.address)
    if spec.kind in DEFAULT_TOPICS:
        template = spec.config.topic or DEFAULT_TOPICS[spec.kind]
        return Endpoint("mqtt", topic=template.format(site=spec.site.name, name=spec.name))
    unit = spec.unit if spec.kind != "alfen" else chargers.ALFEN_STATION_UNIT
    transport = "rtu" if spec.config.rtu_bus is not None else "tcp"
    host = fleet.host if transport == "tcp" else None
    return Endpoint(transport, host=host, port=spec.port, unit=unit, units=tuple(sorted(units)))
