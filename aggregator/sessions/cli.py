"""``puhui aggregator networks`` and ``puhui aggregator sessions`` (docs/ev-sessions.md).

::

    puhui aggregator networks --config aggregator.yaml add NAME --key network.pub.pem [--region R]
    puhui aggregator networks --config aggregator.yaml list
    puhui aggregator sessions --config aggregator.yaml import FILE --manifest M --network NAME
    puhui aggregator sessions --config aggregator.yaml list --network NAME

``import`` prints one line of counts and one line per refused record (session id, field,
why); exit status 0 when the import was taken (even if some records were refused: they are
listed), 1 when it was refused as a whole (manifest, unknown network, not a session file),
2 for a usage or config error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aggregator.config import load_config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.sessions.intake import enrol_network, import_sessions, network_entry, open_session_store
from aggregator.store.sqlite import SQLiteEvidenceStore
from evidence.errors import EvidenceError


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="aggregator YAML config (for the store)")
    sub = parser.add_subparsers(dest="networks_action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="enrol a charging network and pin its manifest key")
    p.add_argument("network")
    p.add_argument("--key", type=Path, required=True, help="the network's public key (PEM, ECDSA P-256)")
    p.add_argument("--region", help="grid region its chargers are in (as a meter enrolment names it)")
    p.set_defaults(func=_add)
    p = sub.add_parser("list", help="enrolled networks and their pinned key ids")
    p.set_defaults(func=_networks)


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="aggregator YAML config (for the store)")
    sub = parser.add_subparsers(dest="sessions_action", metavar="ACTION", required=True)
    p = sub.add_parser("import", help="import a network's session file (JSON or CSV) with its manifest")
    p.add_argument("file", type=Path)
    p.add_argument("--manifest", type=Path, required=True, help="the network's signed manifest for FILE")
    p.add_argument("--network", required=True)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_import)
    p = sub.add_parser("list", help="imports of a network and what each took")
    p.add_argument("--network", required=True)
    p.set_defaults(func=_imports)


def _fail(message: str, status: int = 1) -> int:
    print(f"puhui aggregator: {message}", file=sys.stderr)
    return status


def _with_store(args: argparse.Namespace, work: Callable[[SQLiteEvidenceStore], int]) -> int:
    try:
        store = open_session_store(load_config(args.config).store)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except AggregatorError as exc:
        return _fail(str(exc))
    try:
        return work(store)
    except (AggregatorError, EvidenceError) as exc:
        return _fail(str(exc))
    finally:
        store.close()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _add(args: argparse.Namespace) -> int:
    def work(store: SQLiteEvidenceStore) -> int:
        entry = enrol_network(
            store, args.network, _read(args.key), region=args.region, now_ms=time.time_ns() // 1_000_000
        )
        print(f"network {entry.network}: key {entry.key_id} pinned, region {entry.region or '-'}")
        return 0

    try:
        return _with_store(args, work)
    except ConfigError as exc:
        return _fail(str(exc))


def _networks(args: argparse.Namespace) -> int:
    def work(store: SQLiteEvidenceStore) -> int:
        for n in store.networks():
            print(f"{n.network}\tkey {n.key_id}\tregion {n.region or '-'}")
        return 0

    return _with_store(args, work)


def _import(args: argparse.Namespace) -> int:
    try:
        data, manifest = _read(args.file), _read(args.manifest)
    except ConfigError as exc:
        return _fail(str(exc))

    def work(store: SQLiteEvidenceStore) -> int:
        report = import_sessions(
            store, args.network, data, manifest, now_ms=time.time_ns() // 1_000_000, via="file",
            name=str(args.file),
        )  # fmt: skip
        if args.json:
            print(json.dumps(report.to_json(), indent=1))
            return 0
        print(
            f"{args.file}: {report.records} records: {len(report.accepted)} accepted, "
            f"{len(report.duplicate)} duplicate, {len(report.refused)} refused (import {report.import_id}, "
            f"sha256 {report.source_sha256})"
        )
        for r in report.refused:
            print(f"  refused {r}")
        return 0

    return _with_store(args, work)


def _imports(args: argparse.Namespace) -> int:
    def work(store: SQLiteEvidenceStore) -> int:
        network_entry(store, args.network)
        for r in store.session_imports(args.network):
            print(
                f"import {r['import_id']}\tvia {r['via']}\tsha256 {r['source_sha256']}\t"
                f"{r['records']} records: "
                f"{r['accepted']} accepted, {r['duplicate']} duplicate, {r['refused']} refused"
            )
        held = store.imported_sessions(args.network)
        print(
            f"{args.network}: {len(held)} sessions held, {sum(s.record.energy_wh for s in held) / 1000:g} kWh"
        )
        return 0

    return _with_store(args, work)
