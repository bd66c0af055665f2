"""bench.peers' pure parts: the peers' configuration files, value decoding and comparison,
/proc parsing, the verdicts (the bench itself takes many minutes and other programs)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bench.peers.pure import (
    Check,
    Field,
    Meter,
    Result,
    collectd_conf,
    collectd_csv_name,
    collectd_csv_rows,
    compare,
    decode_block,
    float32,
    ratio_to_floor,
    schedstat_ns,
    session_limits,
    span,
    stat_cpu_ticks,
    stat_ppid,
    status_kib,
    table,
    tb_gateway_json,
    tb_modbus_json,
    tb_telemetry_count,
    tb_telemetry_values,
)
from bench.peers.run import sdm630_fields

FIELDS = [Field("voltage_l1", 0x0000), Field("power", 0x0034), Field("energy_export", 0x004A)]
METERS = [Meter("sdm-000", 40001, 1), Meter("sdm-001", 40002, 7)]


def words(value: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


def test_the_profile_gives_thirteen_float32_fields_in_one_block() -> None:
    fields = sdm630_fields()
    assert len(fields) == 13
    assert span(fields) == (0x0000, 0x004C)


def test_a_block_decodes_high_word_first() -> None:
    block = [0] * 0x4C
    block[0:2] = words(230.5)
    block[0x34:0x36] = words(-1234.25)
    block[0x4A:0x4C] = words(99999.5)
    assert decode_block(block, FIELDS) == {"voltage_l1": 230.5, "power": -1234.25, "energy_export": 99999.5}
    assert float32(*reversed(words(230.5))) != 230.5  # the other word order is not the same value
    with pytest.raises(ValueError, match="energy_export"):
        decode_block(block[:0x4B], FIELDS)


def test_compare_names_each_mismatch_and_values_the_simulator_never_served() -> None:
    truth = {"sdm-000": {"power": 1109.856689453125, "frequency": 50.0}}
    assert compare({"sdm-000": {"power": 1109.856689}}, truth).ok  # CSV's six decimals
    check = compare({"sdm-000": {"power": 1109.86, "frequency": 50.0}, "sdm-009": {"power": 1.0}}, truth)
    assert not check.ok and check.compared == 3 and check.meters == 2
    assert any("sdm-000/power" in m for m in check.mismatches)
    assert any("sdm-009/power" in m and "not served" in m for m in check.mismatches)
    assert not compare({}, truth).ok  # nothing compared is no evidence


def test_proc_stat_parsing_survives_a_command_name_with_spaces_and_parentheses() -> None:
    text = "4242 (tb (gw) 1) S 17 4242 4242 0 -1 4194560 " + " ".join(["0"] * 4) + " 250 75 3 4 20 0 9 0 1"
    assert stat_cpu_ticks(text) == 325
    assert stat_ppid(text) == 17
    own = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert stat_ppid(own) == os.getppid()
    assert stat_cpu_ticks(own) >= 0
    assert schedstat_ns("189741411 449607911 848\n") == 189741411
    status = "Name:\tx\nVmHWM:\t   61440 kB\nVmRSS:\t   51200 kB\n"
    assert status_kib(status, "VmHWM") == 61440
    with pytest.raises(ValueError, match="VmSwap"):
        status_kib(status, "VmSwap")


def test_thingsboard_configs_poll_every_field_of_every_meter_with_no_limits() -> None:
    gw = tb_gateway_json("127.0.0.1", 18830, "tok")
    tb = gw["thingsboard"]
    assert (tb["host"], tb["port"], tb["security"]["accessToken"]) == ("127.0.0.1", 18830, "tok")
    assert not tb["remoteShell"] and not tb["remoteConfiguration"] and not tb["statistics"]["enable"]
    assert tb["reportStrategy"] == {
        "type": "ON_RECEIVED"
    }  # the values never change: ON_CHANGE would send none
    assert gw["connectors"] == [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
    slaves = tb_modbus_json(METERS, FIELDS, 0.5)["master"]["slaves"]
    assert [(s["deviceName"], s["port"], s["unitId"], s["pollPeriod"]) for s in slaves] == [
        ("sdm-000", 40001, 1, 500), ("sdm-001", 40002, 7, 500)]  # fmt: skip
    series = slaves[1]["timeseries"]
    assert [(t["tag"], t["address"], t["type"], t["functionCode"], t["objectsCount"]) for t in series] == [
        (f.name, f.address, "32float", 4, 2) for f in FIELDS]  # fmt: skip
    assert (slaves[0]["byteOrder"], slaves[0]["wordOrder"]) == ("BIG", "BIG")
    limits = session_limits()
    assert set(limits) >= {"rateLimits", "gatewayRateLimits", "maxPayloadSize"}


def test_thingsboard_telemetry_is_counted_and_read_in_each_shape_it_takes() -> None:
    listed = json.dumps({"sdm-000": [{"ts": 1, "values": {"power": 1.5, "voltage_l1": 230.0}},
                                     {"ts": 2, "values": {"power": 2.5}}],
                         "sdm-001": {"ts": 3, "values": {"power": 7}}}).encode()  # fmt: skip
    assert tb_telemetry_count(listed) == 4
    assert tb_telemetry_values(listed) == {
        "sdm-000": {"power": 2.5, "voltage_l1": 230.0},
        "sdm-001": {"power": 7.0},
    }
    assert tb_telemetry_values(b'{"sdm-002": {"power": 1}}') == {"sdm-002": {"power": 1.0}}
    with pytest.raises(ValueError, match="not JSON"):
        tb_telemetry_values(b"{nope")
    with pytest.raises(ValueError, match="sdm-003"):
        tb_telemetry_values(b'{"sdm-003": [1]}')


def test_collectd_conf_has_one_data_block_per_field_and_one_host_per_meter(tmp_path: Path) -> None:
    conf = collectd_conf(METERS, FIELDS, 5.0, tmp_path / "csv", tmp_path / "log")
    assert conf.count("<Data ") == 3 and conf.count("<Host ") == 2
    assert "RegisterBase 52" in conf and conf.count("RegisterType Float\n") == 3
    assert conf.count("RegisterCmd ReadInput") == 3
    assert 'Port "40002"' in conf and "<Slave 7>" in conf and "Interval 5\n" in conf
    assert conf.count('Collect "power"') == 2  # one string per Collect line (collectd refuses more)
    if shutil.which("collectd") or Path("/usr/sbin/collectd").exists():
        binary = shutil.which("collectd") or "/usr/sbin/collectd"
        (tmp_path / "collectd.conf").write_text(conf)
        done = subprocess.run([binary, "-t", "-C", str(tmp_path / "collectd.conf")], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


def test_collectd_csv_files_are_named_and_read() -> None:
    assert collectd_csv_name(Path("csv/sdm-000/modbus-sdm-000/gauge-power_l1-2026-12-05")) == (
        "sdm-000",
        "power_l1",
    )
    assert collectd_csv_name(Path("csv/bench/cpu-0/gauge-idle-2026-12-05")) is None
    assert collectd_csv_rows("epoch,value\n1796479225.972,4.596292\n1796479226.970,4.5\n") == [
        (1796479225.972, 4.596292), (1796479226.970, 4.5)]  # fmt: skip


def result(name: str, cpu_s: float, values: int, budget: str = "one core") -> Result:
    return Result(name, 200, 1.0, budget, 60.0, cpu_s, values, 40_960, values // 13, Check(13, 1, ()))


def test_kept_up_ratio_and_table() -> None:
    floor, slow = result("bare", 2.0, 156_000), result("peer", 8.0, 140_000)
    assert floor.kept_up and floor.values_per_cpu_s == 78_000
    assert not slow.kept_up  # 140,000 < 0.95 x 156,000
    ratio = ratio_to_floor(slow, floor)
    assert ratio is not None and abs(ratio - (8.0 / 140_000) / (2.0 / 156_000)) < 1e-12
    assert ratio_to_floor(result("peer", 1.0, 0), floor) is None
    capped = result("peer", 1.0, 156_000, budget="25 % of one core")
    text = table([floor, slow, capped], "bare")
    assert (
        "| 200 x 1 s | one core | peer | 17,500 | 4.46 | 40 MiB | 140,000 / 156,000 | 1.0 | NO | yes |"
        in text
    )
    assert "| 200 x 1 s | 25 % of one core | peer | 156,000 |  |" in text  # no floor with that budget
