"""The harness's pure parts: the fleet's registers and ground truth, the peers' configuration
files, /proc readings, value comparison, verdicts and the table (tested by
bench/test_bench_peers.py; nothing here starts a process or opens a socket)."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEPT_UP = 0.95  # delivered / expected over the window (a window edge may cut one cycle)
REL_TOL = 1e-6  # float32 survives JSON and collectd's CSV (%lf, six decimals) within these
ABS_TOL = 1e-6


@dataclass(frozen=True)
class Field:
    """One of the SDM630 profile's float32 input registers."""

    name: str
    address: int


@dataclass(frozen=True)
class Meter:
    name: str
    port: int
    unit: int


# -- values ---------------------------------------------------------------------------------------


def float32(hi: int, lo: int) -> float:
    """Two Modbus registers, high word first, as an IEEE float32 (big-endian)."""
    return float(struct.unpack(">f", struct.pack(">HH", hi, lo))[0])


def decode_block(words: Sequence[int], fields: Sequence[Field], start: int = 0) -> dict[str, float]:
    """The fields' values from one block of registers read from ``start``."""
    out = {}
    for f in fields:
        i = f.address - start
        if i < 0 or i + 1 >= len(words):
            raise ValueError(
                f"field {f.name} (0x{f.address:04X}) is outside the block read from 0x{start:04X}"
            )
        out[f.name] = float32(words[i], words[i + 1])
    return out


def span(fields: Sequence[Field]) -> tuple[int, int]:
    """(first address, register count) of one request covering every field."""
    lo = min(f.address for f in fields)
    return lo, max(f.address for f in fields) + 2 - lo


def same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


@dataclass(frozen=True)
class Check:
    """What a contender's sample of values says against the ground truth."""

    compared: int
    meters: int
    mismatches: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not self.mismatches

    def describe(self) -> str:
        if self.compared == 0:
            return "no values to compare"
        if not self.mismatches:
            return f"{self.compared} values of {self.meters} meters equal the simulator's"
        return f"{len(self.mismatches)} of {self.compared} differ, e.g. {'; '.join(self.mismatches[:3])}"


def compare(seen: Mapping[str, Mapping[str, float]], truth: Mapping[str, Mapping[str, float]]) -> Check:
    """Every value in ``seen`` (meter -> field -> value) against ``truth``; a meter or field
    the truth does not have is a mismatch too (a value the simulator never served)."""
    compared, bad = 0, []
    for meter, values in sorted(seen.items()):
        expected = truth.get(meter)
        for name, value in sorted(values.items()):
            compared += 1
            if expected is None or name not in expected:
                bad.append(f"{meter}/{name}={value!r}: not served by the simulator")
            elif not same(value, expected[name]):
                bad.append(f"{meter}/{name}={value!r}, simulator {expected[name]!r}")
    return Check(compared, sum(1 for v in seen.values() if v), tuple(bad))


# -- /proc ----------------------------------------------------------------------------------------


def stat_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat (proc(5) fields 14, 15);
    the command name in parentheses may itself hold spaces and parentheses."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def schedstat_ns(text: str) -> int:
    """Time on a CPU (ns) from /proc/<pid>/task/<tid>/schedstat: exact, where /proc/<pid>/stat
    counts clock ticks (10 ms: 7 ticks is all a bare loop spends on 50 meters in a minute)."""
    return int(text.split()[0])


def stat_ppid(stat_text: str) -> int:
    return int(stat_text.rsplit(")", 1)[1].split()[1])


def status_kib(status_text: str, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmHWM, VmRSS), in KiB."""
    found = re.search(rf"^{key}:\s+(\d+) kB$", status_text, re.M)
    if found is None:
        raise ValueError(f"no {key} line in /proc status text")
    return int(found[1])


# -- ThingsBoard IoT Gateway ----------------------------------------------------------------------------


SESSION_LIMITS_TOPIC = "v1/devices/me/rpc/request/+"
TELEMETRY_TOPIC = "v1/gateway/telemetry"
NO_LIMIT = "0:0,"  # tb-mqtt-client's RateLimit syntax for "none"


def tb_gateway_json(
    host: str, port: int, token: str, *, connector_file: str = "modbus.json"
) -> dict[str, Any]:
    """tb_gateway.json (3.8.x layout): the private broker, no remote shell or configuration,
    no statistics, memory storage, no rate limits, every read reported (ON_RECEIVED)."""
    return {
        "thingsboard": {
            "host": host, "port": port, "remoteShell": False, "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600,
                           "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 65536, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600, "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": token},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False, "inactivityTimeoutSeconds": 300,
                                       "inactivityCheckPeriodSeconds": 10},
            "rateLimits": NO_LIMIT, "dpRateLimits": NO_LIMIT, "messagesRateLimits": NO_LIMIT,
            "deviceMessagesRateLimits": NO_LIMIT, "deviceRateLimits": NO_LIMIT,
            "deviceDpRateLimits": NO_LIMIT,
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 1_000_000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": connector_file}],
    }  # fmt: skip


def tb_modbus_json(meters: Sequence[Meter], fields: Sequence[Field], period_s: float) -> dict[str, Any]:
    """The Modbus connector's configuration: one slave per meter, one timeseries key per field
    (float32, big-endian bytes and words, input registers). The connector sends one request
    per key (connectors/modbus/modbus_connector.py, __read_slave_data)."""
    series = [{"tag": f.name, "type": "32float", "functionCode": 4, "objectsCount": 2, "address": f.address}
              for f in fields]  # fmt: skip
    slaves = [
        {"host": "127.0.0.1", "port": m.port, "type": "tcp", "method": "socket", "unitId": m.unit,
         "deviceName": m.name, "deviceType": "sdm630", "timeout": 5, "byteOrder": "BIG", "wordOrder": "BIG",
         "retries": 0, "retryOnEmpty": False, "retryOnInvalid": False,
         "pollPeriod": round(period_s * 1000), "connectAttemptTimeMs": 5000,
         "connectAttemptCount": 5,
         "waitAfterFailedAttemptsMs": 30000, "reportStrategy": {"type": "ON_RECEIVED"},
         "attributes": [], "timeseries": series, "attributeUpdates": [], "rpc": []}
        for m in meters
    ]  # fmt: skip
    return {"master": {"slaves": slaves}}


def tb_logs_json(log_file: str) -> dict[str, Any]:
    """Logging for the bench: warnings and worse, to one file (its default logs everything at
    DEBUG to stdout and six rotating files, which would be most of what it does)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain", "filename": log_file,
                              "level": "WARNING"}},
        "root": {"level": "WARNING", "handlers": ["file"]},
    }  # fmt: skip


def session_limits() -> dict[str, Any]:
    """The platform's answer to ``getSessionLimits``: no rate limits (tb_device_mqtt.py,
    on_service_configuration; tb_gateway_mqtt.py, __on_service_configuration)."""
    none = {"messages": NO_LIMIT, "telemetryMessages": NO_LIMIT, "telemetryDataPoints": NO_LIMIT}
    return {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": dict(none),
            "gatewayRateLimits": dict(none)}  # fmt: skip


def tb_telemetry_values(payload: bytes) -> dict[str, dict[str, float]]:
    """device -> key -> value from one ``v1/gateway/telemetry`` message (a device maps to a
    list of ``{"ts", "values"}`` entries, one entry, or plain key/values); the last entry of a
    device wins. Raises ValueError on anything else."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ValueError(f"telemetry is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("telemetry is not an object of devices")
    out: dict[str, dict[str, float]] = {}
    for device, entries in data.items():
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict):
                raise ValueError(f"telemetry of {device}: an entry is not an object")
            values = entry.get("values", entry) if "ts" in entry else entry
            out.setdefault(device, {}).update({k: float(v) for k, v in values.items()})
    return out


def tb_telemetry_count(payload: bytes) -> int:
    """Values in one ``v1/gateway/telemetry`` message (each entry's keys, every entry)."""
    data = json.loads(payload)
    count = 0
    for entries in data.values():
        for entry in entries if isinstance(entries, list) else [entries]:
            count += len(entry.get("values", {}) if "ts" in entry else entry)
    return count


# -- collectd -------------------------------------------------------------------------------------------


def collectd_conf(meters: Sequence[Meter], fields: Sequence[Field], period_s: float, data_dir: Path,
                  log_file: Path, *, read_threads: int = 5) -> str:  # fmt: skip
    """collectd.conf: the modbus plugin (one ``<Data>`` per field: one request each, float32
    big-endian, input registers), one ``<Host>`` per meter, values to CSV files."""
    lines = [
        'Hostname "bench"', "FQDNLookup false", f"Interval {period_s:g}", f"ReadThreads {read_threads}",
        "WriteThreads 1",
        "LoadPlugin logfile",
        "<Plugin logfile>", "  LogLevel warning", f'  File "{log_file}"', "  Timestamp true", "</Plugin>",
        "LoadPlugin modbus", "LoadPlugin csv",
        "<Plugin csv>", f'  DataDir "{data_dir}"', "  StoreRates false", "</Plugin>",
        "<Plugin modbus>",
    ]  # fmt: skip
    for f in fields:
        lines += [f'  <Data "{f.name}">', f"    RegisterBase {f.address}", "    RegisterType Float",
                  "    RegisterCmd ReadInput", '    Type "gauge"', f'    Instance "{f.name}"',
                  "  </Data>"]  # fmt: skip
    for m in meters:
        lines += [f'  <Host "{m.name}">', '    Address "127.0.0.1"', f'    Port "{m.port}"',
                  f"    Interval {period_s:g}", f"    <Slave {m.unit}>", f'      Instance "{m.name}"',
                  *(f'      Collect "{f.name}"' for f in fields), "    </Slave>", "  </Host>"]  # fmt: skip
    lines.append("</Plugin>")
    return "\n".join(lines) + "\n"


_CSV_FILE = re.compile(r"^gauge-(?P<field>.+)-\d{4}-\d{2}-\d{2}$")


def collectd_csv_name(path: Path) -> tuple[str, str] | None:
    """(meter, field) of a collectd CSV file ``<DataDir>/bench/modbus-<meter>/gauge-<field>-<date>``."""
    found = _CSV_FILE.match(path.name)
    plugin = path.parent.name
    if found is None or not plugin.startswith("modbus-"):
        return None
    return plugin.removeprefix("modbus-"), found["field"]


def collectd_csv_rows(text: str) -> list[tuple[float, float]]:
    """(time, value) rows of one collectd CSV file (header ``epoch,value``)."""
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("epoch"):
            continue
        t, v = line.split(",")
        rows.append((float(t), float(v)))
    return rows


# -- verdicts and the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One contender's window."""

    contender: str
    meters: int
    period_s: float
    budget: str  # "one core" or e.g. "25 % of one core"
    window_s: float
    cpu_s: float
    values: int  # delivered in the window
    peak_rss_kib: int
    requests: int  # Modbus requests the simulator served in the window
    check: Check
    fields: int = 13  # values per read (the SDM630 profile's float32 fields)
    note: str = ""

    @property
    def expected(self) -> float:
        return self.meters * self.fields * self.window_s / self.period_s

    @property
    def kept_up(self) -> bool:
        return self.values >= KEPT_UP * self.expected

    @property
    def values_per_cpu_s(self) -> float:
        return self.values / self.cpu_s if self.cpu_s > 0 else math.inf

    @property
    def cpu_per_value(self) -> float:
        return self.cpu_s / self.values if self.values else math.inf

    @property
    def requests_per_read(self) -> float:
        reads = self.values / self.fields
        return self.requests / reads if reads else math.inf


def ratio_to_floor(r: Result, floor: Result | None) -> float | None:
    """CPU per value of ``r`` over the bare loop's, same configuration and budget."""
    if floor is None or not floor.values or not r.values or floor.cpu_s <= 0:
        return None
    return r.cpu_per_value / floor.cpu_per_value


def floor_of(results: Iterable[Result], r: Result, floor_name: str) -> Result | None:
    for f in results:
        if (f.contender, f.meters, f.period_s, f.budget) == (floor_name, r.meters, r.period_s, r.budget):
            return f
    return None


def table(results: Sequence[Result], floor_name: str) -> str:
    head = ("| meters x period | budget | contender | values/CPU-s | CPU per read vs bare loop | peak RSS | "
            "values delivered / expected | requests per read | kept up | same values |")  # fmt: skip
    rows = [head, "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        ratio = ratio_to_floor(r, floor_of(results, r, floor_name))
        rows.append(
            f"| {r.meters} x {r.period_s:g} s | {r.budget} | {r.contender} | {r.values_per_cpu_s:,.0f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {r.peak_rss_kib / 1024:.0f} MiB | "
            f"{r.values:,} / {r.expected:,.0f} | {r.requests_per_read:.1f} | "
            f"{'yes' if r.kept_up else 'NO'} | "
            f"{'yes' if r.check.ok else 'NO: ' + r.check.describe()} |"
        )
    return "\n".join(rows)
