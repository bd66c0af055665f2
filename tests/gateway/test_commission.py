"""Commissioning tools: probe, scan and ``check --live`` against firmware_sim.

Real tier: simulated meters over real TCP on 127.0.0.1 and Modbus RTU over the
simulator's pty pair, the session Mosquitto for MQTT meters, and ``python -m puhui``
as a subprocess for exit codes and error lines. Fast tier: the nameplate warnings.
"""

from __future__ import annotations

import asyncio
import copy
import math
import socket
import struct
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.clock import ManualClock, SystemClock
from drivers.contract import Invalid
from drivers.modbus.decode import ByteOrder, RegisterType, probe
from drivers.modbus.profiles import load_profiles
from firmware_sim import Fleet
from gateway.commission import (
    Answer,
    BlockRead,
    Link,
    MeterCheck,
    Reading,
    SerialTarget,
    TcpTarget,
    UnitScan,
    check_live,
    exception_meaning,
    nameplate_warnings,
    scan_units,
)
from gateway.config import load_site
from puhui.sitegen import site_for
from testbed.servers import PrivateMosquitto
from tests.sim.helpers import fleet_config

REPO = Path(__file__).resolve().parents[2]
SDM630 = {"kind": "sdm630", "name": "elec", "unit": 3, "physics": {"model": "heating"}}
INVERTER = {"kind": "sunspec_inverter", "name": "inv", "unit": 1, "physics": {"model": "pv", "kwp": 6.5}}
RTU_PAIR = {"kind": "sdm120", "name": "hp-{i}", "count": 2, "unit": 5, "rtu_bus": "rs485",
            "physics": {"model": "heating"}}  # fmt: skip
PLUG = {"kind": "mqtt_plain", "name": "plug", "interval_s": 0.5, "physics": {"model": "pv", "kwp": 0.8}}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _float32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


async def _scan(target: TcpTarget | SerialTarget, units: range, **options: Any) -> list[UnitScan]:
    # 1 s per unit: a present unit must not pass for absent on a busy CI machine
    async with Link(target, timeout_s=1.0) as link:
        return [r async for r in scan_units(link, units, **options)]


async def _puhui(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "puhui", "gateway", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- probe ------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_probe_of_an_sdm630_block_shows_its_float32_values_among_the_plausible_lines() -> None:
    cfg = fleet_config(SDM630)
    clock = ManualClock(cfg.clock.epoch_s + 3600)  # frozen: the block is read at a known time
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["elec"]
        async with Link(TcpTarget("127.0.0.1", dev.endpoint.port or 0), timeout_s=1.0) as link:
            read = await link.read_block(3, "input", 0x46, 6)
        dev.refresh(clock.now())
        energy_kwh = _float32(dev.meter().counter_wh() / 1000.0)
    assert read.answer is Answer.DATA and read.error is None and len(read.registers) == 6
    plausible = {(p.address, p.type, p.order): p.value for p in probe(read.registers, base_address=0x46)
                 if p.plausible}  # fmt: skip
    assert plausible[(0x46, RegisterType.FLOAT32, ByteOrder.ABCD)] == 50.0  # frequency
    assert energy_kwh > 1000  # the simulator starts counters at 1 000-10 000 kWh
    assert plausible[(0x48, RegisterType.FLOAT32, ByteOrder.ABCD)] == energy_kwh
    assert (0x48, RegisterType.FLOAT32, ByteOrder.CDAB) not in plausible  # word-swapped: garbage


@pytest.mark.integration
async def test_probe_reports_exception_replies_timeouts_and_refused_connections_naming_the_read() -> None:
    async with Fleet(fleet_config(SDM630), clock=ManualClock(0)) as fleet:
        port = fleet.devices["elec"].endpoint.port or 0
        async with Link(TcpTarget("127.0.0.1", port), timeout_s=0.3) as link:
            exception = await link.read_block(3, "holding", 0x10, 2)
            silent = await link.read_block(9, "input", 0x48, 2)
            after = await link.read_block(3, "input", 0x48, 2)  # the link recovers from both
    closed = _closed_port()
    async with Link(TcpTarget("127.0.0.1", closed), timeout_s=0.3) as link:
        refused = await link.read_block(1, "holding", 0, 2)
    assert exception.answer is Answer.EXCEPTION and exception.exception_code == 2 and exception.present
    assert exception.error == (
        f"tcp 127.0.0.1:{port} unit 3 holding 0x0010..0x0011 (16): exception reply 2 "
        "(illegal data address: nothing readable at this address and count)"
    )
    assert silent.answer is Answer.TIMEOUT and not silent.present
    assert silent.error == f"tcp 127.0.0.1:{port} unit 9 input 0x0048..0x0049 (72): no answer within 0.3 s"
    assert after.answer is Answer.DATA
    assert refused.answer is Answer.UNREACHABLE
    assert refused.error is not None
    assert refused.error.startswith(
        f"tcp 127.0.0.1:{closed} unit 1 holding 0x0000..0x0001 (0): cannot connect"
    )
    assert "connection refused" in refused.error


@pytest.mark.integration
async def test_probe_over_rtu_reads_the_simulators_pty_bus() -> None:
    cfg = fleet_config(RTU_PAIR)
    clock = ManualClock(cfg.clock.epoch_s + 600)
    async with Fleet(cfg, clock=clock) as fleet:
        dev = fleet.devices["hp-1"]
        target = SerialTarget(dev.endpoint.rtu_path or "", 19200, "N", 1)
        async with Link(target, timeout_s=0.5) as link:
            read = await link.read_block(6, "input", 0x48, 2)
        dev.refresh(clock.now())
        energy_kwh = _float32(dev.meter().counter_wh() / 1000.0)
    assert read.answer is Answer.DATA, read.error
    assert str(read.target).startswith("rtu /dev/") and read.where.endswith(
        "unit 6 input 0x0048..0x0049 (72)"
    )
    lines = {
        (p.type, p.order): p.value for p in probe(read.registers, base_address=0x48) if p.address == 0x48
    }
    assert lines[(RegisterType.FLOAT32, ByteOrder.ABCD)] == energy_kwh


# -- scan -------------------------------------------------------------------------------------


@pytest.mark.integration
async def test_scan_finds_exactly_the_served_units_and_the_sunspec_marker() -> None:
    cfg = fleet_config(SDM630, INVERTER, RTU_PAIR)
    async with Fleet(cfg, clock=ManualClock(cfg.clock.epoch_s)) as fleet:
        d = fleet.devices
        tcp = await _scan(TcpTarget("127.0.0.1", d["elec"].endpoint.port or 0), range(1, 5))
        rtu = await _scan(SerialTarget(d["hp-0"].endpoint.rtu_path or ""), range(4, 8), table="input")
        pv = await _scan(TcpTarget("127.0.0.1", d["inv"].endpoint.port or 0), range(1, 3), sunspec=True)
    assert [r.unit for r in tcp] == [1, 2, 3, 4]
    assert {r.unit for r in tcp if r.read.present} == {3}
    assert {r.unit for r in tcp if r.read.answer is Answer.TIMEOUT} == {1, 2, 4}
    assert tcp[2].read.answer is Answer.EXCEPTION  # the SDM630 has no holding register 0: still there
    assert {r.unit for r in rtu if r.read.answer is Answer.DATA} == {5, 6}
    assert {r.unit for r in rtu if r.read.answer is Answer.TIMEOUT} == {4, 7}
    assert pv[0].sunspec is not None and pv[0].sunspec.chain is not None
    assert pv[0].sunspec.chain.base == 40000
    assert [b.id for b in pv[0].sunspec.chain.blocks] == [1, 103]
    assert pv[1].read.answer is Answer.TIMEOUT and pv[1].sunspec is None


@pytest.mark.integration
async def test_scan_stops_at_a_refused_connection() -> None:
    results = await _scan(TcpTarget("127.0.0.1", _closed_port()), range(1, 248))
    assert len(results) == 1
    assert results[0].read.answer is Answer.UNREACHABLE


# -- check --live -----------------------------------------------------------------------------


def _site_data(fleet: Fleet, mosquitto: PrivateMosquitto) -> dict[str, Any]:
    # 2 s (TCP) and 1 s (RTU): a reachable meter must not time out on a busy CI machine
    data = site_for(fleet, "site", "gw-commission-1", timeout_s=2.0, mqtt=(mosquitto.host, mosquitto.port))
    for meter in data["meters"]:
        if meter["driver"] == "modbus_tcp":
            meter["connection"]["retries"] = 0
    for bus in data["serial_buses"]:
        bus["timeout_s"] = 1.0
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _reading(check: MeterCheck, quantity: str) -> float:
    value = {r.quantity: r.value for r in check.readings}[quantity]
    assert not isinstance(value, Invalid)
    return value


def _live_fleet(mosquitto: PrivateMosquitto) -> Fleet:
    # The system clock on both sides: MQTT timestamps are checked against the gateway's clock.
    mqtt = {"host": mosquitto.host, "port": mosquitto.port}
    return Fleet(fleet_config(SDM630, INVERTER, RTU_PAIR, PLUG, mqtt=mqtt), clock=SystemClock())


@pytest.mark.integration
async def test_check_live_reaches_every_meter_of_a_sitegen_config(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    async with _live_fleet(mosquitto) as fleet:
        site = load_site(_write(tmp_path, _site_data(fleet, mosquitto)))
        checks = await check_live(site, load_profiles(), SystemClock(), mqtt_wait_s=10)
        elec = fleet.devices["elec"]
        elec.refresh(SystemClock().now())
        truth_kwh = elec.meter().counter_wh() / 1000.0
    by_id = {c.meter: c for c in checks}
    assert list(by_id) == ["elec", "inv", "hp-0", "hp-1", "plug"]
    assert [c.meter for c in checks if not c.ok] == []
    assert all(c.reachable and c.error is None and not c.warnings for c in checks), checks
    assert by_id["hp-1"].where.startswith("rtu bus1 (/dev/") and by_id["hp-1"].where.endswith("unit 6")
    assert _reading(by_id["elec"], "energy_import") == pytest.approx(truth_kwh, abs=0.05)
    assert _reading(by_id["elec"], "frequency") == 50.0
    assert _reading(by_id["inv"], "energy_generated") > 0  # SunSpec discovered, scaled Wh
    assert _reading(by_id["plug"], "energy") > 0
    counted = [r for c in checks for r in c.readings if r.counted]
    assert sorted(r.quantity for r in counted) == [
        "energy", "energy_generated", "energy_import", "energy_import", "energy_import",
    ]  # fmt: skip


@pytest.mark.integration
async def test_check_live_names_a_dead_meter_a_wrong_unit_id_and_a_silent_topic(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    async with _live_fleet(mosquitto) as fleet:
        data = _site_data(fleet, mosquitto)
        meters = {m["id"]: m for m in data["meters"]}
        meters["hp-1"]["unit_id"] = 9  # nobody on the bus answers to 9
        wrong_path = copy.deepcopy(meters["plug"])  # messages arrive, but without this field
        wrong_path["id"] = "plug-wh"
        wrong_path["source"]["fields"]["energy"]["path"] = "energy_wh"
        data["meters"].append(wrong_path)
        meters["plug"]["source"]["topic"] = "puhui/site/nobody/reading"
        site = load_site(_write(tmp_path, data))
        fleet.devices["elec"].set_faults(timeout=True)
        fleet.devices["hp-0"].set_faults(value="absurd")  # reachable, but nonsense for the nameplate
        checks = await check_live(site, load_profiles(), SystemClock(), mqtt_wait_s=1.0)
    by_id = {c.meter: c for c in checks}
    assert sorted(c.meter for c in checks if not c.ok) == ["elec", "hp-1", "plug", "plug-wh"]
    plug_wh = by_id["plug-wh"]
    assert plug_wh.reachable and plug_wh.missing == ("energy",)
    assert [r.quantity for r in plug_wh.readings] == ["power"]
    assert "malformed payload: energy_wh: no key 'energy_wh'" in plug_wh.warnings[0]
    port = fleet.devices["elec"].endpoint.port
    elec_error = by_id["elec"].error or ""
    assert elec_error.startswith(
        f"elec (tcp 127.0.0.1:{port}): unit 3 fc3 0xFC00..0xFC01: no "
    )  # first request
    assert elec_error.endswith("no answer within 2.0 s") or "no response" in elec_error
    assert (by_id["hp-1"].error or "").startswith("hp-1 (rtu bus1): unit 9 fc")
    topic = "'puhui/site/nobody/reading'"
    assert (
        by_id["plug"].error == f"plug (mqtt 127.0.0.1:{mosquitto.port} topic {topic}): no message within 1 s"
    )
    assert by_id["inv"].ok and not by_id["inv"].warnings
    hp0 = by_id["hp-0"]
    assert hp0.ok and len(hp0.warnings) == 2, hp0.warnings
    assert hp0.warnings[0].startswith("power: -1e+09 W is beyond ±") and "rated power" in hp0.warnings[0]
    assert hp0.warnings[1].startswith("energy_import: 1e+09 kWh is more than 30 years at rated power")


@pytest.mark.integration
async def test_cli_check_live_exits_1_naming_the_failed_meter(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    async with _live_fleet(mosquitto) as fleet:
        path = _write(tmp_path, _site_data(fleet, mosquitto))
        code, out, err = await _puhui("check", "--config", str(path), "--live", "--mqtt-wait", "10")
        assert (code, err) == (0, ""), out + err
        assert "5 of 5 meter(s) ok, 0 warning(s)" in out
        fleet.devices["inv"].set_faults(timeout=True)
        code, out, err = await _puhui("check", "--config", str(path), "--live", "--mqtt-wait", "10")
    assert code == 1, out + err
    assert "4 of 5 meter(s) ok" in out and out.rstrip().endswith("FAILED: inv")
    assert "inv (tcp 127.0.0.1:" in out and "SunSpec discovery failed" in out


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_cli_probe_and_scan_exit_codes_and_error_lines() -> None:
    closed = _closed_port()
    async with Fleet(fleet_config(SDM630), clock=ManualClock(0)) as fleet:
        port = str(fleet.devices["elec"].endpoint.port)
        tcp = ("--host", "127.0.0.1", "--port")
        async with asyncio.TaskGroup() as group:
            ok = group.create_task(_puhui("probe", *tcp, port, "--unit", "3", "--table", "input",
                                          "--address", "0x46", "--count", "2"))  # fmt: skip
            silent = group.create_task(_puhui("probe", *tcp, port, "--unit", "9", "--address", "0",
                                              "--count", "1", "--timeout", "0.3"))  # fmt: skip
            # six interpreters start at once beside the simulator: give unit 3 time to answer
            scan = group.create_task(_puhui("scan", *tcp, port, "--units", "1-4", "--timeout", "2"))
            refused = group.create_task(_puhui("probe", *tcp, str(closed), "--unit", "1", "--address", "0",
                                               "--count", "10"))  # fmt: skip
            both = group.create_task(_puhui("probe", "--host", "h", "--serial", "/dev/ttyUSB0", "--unit", "1",
                                            "--address", "0", "--count", "1"))  # fmt: skip
            too_many = group.create_task(_puhui("probe", "--host", "h", "--unit", "1", "--address", "0",
                                                "--count", "126"))  # fmt: skip
    code, out, err = ok.result()
    assert (code, err) == (0, ""), err
    assert f"tcp 127.0.0.1:{port} unit 3 input 0x0046..0x0047 (70)" in out
    assert "0x0046 (   70)  30071 0x4248" in out  # 50.0 Hz as float32: 0x4248 0x0000
    assert any(line.split()[1:] == ["70", "float32", "ABCD", "50"] for line in out.splitlines()), out
    code, out, err = silent.result()
    assert code == 1 and out == ""
    assert err == f"puhui gateway probe: tcp 127.0.0.1:{port} unit 9 holding 0x0000..0x0000 (0): " \
        "no answer within 0.3 s\n"  # fmt: skip
    code, out, err = scan.result()
    assert (code, err) == (0, ""), err
    assert "  unit   3  answers with exception 2 (illegal data address" in out
    assert "  no answer within 2 s: unit(s) 1-2, 4\n" in out and "1 device(s) found: unit(s) 3" in out
    code, out, err = refused.result()
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"puhui gateway probe: tcp 127.0.0.1:{closed} unit 1 holding 0x0000..0x0009 (0): ")
    assert "connection refused" in err
    assert both.result()[0] == 2 and "give either --host (Modbus TCP) or --serial" in both.result()[2]
    assert too_many.result()[0] == 2 and "count 126 is not in 1..125" in too_many.result()[2]


# -- fast tier: nameplate plausibility ------------------------------------------------------------


def _r(
    quantity: str, value: float | Invalid, unit: str, kind: str, counted: bool = True, **kw: Any
) -> Reading:
    return Reading(quantity, value, unit, kind, counted, **kw)


def test_nameplate_warnings_flag_power_beyond_the_rating_and_bad_counters() -> None:
    readings = [
        _r("power", 15_100.0, "W", "gauge", counted=False),  # 1.5 x 10 kW = 15 kW
        _r("power_total", 14.9, "kW", "gauge", counted=False),
        _r("energy_import", Invalid("nan"), "kWh", "counter"),
        _r("energy_export", Invalid("nan"), "kWh", "counter", counted=False),  # shown, not judged
        _r("heat_energy", 0.0, "GJ", "counter"),
        _r("session_energy", 0.0, "Wh", "counter", per_session=True),
        _r("energy_b", -3.0, "kWh", "counter"),
        _r("energy_c", 2_700_000.0, "MWh", "counter"),  # > 30 years x 8760 h x 10 kW
        _r("energy_d", 2_600_000.0, "kWh", "counter"),
    ]
    warnings = nameplate_warnings(10.0, readings)
    assert [w.split(":")[0] for w in warnings] == [
        "power",
        "energy_import",
        "heat_energy",
        "energy_b",
        "energy_c",
    ]
    assert "beyond ±15 kW" in warnings[0]
    assert "nan" in warnings[1]
    assert nameplate_warnings(10.0, [_r("power", -14_999.0, "W", "gauge")]) == []
    assert nameplate_warnings(10.0, [_r("power", math.inf, "W", "gauge")])  # not silently accepted


def test_a_gateways_no_device_exception_is_not_a_device() -> None:
    target = TcpTarget("10.0.0.7")
    read = BlockRead(target, 4, "holding", 0, 1, Answer.EXCEPTION, exception_code=11)
    assert not read.present
    assert replace(read, exception_code=2).present and replace(read, exception_code=6).present
    assert exception_meaning(11).startswith("11 (gateway target device failed to respond")
    assert str(target) == "tcp 10.0.0.7:502"
