"""``puhui aggregator``: run the aggregator, manage the gateway registry, make its key.

::

    puhui aggregator run --config aggregator.yaml
    puhui aggregator gateways --config aggregator.yaml add gw-1.enrolment
    puhui aggregator gateways --config aggregator.yaml list
    puhui aggregator gateways --config aggregator.yaml revoke gw-1 [--from 2026-03-01T00:00:00Z] [--key KID]
    puhui aggregator keygen --out aggregator-key.pem
    puhui aggregator api --config aggregator.yaml
    puhui aggregator tokens --config aggregator.yaml create --name city --scope statements:read
    puhui aggregator units --config aggregator.yaml add|beneficiary|withdraw|list|status|export|records
    puhui aggregator push --config aggregator.yaml [status | retry TARGET]
    puhui aggregator networks --config aggregator.yaml add NAME --key network.pub.pem [--region R]
    puhui aggregator sessions --config aggregator.yaml import FILE --manifest M --network NAME
    puhui aggregator chain-sessions --db evidence.sqlite3 list | export --ocmf CHARGER/TX [--out FILE]

Exit status, as for ``puhui gateway``: 0 done; 1 the command failed (store, registry,
enrolment document refused); 2 a usage or config error (the message names the file and
the field). No traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator import checkpoints, keys
from aggregator.api import cli as api_cli
from aggregator.config import AggregatorConfig, load_config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.methodology import cli as methodology_cli
from aggregator.ocmf_export import ExportError, transparency_xml
from aggregator.programme import cli as programme_cli
from aggregator.programme.errors import ProgrammeError
from aggregator.push import cli as push_cli
from aggregator.push.errors import PushError
from aggregator.registry import GatewayRegistry
from aggregator.sessions import cli as sessions_cli
from aggregator.store import SQLiteEvidenceStore, open_evidence_store
from common.sdnotify import NotifyError, ServiceNotifier
from common.tls import SecretError
from evidence import cli as evidence_cli
from evidence.errors import EvidenceError
from evidence.records import SessionRecord, decode_record

if TYPE_CHECKING:  # the PostgreSQL driver is imported only when a config names PostgreSQL
    from aggregator.store.postgres import PostgresEvidenceStore

EXIT_STATUS = (
    "exit status: 0 done; 1 the command failed (store, registry, a refused document); "
    "2 a usage or config error (the message names the file and field)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_sessions(
        sub.add_parser("chain-sessions", help="OCPP charging sessions sealed by gateways: list, export")
    )

    p = sub.add_parser("run", help="verify, store and acknowledge batches; feed InfluxDB")
    p.add_argument("--config", type=Path, required=True, help="aggregator YAML config")
    p.set_defaults(func=_run)

    p = sub.add_parser("gateways", help="the gateway registry: add, list, revoke")
    p.add_argument("--config", type=Path, required=True, help="aggregator YAML config (for the store)")
    gw = p.add_subparsers(dest="gateways_action", metavar="ACTION", required=True)
    q = gw.add_parser("add", help="enrol a gateway from its enrolment document")
    q.add_argument("document", type=Path)
    q.set_defaults(func=_add)
    q = gw.add_parser("list", help="enrolled gateways, keys and meters")
    q.set_defaults(func=_list)
    q = gw.add_parser("revoke", help="revoke a gateway's key(s) from a time on")
    q.add_argument("gateway")
    q.add_argument("--from", dest="from_time", help="ISO 8601 time or POSIX seconds (default: now)")
    q.add_argument("--key", help="key id to revoke (default: every key of the gateway)")
    q.set_defaults(func=_revoke)

    p = sub.add_parser("keygen", help="make the aggregator's reply-signing key (PKCS#8 PEM, mode 0600)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=evidence_cli.keygen)  # the same key file rules as any puhui key

    methodology_cli.add_arguments(
        sub.add_parser("reductions", help="compute, list, show and verify signed reduction statements")
    )
    keys.add_arguments(sub.add_parser("keys", help="rotate, revoke and publish the aggregator's keys"))
    checkpoints.add_arguments(
        sub.add_parser("checkpoint", help="sign checkpoints of the evidence store; detect truncation")
    )
    programme_cli.add_arguments(
        sub.add_parser("units", help="the programme's units and beneficiaries, scheduled statements, records")
    )
    api_cli.add_api_arguments(sub.add_parser("api", help="serve the platform API (HTTPS, bearer tokens)"))
    api_cli.add_token_arguments(
        sub.add_parser("tokens", help="make, list and revoke the API's bearer tokens")
    )
    push_cli.add_arguments(
        sub.add_parser("push", help="POST every statement to platforms that take data by push; status")
    )
    sessions_cli.add_network_arguments(
        sub.add_parser("networks", help="charging networks whose session records are imported: add, list")
    )
    sessions_cli.add_session_arguments(
        sub.add_parser("sessions", help="import a network's session records (file + signed manifest); list")
    )


def _add_sessions(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", type=Path, required=True, help="the SQLite evidence store (chain sessions: SQLite only)"
    )
    ss = p.add_subparsers(dest="sessions_action", metavar="ACTION", required=True)
    q = ss.add_parser("list", help="OCPP sessions sealed by gateways: charger/transaction, energy, assurance")
    q.add_argument("--gateway")
    q.set_defaults(func=_sessions_list)
    q = ss.add_parser("export", help="a session's meter-signed values as OCMF for transparency software")
    q.add_argument("session", help="CHARGER/TRANSACTION_ID (as 'chain-sessions list' shows)")
    q.add_argument(
        "--ocmf", action="store_true", required=True, help="OCMF in the transparency software's XML"
    )
    q.add_argument("--gateway", help="the gateway, if the charger's transaction id is in several chains")
    q.add_argument("--out", type=Path, help="file to write (default: standard output)")
    q.set_defaults(func=_sessions_export)


def _chain_sessions(args: argparse.Namespace, **match: str | None) -> list[tuple[str, SessionRecord]]:
    if not args.db.is_file():
        raise AggregatorError(f"{args.db}: no such evidence store")
    store = SQLiteEvidenceStore(args.db)
    try:
        found = store.chain_sessions(
            gateway=args.gateway, charger=match.get("charger"), transaction_id=match.get("transaction_id")
        )
    finally:
        store.close()
    out = []
    for ref, index, raw in found:
        record = decode_record(raw)
        if not isinstance(record, SessionRecord):
            raise AggregatorError(
                f"{ref.gateway}#{ref.seq} record {index} is a {record.type} record, not a session"
            )
        out.append((f"{ref.gateway}#{ref.seq}[{index}]", record))
    return out


def _sessions_list(args: argparse.Namespace) -> int:
    try:
        for where, r in _chain_sessions(args):
            energy = "-" if r.energy_wh is None else f"{r.energy_wh:.0f} Wh"
            flags = ",".join(r.flags) or "-"
            print(f"{r.charger}/{r.transaction_id}	{r.meter}	{_ms(r.start_time_ms)}	{_ms(r.stop_time_ms)}"
                  f"	{energy}	{r.assurance}	{flags}	{where}")  # fmt: skip
    except (AggregatorError, EvidenceError) as exc:
        return _fail(str(exc))
    return 0


def _sessions_export(args: argparse.Namespace) -> int:
    charger, sep, tx = args.session.rpartition("/")
    if not sep or not charger or not tx:
        print(f"puhui aggregator: session {args.session!r}: expected CHARGER/TRANSACTION_ID", file=sys.stderr)
        return 2
    try:
        found = _chain_sessions(args, charger=charger, transaction_id=tx)
        if len(found) != 1:
            where = ", ".join(w for w, _ in found) or "none"
            raise AggregatorError(f"session {args.session}: {len(found)} chain sessions match ({where})"
                                  + ("; name one with --gateway" if found else ""))  # fmt: skip
        text = transparency_xml(found[0][1])
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text, encoding="utf-8")
    except (AggregatorError, EvidenceError, ExportError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.out}: {exc.strerror or exc}")
    return 0


def _fail(message: str) -> int:
    print(f"puhui aggregator: {message}", file=sys.stderr)
    return 1


def _config_error(exc: ConfigError) -> int:
    print(exc, file=sys.stderr)  # every line names the file and the path inside it
    return 2


def _config(args: argparse.Namespace) -> AggregatorConfig:
    return load_config(args.config)


def _run(args: argparse.Namespace) -> int:
    from aggregator.service import Aggregator, tune_gc  # aiomqtt and httpx only when running

    try:
        config = _config(args)
        tune_gc()

        async def main() -> None:
            task = asyncio.current_task()
            assert task is not None
            # SIGTERM (systemd, docker stop) ends the run like Ctrl-C: tasks cancelled, store closed.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            # systemd Type=notify: ready once the store, registry and tasks are up; watchdog pings
            async with Aggregator(config) as agg, ServiceNotifier() as notifier:
                notifier.ready("aggregator: verifying batches")
                await agg.run_forever()

        asyncio.run(main())
    except asyncio.CancelledError:
        return 0
    except ConfigError as exc:
        return _config_error(exc)
    except (AggregatorError, EvidenceError, NotifyError, SecretError, ProgrammeError, PushError) as exc:
        return _fail(str(exc))
    return 0


def _registry(
    args: argparse.Namespace,
) -> tuple[SQLiteEvidenceStore | PostgresEvidenceStore, GatewayRegistry]:
    store = open_evidence_store(_config(args).store)
    return store, GatewayRegistry(store)


def _add(args: argparse.Namespace) -> int:
    try:
        data = args.document.read_bytes()
        store, registry = _registry(args)
        try:
            entry = registry.enrol(data, at_ms=int(time.time() * 1000))
        finally:
            store.close()
    except OSError as exc:
        return _fail(f"{args.document}: {exc.strerror or exc}")
    except ConfigError as exc:
        return _config_error(exc)
    except (AggregatorError, EvidenceError) as exc:
        return _fail(f"{args.document}: {exc}")
    key = entry.keys[-1].key_id
    print(f"enrolled {entry.gateway} (site {entry.site}, {len(entry.meters)} meters, key {key})")
    return 0


def _ms(value: int | None) -> str:
    return "-" if value is None else datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="seconds")


def _list(args: argparse.Namespace) -> int:
    try:
        store, registry = _registry(args)
        try:
            for g in registry.gateways():
                batches = store.batch_count(g.gateway)
                print(f"{g.gateway}\tsite={g.site}\tregion={g.region or '-'}\tbatches={batches}")
                for k in g.keys:
                    revoked = _ms(k.revoked_from_ms)
                    print(
                        f"  key {k.key_id}\tfrom seq {k.valid_from_seq}\t{k.source}\trevoked from {revoked}"
                    )
                for m in g.meters:
                    print(f"  meter {m.meter}\t{m.scenario}\t{m.rated_power_kw} kW\tclass {m.meter_class}")
        finally:
            store.close()
    except ConfigError as exc:
        return _config_error(exc)
    except AggregatorError as exc:
        return _fail(str(exc))
    return 0


def parse_time(text: str) -> int:
    """POSIX seconds or ISO 8601 (naive means UTC) -> POSIX milliseconds."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _revoke(args: argparse.Namespace) -> int:
    try:
        from_ms = parse_time(args.from_time) if args.from_time else int(time.time() * 1000)
    except ValueError as exc:
        return _fail(f"--from {args.from_time!r}: {exc}")
    try:
        store, registry = _registry(args)
        try:
            ids = registry.revoke(args.gateway, from_ms=from_ms, key=args.key)
        finally:
            store.close()
    except ConfigError as exc:
        return _config_error(exc)
    except AggregatorError as exc:
        return _fail(str(exc))
    for kid in ids:
        print(f"revoked {args.gateway} key {kid} from {_ms(from_ms)}")
    return 0
