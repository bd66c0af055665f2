"""``puhui gateway init``: a first site config from what a scan found, the key, the enrolment.

The installer scans the bus (Modbus TCP or RTU, as ``puhui gateway scan`` does) or a shared
line for DL/T 645 and CJ/T 188 meters (as ``puhui gateway dlt645|cjt188 scan`` do, see
:mod:`gateway.siteinit_lines`) and, if a broker is given, listens for the MQTT topics being
published; :func:`render_site` turns what answered into a commented site YAML: one meter
per unit or address that answered, with ``TODO`` marks where only the installer knows the
answer (meter model, scenario, nameplate). The text is checked with the config loader
before it is written, so what init writes loads.

SunSpec units are recognised (profile ``sunspec``, counted quantity from the models found);
MQTT topics are listed as comments with their numeric JSON fields and a meter template,
because which field is the energy counter is the installer's call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import yaml

from drivers.line.config import describe_line
from drivers.modbus.profiles import load_profiles
from evidence.errors import EvidenceError
from evidence.keys import GatewayKey, generate_key, load_private_key, public_key_b64, save_private_key
from evidence.wire import TOPIC_ROOT
from gateway.commission import LINK_FAILURES, Link, SerialTarget, Target, TcpTarget, UnitScan, scan_units
from gateway.config import GatewayInfo, SiteConfig, parse_site
from gateway.errors import ConfigError
from gateway.siteinit_lines import (
    LineMeterScan,
    LineScanRefused,
    LineScanRequest,
    line_entry,
    line_meter_lines,
    scan_line,
)

BUS_ID = "rs485-1"
INVERTER_MODELS = frozenset({101, 102, 103, 111, 112, 113})
METER_MODELS = frozenset({201, 202, 203, 204})
MAX_TOPICS = 50


@dataclass(frozen=True)
class SeenTopic:
    """An MQTT topic heard during init, with the numeric fields of its JSON payload."""

    topic: str
    fields: Mapping[str, float]


@dataclass(frozen=True)
class SiteDraft:
    """What init knows: identity, where the meters were scanned, what answered, paths."""

    gateway_id: str
    site: str
    target: Target | None
    units: Sequence[UnitScan]
    topics: Sequence[SeenTopic]
    mqtt: tuple[str, int] | None
    key_file: str
    state_dir: str
    line: LineScanRequest | None = None  # a shared line scanned for DL/T 645 / CJ/T 188 meters
    line_meters: Sequence[LineMeterScan] = ()


def render_site(draft: SiteDraft, profiles: Iterable[str]) -> str:
    """The commented site YAML of a draft (validate it before writing)."""
    lines = [
        "# Site config written by `puhui gateway init`. Edit every line marked TODO, then:",
        "#   puhui gateway check --config <this file> --live",
        "# Reference: /usr/share/doc/puhui (docs/gateway-config.md in the source).",
        f"gateway: {{id: {draft.gateway_id}, site: {_quote(draft.site)}}}",
        "clock: {mode: system}        # stamps and seals only while NTP has synchronised the clock",
        "interval_minutes: 15",
    ]
    if isinstance(draft.target, SerialTarget):
        t = draft.target
        lines += [
            "serial_buses:",
            f"  - {{id: {BUS_ID}, port: {_quote(t.device)}, baudrate: {t.baudrate}, parity: {t.parity}, "
            f"stopbits: {t.stopbits}}}",
        ]
    if draft.line is not None:
        lines += line_entry(draft.line.settings)
    lines += ["meters:"]
    known = ", ".join(sorted(p for p in profiles if p != "sunspec"))
    for scan in draft.units:
        lines += _meter_lines(scan, draft.target, known)
    if draft.line is not None:
        lines += line_meter_lines(draft.line.settings, draft.line_meters, draft.line.cjt188_timeout_s)
    lines += _topic_lines(draft)
    lines += [
        "evidence:",
        f"  key_file: {_quote(draft.key_file)}      # made by init (0600); never overwritten",
        f"  state_dir: {_quote(draft.state_dir)}",
        "status: {host: 127.0.0.1, port: 9108}   # the installer's page: http://127.0.0.1:9108/",
        "# uplink:                     # TODO from the operator: where batches go (without it they are kept)",
        "#   host: mqtt.example.cn",
        "#   aggregator_public_key: /etc/puhui/aggregator.pub.pem",
        "#   tls: {ca_file: /etc/puhui/ca.pem}",
        "",
    ]
    return "\n".join(lines)


def _meter_lines(scan: UnitScan, target: Target | None, known: str) -> list[str]:
    unit, read = scan.unit, scan.read
    seen = " ".join(f"0x{w:04X}" for w in read.registers[:4]) or f"exception {read.exception_code}"
    profile, counts, scenario, why = _guess(scan)
    lines = [f"  # unit {unit} answered on {target} ({read.table} 0x{read.address:04X}: {seen}){why}"]
    lines.append(f"  - id: meter-{unit}             # TODO: a name the operator recognises")
    if isinstance(target, TcpTarget):
        lines += [
            "    driver: modbus_tcp",
            f"    connection: {{host: {_quote(target.host)}, port: {target.port}}}",
        ]
    else:
        lines += ["    driver: modbus_rtu", f"    connection: {{bus: {BUS_ID}}}"]
    mark = "" if profile == "sunspec" else f"  # TODO: the meter model: {known}"
    lines += [
        f"    unit_id: {unit}",
        f"    profile: {profile}{mark}",
        f"    scenario: {scenario}        # TODO: pv, ev_charging or clean_heating",
        '    nameplate: {rated_power_kw: 10, meter_class: "1"}   # TODO: from the rating plate',
        f"    counts: [{counts}]   # the counter that is credited",
    ]
    return lines


def _guess(scan: UnitScan) -> tuple[str, str, str, str]:
    """(profile, counted quantity, scenario, comment) from what the unit showed."""
    chain = scan.sunspec.chain if scan.sunspec is not None else None
    if chain is not None:
        models = {b.id for b in chain.blocks}
        shown = ", ".join(str(m) for m in sorted(models))
        if models & INVERTER_MODELS:
            return "sunspec", "energy_generated", "pv", f"; SunSpec inverter (models {shown})"
        if models & METER_MODELS:
            return "sunspec", "energy_import", "pv", f"; SunSpec meter (models {shown})"
    return "sdm120", "energy_import", "clean_heating", ""


def _topic_lines(draft: SiteDraft) -> list[str]:
    if not draft.topics or draft.mqtt is None:
        return []
    host, port = draft.mqtt
    lines = [
        f"  # MQTT topics heard on {host}:{port}; to meter one, uncomment its block and pick the",
        "  # counter field (kind: counter) and its unit (Wh or kWh).",
    ]
    for i, seen in enumerate(draft.topics):
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", seen.topic).strip("-")[:40] or f"topic-{i}"
        fields = ", ".join(f"{k}={v:g}" for k, v in list(seen.fields.items())[:8])
        energy = next((k for k in seen.fields if re.search(r"energy|total|kwh|wh", k, re.I)), None)
        path = energy or next(iter(seen.fields))
        lines += [
            f"  # {seen.topic}: {fields}",
            f"  # - id: {name}",
            "  #   driver: mqtt",
            f"  #   connection: {{host: {_quote(host)}, port: {port}}}",
            "  #   scenario: pv",
            '  #   nameplate: {rated_power_kw: 3, meter_class: "1"}',
            f"  #   source: {{topic: {_quote(seen.topic)}, fields: {{energy: {{path: {path}, unit: Wh, "
            "kind: counter}}}",
            "  #   counts: [energy]",
        ]
    return lines


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML string


# -- MQTT ------------------------------------------------------------------------------------


async def listen_topics(host: str, port: int, wait_s: float) -> list[SeenTopic]:
    """The topics published on a broker within ``wait_s`` seconds whose payloads are JSON
    objects with numbers (first payload each, up to MAX_TOPICS). Raises aiomqtt.MqttError."""
    seen: dict[str, SeenTopic] = {}
    async with aiomqtt.Client(host, port, identifier=None) as client:
        await client.subscribe("#")
        try:
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    topic = str(message.topic)
                    if topic in seen or topic.startswith(f"{TOPIC_ROOT}/"):  # batches, acks: not meters
                        continue
                    fields = numeric_fields(message.payload)
                    if fields:
                        seen[topic] = SeenTopic(topic, fields)
                    if len(seen) >= MAX_TOPICS:
                        break
        except TimeoutError:
            pass  # the listening time is over: what was heard is the answer
    return sorted(seen.values(), key=lambda s: s.topic)


def numeric_fields(payload: object, prefix: str = "") -> dict[str, float]:
    """Dotted paths to the numbers of a JSON object payload (empty if not JSON)."""
    if isinstance(payload, bytes | bytearray | str):
        if len(payload) > 65536:
            return {}
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return {}
    if not isinstance(payload, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in payload.items():
        path = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[path] = float(value)
        elif isinstance(value, dict) and len(prefix) < 200:
            out.update(numeric_fields(value, path + "."))
    return out


# -- the command ----------------------------------------------------------------------------

Enrol = Callable[..., bytes]
OnUnit = Callable[[UnitScan], None]


class InitRefused(Exception):
    """init cannot go on; ``status`` is the exit status (1 nothing found, 2 usage)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def init_site(
    args: argparse.Namespace, target: Target | None, *, on_unit: OnUnit, enrol: Enrol,
    line: LineScanRequest | None = None,
) -> int:  # fmt: skip
    """``puhui gateway init``: scan (the Modbus ``target``, or the shared ``line``), write
    the config, make or reuse the key, write the enrolment; prints what was done. Returns
    the exit status."""
    try:
        _check_arguments(args)
        units = _scan(target, args, on_unit) if target is not None else []
        found = _scan_line(line) if line is not None else []
        topics = _listen(args)
        if not units and not any(m.answered for m in found):
            raise InitRefused(_nothing_found(target, line, topics), 1)
        mqtt = (args.mqtt_host, args.mqtt_port) if args.mqtt_host else None
        draft = SiteDraft(
            args.gateway_id, args.site, target, units, topics, mqtt, args.key_file, args.state_dir,
            line=line, line_meters=found,
        )  # fmt: skip
        text = render_site(draft, load_profiles())
        site = parse_site(yaml.safe_load(text), args.config.name, load_profiles())
    except InitRefused as exc:
        print(f"puhui gateway init: {exc}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return _write_all(args, text, site, enrol)


def _check_arguments(args: argparse.Namespace) -> None:
    try:
        GatewayInfo(id=args.gateway_id, site=args.site)
    except ValueError as exc:
        raise InitRefused(f"--gateway-id / --site: {exc}", 2) from exc
    if args.owner is not None:
        try:
            _group_of(args.owner)
        except LookupError as exc:
            raise InitRefused(str(exc), 2) from exc
    if args.config.exists() and not args.force:
        raise InitRefused(f"{args.config} exists; --force replaces it (the key is never replaced)", 2)


def _nothing_found(target: Target | None, line: LineScanRequest | None, topics: Sequence[SeenTopic]) -> str:
    heard = f"; topics heard: {', '.join(t.topic for t in topics)}" if topics else ""
    if line is None:
        return (f"no Modbus device answered on {target}: nothing written (check the wiring, --baud, "
                f"--parity and --units){heard}")  # fmt: skip
    asked = (("DL/T 645", line.dlt645), ("CJ/T 188", line.cjt188))
    which = " or ".join(name for name, wanted in asked if wanted)
    return (f"no {which} meter answered on {describe_line(line.settings)}: nothing written (check the "
            f"wiring, --baud, --parity and --addresses){heard}")  # fmt: skip


def _scan_line(line: LineScanRequest) -> list[LineMeterScan]:
    try:
        return scan_line(line)
    except LineScanRefused as exc:
        raise InitRefused(str(exc), 1) from exc


def _scan(target: Target, args: argparse.Namespace, on_unit: OnUnit) -> list[UnitScan]:
    print(f"init: scanning {target}, unit(s) {args.units[0]}..{args.units[-1]}, "
          f"{args.timeout:g} s per unit")  # fmt: skip

    async def scan() -> list[UnitScan]:
        found: list[UnitScan] = []
        async with Link(target, timeout_s=args.timeout) as link:
            async for result in scan_units(link, args.units, table="holding", address=0, count=1,
                                           sunspec=True):  # fmt: skip
                if result.read.answer in LINK_FAILURES:
                    raise InitRefused(f"{result.read.error}: nothing written", 1)
                on_unit(result)
                if result.read.present:
                    found.append(result)
        return found

    return asyncio.run(scan())


def _listen(args: argparse.Namespace) -> list[SeenTopic]:
    if not args.mqtt_host:
        return []
    print(f"init: listening {args.mqtt_wait:g} s for MQTT topics on {args.mqtt_host}:{args.mqtt_port}")
    try:
        topics = asyncio.run(listen_topics(args.mqtt_host, args.mqtt_port, args.mqtt_wait))
    except aiomqtt.MqttError as exc:
        raise InitRefused(f"MQTT broker {args.mqtt_host}:{args.mqtt_port}: {exc}", 1) from exc
    for t in topics:
        print(f"  topic {t.topic}: {', '.join(list(t.fields)[:6])}")
    return topics


def _write_all(args: argparse.Namespace, text: str, site: SiteConfig, enrol: Enrol) -> int:
    try:
        key, made = _key(Path(args.key_file), args.owner)
        _write(args.config, text.encode(), 0o640, args.owner, group_only=True)
        enrolment = args.enrolment or args.config.with_name("enrolment.json")
        _write(enrolment, enrol(site, key, created_ms=int(time.time() * 1000)), 0o644, None)
    except (OSError, EvidenceError, LookupError) as exc:
        print(f"puhui gateway init: {exc}", file=sys.stderr)
        return 1
    meters = len(site.meters)
    print(f"{args.config}: {meters} meter(s) from the scan; edit the lines marked TODO")
    print(f"{args.key_file}: {'new P-256 key' if made else 'existing key kept'}, key id {key.key_id}")
    print(f"enrolment for the operator: {enrolment}")
    print(f"  gateway {site.gateway.id} at {site.gateway.site}, {meters} meter(s)")
    print(f"  key id {key.key_id}")
    print(f"  public key {public_key_b64(key.public_key)}")
    print(f"  after editing the meters: puhui gateway enrol --config {args.config} --out {enrolment}")
    print(f"next: puhui gateway check --config {args.config} --live")
    return 0


def _key(path: Path, owner: str | None) -> tuple[GatewayKey, bool]:
    """The existing key (checked), or a new one (0600, owned by ``owner``)."""
    if path.exists():
        return load_private_key(path), False
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    key = generate_key()
    save_private_key(key, path)
    if owner is not None:
        shutil.chown(path, owner, _group_of(owner))
    return key, True


def _write(path: Path, data: bytes, mode: int, owner: str | None, *, group_only: bool = False) -> None:
    """Write a file whole (temporary file, then rename); owned by ``owner`` (or readable by
    its group only, with ``group_only``)."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if owner is not None:
        if group_only:
            shutil.chown(tmp, group=_group_of(owner))
        else:
            shutil.chown(tmp, owner, _group_of(owner))
    os.replace(tmp, path)


def _group_of(user: str) -> int:
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError as exc:
        raise LookupError(f"--owner {user}: no such user") from exc


__all__ = ["SeenTopic", "SiteDraft", "init_site", "listen_topics", "numeric_fields", "render_site"]
