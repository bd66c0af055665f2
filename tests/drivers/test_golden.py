"""Golden test cases per driver: ``drivers/<driver>/testcases/<case>/`` (Telegraf's habit).

Each case folder holds one meter entry exactly as an installer writes it in a site config
(``config.yaml``, validated by :func:`gateway.config.parse_site`), what the device sends,
and ``expected.yaml``: the samples the driver must produce.

- Modbus TCP: ``registers.yaml`` is the device's register image. It is served by a small
  pymodbus server on 127.0.0.1 (free port), the source is built as the gateway builds it
  (:func:`gateway.runtime.modbus_source`: plain or SunSpec), polled once, and its samples
  compared with ``expected.yaml``.
- Modbus RTU: the same ``registers.yaml``, served by a pymodbus RTU server on one end of
  a pseudo-terminal pair (:func:`firmware_sim.pty_pair`, the simulator's serial bus); the
  meter's bus (``config.yaml`` holds the ``serial_buses`` entry and the meter) is opened on
  the other end by the gateway's :class:`SerialBusOwner`, and the source is built and
  polled as for TCP.
- MQTT: ``payload.json`` or ``payload-NN.json`` (raw bytes, published in name order) go
  through the session's private Mosquitto to an :class:`MqttSubscriber` configured from
  ``config.yaml``; what it hands to its sink, and its health counters, are compared.

Case folders are found by a sorted glob of the ``testcases`` folder next to each driver;
a folder missing a file fails. Failures name the case folder and every sample that
differs. A case showing a known driver bug goes into ``KNOWN_BUGS`` (strict xfail).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import aiomqtt
import pytest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

import drivers.modbus_rtu.driver
import drivers.modbus_tcp.driver
import drivers.mqtt.driver
from common.clock import ManualClock
from common.yaml_models import issues_from, read_yaml
from drivers.contract import Invalid, InvalidReason, Sample
from drivers.modbus.profiles import load_profiles
from drivers.modbus.source import SAMPLE_SOURCE, ModbusSource
from drivers.modbus.sunspec_source import SunSpecSource
from drivers.modbus_rtu.config import SerialBus
from drivers.modbus_rtu.driver import SerialBusOwner
from drivers.mqtt import MqttSubscriber
from drivers.registry import CONNECTIONS
from firmware_sim import pty_pair
from gateway.config import MeterBase, ModbusRtuMeter, ModbusTcpMeter, MqttMeter, SiteConfig, parse_site
from gateway.errors import ConfigError
from gateway.runtime import modbus_source
from testbed.servers import LOOPBACK, PrivateMosquitto

REPO = Path(__file__).resolve().parents[2]
MODBUS_TCP_CASES = Path(drivers.modbus_tcp.driver.__file__).resolve().parent / "testcases"
MODBUS_RTU_CASES = Path(drivers.modbus_rtu.driver.__file__).resolve().parent / "testcases"
MQTT_CASES = Path(drivers.mqtt.driver.__file__).resolve().parent / "testcases"
# DL/T 645 cases (frames, not registers) run in tests/drivers/test_dlt645_golden.py
DLT645_CASES = REPO / "drivers" / "dlt645" / "testcases"
# CJ/T 188 cases (frames) run in tests/drivers/test_cjt188_golden.py
CJT188_CASES = REPO / "drivers" / "cjt188" / "testcases"
# M-Bus cases (frames) run in tests/drivers/test_mbus_golden.py
MBUS_CASES = REPO / "drivers" / "mbus" / "testcases"
CASES = {
    "modbus_tcp": MODBUS_TCP_CASES,
    "modbus_rtu": MODBUS_RTU_CASES,
    "mqtt": MQTT_CASES,
    "dlt645": DLT645_CASES,
    "cjt188": CJT188_CASES,
    "mbus": MBUS_CASES,
}
PROFILES = load_profiles()
POLL_CLOCK = 1_736_899_200.0  # 2025-01-15T00:00:00Z: the Modbus poll's clock time
DEADLINE_S = 10.0
KNOWN_BUGS: dict[str, str] = {}  # "<driver>/<case>" -> reason (a driver bug this case shows)

Model = TypeVar("Model", bound=BaseModel)
Word = Annotated[StrictInt, Field(ge=0, le=0xFFFF)]


def case_folders(root: Path) -> list[Path]:
    """The case folders of a driver's ``testcases`` folder, sorted by name."""
    return sorted(p for p in root.glob("*") if p.is_dir())


def _cases(root: Path) -> list[Any]:
    params = []
    for folder in case_folders(root):
        reason = KNOWN_BUGS.get(f"{root.parent.name}/{folder.name}")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(folder, id=folder.name, marks=marks))
    return params


# -- case files -------------------------------------------------------------------------------


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterBlock(_Closed):
    """Consecutive registers from ``start``: ``words`` (a word or a list per field), or
    ``count`` copies of ``fill``."""

    start: Annotated[StrictInt, Field(ge=0, le=0xFFFF)]
    words: tuple[Word | tuple[Word, ...], ...] = ()
    count: Annotated[StrictInt, Field(ge=1)] | None = None
    fill: Word | None = None

    @model_validator(mode="after")
    def _one_form(self) -> RegisterBlock:
        if bool(self.words) == (self.count is not None or self.fill is not None):
            raise ValueError("give either words, or count and fill")
        if not self.words and (self.count is None or self.fill is None):
            raise ValueError("count and fill go together")
        if self.start + len(self.registers) > 0x10000:
            raise ValueError("block runs past register 65535")
        return self

    @property
    def registers(self) -> list[int]:
        if self.fill is not None and self.count is not None:
            return [self.fill] * self.count
        return [w for item in self.words for w in (item if isinstance(item, tuple) else (item,))]


class BitBlock(_Closed):
    """Consecutive coils or discrete inputs from ``start``, 0 or 1 each."""

    start: Annotated[StrictInt, Field(ge=0, le=0xFFFF)]
    bits: tuple[Annotated[StrictInt, Field(ge=0, le=1)], ...] = Field(min_length=1)


class RegisterImage(_Closed):
    """What a Modbus device serves: its unit id, its holding (FC03) / input (FC04) tables and
    its coils (FC01) / discrete inputs (FC02)."""

    unit: Annotated[StrictInt, Field(ge=0, le=255)]
    holding: tuple[RegisterBlock, ...] = ()
    input: tuple[RegisterBlock, ...] = ()
    coils: tuple[BitBlock, ...] = ()
    discrete: tuple[BitBlock, ...] = ()


class Tolerance(_Closed):
    """Relative tolerance of numeric values (0: exact)."""

    rel: float = Field(ge=0, lt=0.01)


class ExpectedSample(_Closed):
    """One sample: a value, or an invalid one with its reason; unit and kind from the config."""

    quantity: str
    value: float | None = None
    invalid: InvalidReason | None = None
    unit: str
    kind: Literal["counter", "gauge", "info", "status"] | None = None
    per_session: bool | None = None
    time: AwareDatetime | None = None  # MQTT: the sample's time
    source: str | None = None  # MQTT: where the time came from

    @model_validator(mode="after")
    def _value_or_invalid(self) -> ExpectedSample:
        if (self.value is None) == (self.invalid is None):
            raise ValueError("give either value or invalid")
        return self


class ModbusExpected(_Closed):
    tolerance: Tolerance
    samples: tuple[ExpectedSample, ...]


class MqttHealthCounts(_Closed):
    messages: int
    malformed: int
    skewed: int


class MqttExpected(_Closed):
    topic: str = Field(min_length=1, description="where the device publishes")
    received_at: AwareDatetime = Field(description="gateway clock when the messages arrive")
    tolerance: Tolerance
    samples: tuple[ExpectedSample, ...]
    health: MqttHealthCounts


def _label(case: Path) -> str:
    return str(case.relative_to(REPO))


def _read(case: Path, name: str) -> Any:
    path = case / name
    if not path.is_file():
        pytest.fail(f"{_label(case)}: missing {name}", pytrace=False)
    data, issues = read_yaml(path)
    if issues:
        pytest.fail("\n".join(i.render(f"{_label(case)}/{name}") for i in issues), pytrace=False)
    return data


def _load(case: Path, name: str, model: type[Model]) -> Model:
    data = _read(case, name)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [i.render(f"{_label(case)}/{name}") for i in issues_from(exc, model)]
    pytest.fail("\n".join(problems), pytrace=False)  # outside the except: no chained traceback


def _site(case: Path, data: dict[str, Any], hint: str = "") -> SiteConfig:
    """``data`` (meters, serial buses) as a site config, through the site config model."""
    site = {"gateway": {"id": "golden-gw", "site": "golden"}, **data}
    try:
        return parse_site(site, f"{_label(case)}/config.yaml", PROFILES)
    except ConfigError as exc:
        error = exc
    pytest.fail(f"{error}{hint}", pytrace=False)


def _meter(case: Path) -> MeterBase:
    """config.yaml as the one meter of a site."""
    entry = _read(case, "config.yaml")
    return _site(
        case, {"meters": [entry]}, "\n(paths are inside a site config: meters[0] is this file)"
    ).meters[0]


def _rtu_meter(case: Path) -> tuple[SerialBus, ModbusRtuMeter]:
    """config.yaml (one ``serial_buses`` entry and one meter on it) as a site."""
    data = _read(case, "config.yaml")
    if not isinstance(data, dict) or set(data) != {"serial_buses", "meters"}:
        pytest.fail(f"{_label(case)}/config.yaml: expected the keys serial_buses and meters", pytrace=False)
    site = _site(case, data)
    if len(site.serial_buses) != 1 or len(site.meters) != 1 or not isinstance(site.meters[0], ModbusRtuMeter):
        pytest.fail(
            f"{_label(case)}/config.yaml: expected one serial bus and one modbus_rtu meter", pytrace=False
        )
    return site.serial_buses[0], site.meters[0]


# -- comparison -------------------------------------------------------------------------------


def _show(value: float | Invalid | None) -> str:
    return "no sample" if value is None else str(value) if isinstance(value, Invalid) else repr(value)


def _wanted(want: ExpectedSample) -> str:
    return f"invalid ({want.invalid})" if want.invalid is not None else repr(want.value)


def _value_problem(want: ExpectedSample, got: float | Invalid, tolerance: Tolerance) -> str | None:
    if want.invalid is not None:
        if isinstance(got, Invalid) and got.reason == want.invalid:
            return None
        return f"expected invalid ({want.invalid}), got {_show(got)}"
    assert want.value is not None
    if not isinstance(got, Invalid) and math.isclose(got, want.value, rel_tol=tolerance.rel, abs_tol=0.0):
        return None
    return f"expected {want.value!r} (rel {tolerance.rel:g}), got {_show(got)}"


def _attribute_problems(want: ExpectedSample, actual: dict[str, object]) -> list[str]:
    """Differences in unit, kind, per_session, time and source (those ``want`` states)."""
    problems = []
    stated = want.model_dump(include={"unit", "kind", "per_session", "time", "source"}, exclude_none=True)
    for key, expected in stated.items():
        got = actual.get(key)
        if isinstance(expected, datetime.datetime):
            expected = expected.timestamp()
        if got != expected:
            problems.append(f"{key}: expected {expected!r}, got {got!r}")
    return problems


def _fail_if(case: Path, problems: Sequence[str]) -> None:
    if problems:
        lines = "\n  ".join(problems)
        pytest.fail(f"golden case {_label(case)}: {len(problems)} difference(s)\n  {lines}", pytrace=False)


# -- Modbus TCP -------------------------------------------------------------------------------


def _sim_table(blocks: Sequence[RegisterBlock]) -> list[SimData]:
    if not blocks:  # pymodbus cannot take an empty table: one invalid register instead
        return [SimData(0, datatype=DataType.INVALID)]
    # SimData addresses are protocol addresses, as in requests (no 4xxxx / +1 offset).
    return [SimData(b.start, values=b.registers, datatype=DataType.REGISTERS, readonly=True) for b in blocks]


def _bit_table(blocks: Sequence[BitBlock]) -> list[SimData]:
    if not blocks:
        return [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    return [SimData(b.start, values=[bool(x) for x in b.bits], datatype=DataType.BITS) for b in blocks]


def _sim_device(image: RegisterImage) -> SimDevice:
    """The device serving ``image``: register addresses outside it answer "illegal data
    address" (bits: pymodbus keeps them 16 to a word, so whole words of them are valid)."""
    return SimDevice(
        image.unit,
        simdata=(
            _bit_table(image.coils), _bit_table(image.discrete),
            _sim_table(image.holding), _sim_table(image.input),
        ),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def serve_image(image: RegisterImage) -> AsyncIterator[int]:
    """Serve a static register image on 127.0.0.1; yields the bound port. Other unit ids get
    an exception reply (pymodbus answers code 4 and logs the unknown unit)."""
    server = ModbusTcpServer([_sim_device(image)], address=(LOOPBACK, 0))
    await server.serve_forever(background=True)
    try:
        sockets = getattr(server.transport, "sockets", None)  # an asyncio.Server once serving
        assert sockets, "the pymodbus server is not listening"
        yield int(sockets[0].getsockname()[1])
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


def _modbus_problems(
    source: ModbusSource | SunSpecSource, samples: Sequence[Sample], expected: ModbusExpected, now: float
) -> list[str]:
    fields = {f.quantity: f for f in source.fields if f.quantity}
    got = {s.quantity: s for s in samples}
    problems = [f"{q}: sampled twice" for q in got if sum(s.quantity == q for s in samples) > 1]
    for want in expected.samples:
        sample, field = got.pop(want.quantity, None), fields.get(want.quantity)
        if sample is None or field is None:
            problems.append(f"{want.quantity}: expected {_wanted(want)}, got no sample")
            continue
        value_problem = _value_problem(want, sample.value, expected.tolerance)
        actual = {"unit": field.unit, "kind": field.kind, "per_session": field.per_session}
        found = [value_problem] if value_problem else []
        found += _attribute_problems(want, actual)
        if (sample.meter, sample.time, sample.source) != (source.meter, now, SAMPLE_SOURCE):
            found.append(f"meter/time/source: got {sample.meter!r}, {sample.time!r}, {sample.source!r}")
        problems += [f"{want.quantity}: {p}" for p in found]
    problems += [f"{q}: unexpected sample {_show(s.value)}" for q, s in got.items()]
    return problems


@pytest.mark.integration
@pytest.mark.parametrize("case", _cases(MODBUS_TCP_CASES))
async def test_modbus_tcp_golden_case(case: Path) -> None:
    meter = _meter(case)
    image = _load(case, "registers.yaml", RegisterImage)
    expected = _load(case, "expected.yaml", ModbusExpected)
    assert isinstance(meter, ModbusTcpMeter), f"{_label(case)}: config.yaml is not a modbus_tcp meter"
    clock = ManualClock(POLL_CLOCK)
    async with serve_image(image) as port:
        # No retries: a golden case fails on the first bad answer (and a retry's backoff
        # would wait on the manual clock).
        connection = meter.connection.model_copy(
            update={"host": LOOPBACK, "port": port, "timeout_s": 2.0, "retries": 0}
        )
        local = meter.model_copy(update={"connection": connection})
        source = modbus_source(local, PROFILES, clock, {})
        assert isinstance(source, ModbusSource | SunSpecSource)
        async with source, asyncio.timeout(DEADLINE_S):
            result = await source.poll()
    if not result.ok:
        pytest.fail(f"golden case {_label(case)}: poll failed: {result.error}", pytrace=False)
    _fail_if(case, _modbus_problems(source, result.samples, expected, clock.now()))


# -- Modbus RTU -------------------------------------------------------------------------------


def _on_pty(bus: SerialBus, path: str) -> SerialBus:
    """``bus`` moved to the pseudo-terminal ``path``. A pseudo-terminal carries bytes, not
    line signals: baud rate and stop bits do nothing, and Linux refuses parity on one
    (EINVAL), so both ends run it without; the case's settings are still validated."""
    return bus.model_copy(update={"port": path, "parity": "N"})


@contextlib.asynccontextmanager
async def serve_image_rtu(image: RegisterImage, bus: SerialBus) -> AsyncIterator[SerialBus]:
    """Serve a static register image over Modbus RTU on one end of a pseudo-terminal pair;
    yields ``bus`` moved to the other end. Other unit ids get an exception reply (pymodbus
    answers code 4 where a real line would stay silent)."""
    async with pty_pair() as (device_end, gateway_end):
        line = _on_pty(bus, device_end)
        server = ModbusSerialServer(
            [_sim_device(image)], framer=FramerType.RTU, port=line.port, baudrate=line.baudrate,
            parity=line.parity, stopbits=line.stopbits, bytesize=line.bytesize,
        )  # fmt: skip
        await server.serve_forever(background=True)
        try:
            yield _on_pty(bus, gateway_end)
        finally:
            await server.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.integration
@pytest.mark.parametrize("case", _cases(MODBUS_RTU_CASES))
async def test_modbus_rtu_golden_case(case: Path) -> None:
    bus, meter = _rtu_meter(case)
    image = _load(case, "registers.yaml", RegisterImage)
    expected = _load(case, "expected.yaml", ModbusExpected)
    clock = ManualClock(POLL_CLOCK)
    async with serve_image_rtu(image, bus) as local, SerialBusOwner(local) as owner:
        source = modbus_source(meter, PROFILES, clock, {bus.id: owner})
        assert isinstance(source, ModbusSource | SunSpecSource)
        # No retries, as for TCP: a golden case fails on the first bad answer (and a retry's
        # backoff would wait on the manual clock).
        source.policy = source.policy.model_copy(update={"retries": 0})
        async with source, asyncio.timeout(DEADLINE_S):
            result = await source.poll()
    if not result.ok:
        pytest.fail(f"golden case {_label(case)}: poll failed: {result.error}", pytrace=False)
    _fail_if(case, _modbus_problems(source, result.samples, expected, clock.now()))


# -- MQTT -------------------------------------------------------------------------------------


def _payloads(case: Path) -> list[bytes]:
    files = sorted(case.glob("payload*.json"))
    if not files:
        pytest.fail(f"{_label(case)}: missing payload.json (or payload-NN.json)", pytrace=False)
    return [f.read_bytes() for f in files]


def _mqtt_problems(meter: MqttMeter, samples: Sequence[Sample], expected: MqttExpected) -> list[str]:
    problems = []
    for n, want in enumerate(expected.samples):
        got = samples[n] if n < len(samples) else None
        where = f"sample {n} ({want.quantity})"
        if got is None:
            problems.append(f"{where}: expected {_wanted(want)}, got no sample")
            continue
        if (got.meter, got.quantity) != (meter.id, want.quantity):
            problems.append(f"{where}: got {got.meter}/{got.quantity} = {_show(got.value)}")
            continue
        field = meter.source.fields[got.quantity]
        value_problem = _value_problem(want, got.value, expected.tolerance)
        actual = {"unit": field.unit, "kind": field.kind, "time": got.time, "source": got.source}
        found = [value_problem] if value_problem else []
        found += _attribute_problems(want, actual)
        problems += [f"{where}: {p}" for p in found]
    extra = samples[len(expected.samples) :]
    problems += [f"sample {len(expected.samples) + i}: unexpected {s}" for i, s in enumerate(extra)]
    return problems


@pytest.mark.integration
@pytest.mark.parametrize("case", _cases(MQTT_CASES))
async def test_mqtt_golden_case(case: Path, mosquitto: PrivateMosquitto) -> None:
    meter = _meter(case)
    payloads = _payloads(case)
    expected = _load(case, "expected.yaml", MqttExpected)
    assert isinstance(meter, MqttMeter), f"{_label(case)}: config.yaml is not an mqtt meter"
    if not aiomqtt.Topic(expected.topic).matches(meter.source.topic):
        pytest.fail(f"{_label(case)}: topic {expected.topic!r} does not match {meter.source.topic!r}")
    connection = meter.connection.model_copy(
        update={"host": mosquitto.host, "port": mosquitto.port, "username": None, "password_file": None}
    )
    clock = ManualClock(expected.received_at.timestamp())
    samples: list[Sample] = []
    subscriber = MqttSubscriber(connection, [(meter.id, meter.source)], samples.extend, clock)
    async with (
        subscriber,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher,
        asyncio.timeout(DEADLINE_S),
    ):
        await subscriber.wait_until(lambda health: health[meter.id].connected)
        for payload in payloads:
            await publisher.publish(expected.topic, payload, qos=1)
        await subscriber.wait_until(lambda health: health[meter.id].messages >= len(payloads))
    health = subscriber.health[meter.id]
    counts = {"messages": health.messages, "malformed": health.malformed, "skewed": health.skewed}
    problems = [
        f"health.{key}: expected {want}, got {counts[key]} (last error: {health.last_error})"
        for key, want in expected.health.model_dump().items()
        if counts[key] != want
    ]
    _fail_if(case, _mqtt_problems(meter, samples, expected) + problems)


# -- the case folders themselves --------------------------------------------------------------


@pytest.mark.parametrize("driver", sorted(CONNECTIONS))
def test_every_driver_has_golden_cases(driver: str) -> None:
    """Every registered driver has a runner here and case folders: an empty or missing
    testcases folder would silently parametrize to nothing."""
    root = CASES.get(driver)
    assert root is not None, f"driver {driver!r} has no golden case runner in this module"
    assert case_folders(root), f"no case folders in {root.relative_to(REPO)}"
    strays = [p.name for p in root.iterdir() if not p.is_dir()]
    assert not strays, f"{root.relative_to(REPO)}: only case folders belong here, found {strays}"
