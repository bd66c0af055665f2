"""``puhui aggregator reductions``: compute, list, show and verify reduction statements.

Every command takes ``--db``, the aggregator's SQLite database: the evidence store
(``aggregator.store.EvidenceStore``, imported only when a command runs) and the statement
tables live there. Tests inject an evidence source with ``args.open_evidence``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aggregator.methodology.baseline import load_baselines
from aggregator.methodology.engine import compute
from aggregator.methodology.errors import MethodologyError
from aggregator.methodology.filing import Selection, require_filed, select_for_unit, unit_region
from aggregator.methodology.params import (
    PARAMS_DIR,
    LoadedParameterSet,
    list_parameter_sets,
    load_parameter_set,
)
from aggregator.methodology.source import EvidenceSource
from aggregator.methodology.statements import issue_statement, parse_statement
from aggregator.methodology.store import StatementStore
from aggregator.methodology.subject import CHINA_TZ, Period, Subject, Unit
from aggregator.methodology.verify import verify_statement
from evidence.errors import EvidenceError
from evidence.keylist import verify_keylist
from evidence.keys import key_id, load_private_key, load_public_key

SCENARIOS = ("pv", "ev_charging", "clean_heating")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("compute", help="compute, sign and store a statement for a subject and period")
    _db(p)
    p.add_argument("--key", type=Path, required=True, help="aggregator private key (PKCS#8 PEM, mode 0600)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--params", type=Path, help="parameter set file (config/methodologies/)")
    which.add_argument(
        "--scenario",
        choices=SCENARIOS,
        help="let the precedence rule pick the set among --params-dir for the meters' region",
    )
    p.add_argument("--params-dir", type=Path, default=PARAMS_DIR, help="the sets --scenario picks from")
    p.add_argument(
        "--production",
        action="store_true",
        help="sign only with a filed parameter set valid for the whole period (docs/methodologies.md)",
    )
    p.add_argument("--gateway", required=True)
    p.add_argument("--meter", action="append", default=[], help="a meter as its own unit (repeatable)")
    p.add_argument("--unit", action="append", default=[], help="ID=METER+METER: meters earning as one unit")
    p.add_argument("--start", type=_time, required=True, help="POSIX seconds or ISO 8601 with offset")
    p.add_argument("--end", type=_time, required=True)
    p.add_argument(
        "--baseline",
        type=Path,
        help="heating units' recorded coal use (puhui-heating-baseline/1 YAML): caps their baseline",
    )
    p.add_argument(
        "--sessions-from",
        metavar="NETWORK",
        help="also credit this network's imported sessions on the subject's chargers (platform_attested)",
    )
    p.add_argument("--influx-url", help="also write the statement to InfluxDB (v1 HTTP API)")
    p.add_argument("--influx-db", default="puhui")
    p.set_defaults(func=_compute)
    p = sub.add_parser("list", help="list stored statements")
    _db(p)
    p.add_argument("--gateway")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="print a stored statement (JSON)")
    _db(p)
    p.add_argument("statement", help="statement id (or a unique prefix of >= 8 hex digits)")
    p.set_defaults(func=_show)
    p = sub.add_parser("verify", help="verify a statement: signature, evidence, recomputed ER")
    _db(p)
    p.add_argument("--issuer", type=Path, required=True, help="aggregator public key (PEM or DER), pinned")
    p.add_argument("--keys", type=Path, help="the aggregator's signed key list: keys rotated after --issuer")
    p.add_argument("--params-dir", type=Path, default=PARAMS_DIR)
    p.add_argument("statement", help="a .statement file, or a statement id (or a prefix of >= 8 hex digits)")
    p.set_defaults(func=_verify)
    p = sub.add_parser("package", help="write the portable evidence package of a statement")
    _db(p)
    p.add_argument("statement", help="statement id (or a unique prefix of >= 8 hex digits)")
    p.add_argument("--out", type=Path, required=True, help="the package file to write (.zip)")
    p.add_argument("--key", type=Path, help="aggregator private key: include a freshly signed key list")
    p.add_argument("--params-dir", type=Path, default=PARAMS_DIR)
    p.set_defaults(func=_package)


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, required=True, help="aggregator SQLite database")
    p.set_defaults(open_evidence=_open_evidence_store)


def _open_evidence_store(db: Path) -> EvidenceSource:
    from aggregator.store import SQLiteEvidenceStore

    return SQLiteEvidenceStore(db)


def _time(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a UTC offset (e.g. +08:00)")
    return int(moment.timestamp())


def _when(t: int) -> str:
    """A period bound as people and programmes read it: China time with its offset."""
    return datetime.fromtimestamp(t, CHINA_TZ).isoformat(timespec="minutes")


ELLIPSES = ("…", "...")


def statement_ref(text: str) -> str:
    """A statement id as a person pastes it: 64 hex digits, or a prefix of at least 8, with or
    without the ``…`` the tools print after a shortened id."""
    ref = text.strip()
    for ellipsis in ELLIPSES:
        ref = ref.removesuffix(ellipsis)
    ref = ref.lower()
    if not 8 <= len(ref) <= 64 or ref.strip("0123456789abcdef"):
        raise MethodologyError(
            f"{text!r} is not a statement id: give its 64 hex digits or a prefix of at least 8 "
            "(as `reductions list` prints them; a trailing … is fine)"
        )
    return ref


def _not_found(args: argparse.Namespace) -> str:
    return (
        f"no statement {statement_ref(args.statement)}… in {args.db} (or the prefix names more than one; "
        f"`puhui aggregator reductions list --db {args.db}` lists them)"
    )


def _fail(message: str) -> int:
    print(f"puhui aggregator reductions: {message}", file=sys.stderr)
    return 1


def _subject(args: argparse.Namespace) -> Subject:
    units = [Unit(m, (m,)) for m in args.meter]
    for spec in args.unit:
        uid, _, meters = spec.partition("=")
        if not uid or not meters:
            raise MethodologyError(f"--unit {spec!r}: expected ID=METER+METER")
        units.append(Unit(uid, tuple(meters.split("+"))))
    return Subject(args.gateway, tuple(units))


def _parameter_set(
    args: argparse.Namespace, source: EvidenceSource, subject: Subject, period: Period
) -> tuple[LoadedParameterSet, Selection | None]:
    """``--params`` as given, or the set the precedence rule picks for the meters' region."""
    if args.params is not None:
        return load_parameter_set(args.params), None
    known = {m.meter: m for m in source.meters() if m.gateway == subject.gateway}
    missing = [m for m in subject.meters if m not in known]
    if missing:
        raise MethodologyError(f"gateway {subject.gateway}: meters {missing} are not enrolled")
    region = unit_region(known[m].region for m in subject.meters)
    sets = list_parameter_sets(args.params_dir)
    selection = select_for_unit(sets, args.scenario, region, period, args.production)
    return selection.chosen, selection


def _compute(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
        source = args.open_evidence(args.db)
        subject, period = _subject(args), Period(args.start, args.end)
        params, selection = _parameter_set(args, source, subject, period)
        if args.production:
            require_filed(params, period)
        baselines = load_baselines(args.baseline) if args.baseline else None
        sessions = _sessions(source, args.sessions_from, subject, period)
        comp = compute(source, params, subject, period, baselines=baselines, sessions=sessions)
        if not comp.result.used and not any(comp.result.excluded.values()) and not sessions:
            return _fail(
                f"gateway {args.gateway}: no attested interval of {', '.join(comp.subject.meters)} in "
                f"{_when(args.start)} .. {_when(args.end)}: nothing to state, no statement signed"
            )
        statement = issue_statement(
            comp,
            key,
            created_ms=time.time_ns() // 1_000_000,
            selection=None if selection is None else selection.to_json(),
            production=args.production,
        )
        with StatementStore(args.db) as store:
            store.save(statement)
    except (MethodologyError, EvidenceError, OSError) as exc:
        return _fail(str(exc))
    if args.influx_url:
        asyncio.run(_to_influx(args.influx_url, args.influx_db, statement))
    _summary(statement.body, statement.id)
    return 0


async def _to_influx(url: str, db: str, statement: Any) -> None:
    from aggregator.influx import InfluxV1Client
    from aggregator.methodology.influx import write_statement

    async with InfluxV1Client(url, db) as client:
        await write_statement(client, statement)


def _summary(body: dict[str, Any], statement_id: str) -> None:
    r, ev = body["result"], body["evidence"]
    print(
        f"statement {statement_id}\n  {body['methodology']['parameter_set']['id']} "
        f"{body['methodology']['parameter_set']['version']}, period {_when(body['period']['start'])}"
        f" .. {_when(body['period']['end'])}\n"
        f"  BE {r['be_tco2e']:.6f}  PE {r['pe_tco2e']:.6f}  LE {r['le_tco2e']:.6f}"
        f"  ER {r['er_tco2e']:.6f} tCO2e\n  completeness {body['completeness']['value']:.4f}, "
        f"intervals used {ev['intervals_used']}, excluded {ev['intervals_excluded']} "
        f"{json.dumps(ev['excluded_by_reason'])}, missing {ev['intervals_missing']}"
    )
    kwh = {lv: d["kwh"] for lv, d in body.get("assurance", {}).get("levels", {}).items() if "kwh" in d}
    if kwh:
        print("  by assurance: " + ", ".join(f"{lv} {v:.3f} kWh" for lv, v in kwh.items()))
    chain = ev.get("chain_sessions")
    if chain is not None:
        counts = ", ".join(f"{n} {s}" for s, n in chain.get("by_status", {}).items()) or "none"
        print(f"  OCPP session records: {counts}" if chain["looked_up"] else f"  {chain['why']}")
    m = body["methodology"]
    if "selection" in m:
        sel = m["selection"]
        print(
            f"  chosen by {sel['rule']} ({sel['reason']}) among {len(sel['candidates'])} "
            f"{sel['scenario']} sets for region {sel['region']}"
        )
    if m.get("production"):
        f = m["filing"]
        standard = f", {f['standard']}" if f["standard"] else ""
        print(f"  production: filing {f['number']} ({f['authority']}), tier {f['tier']}{standard}")


def _with_store(args: argparse.Namespace, action: Callable[[StatementStore], int]) -> int:
    try:
        with StatementStore(args.db) as store:
            return action(store)
    except (MethodologyError, OSError) as exc:
        return _fail(str(exc))


def _list(args: argparse.Namespace) -> int:
    def run(store: StatementStore) -> int:
        for s in store.list(gateway=args.gateway):
            print(
                f"{s.id}  {s.gateway}  {s.scenario}  {s.parameter_set} {s.parameter_version}  "
                f"{_when(s.period_start)} .. {_when(s.period_end)}  ER {s.er_tco2e:.6f} tCO2e"
            )
        return 0

    return _with_store(args, run)


def _show(args: argparse.Namespace) -> int:
    def run(store: StatementStore) -> int:
        st = store.get(statement_ref(args.statement))
        if st is None:
            return _fail(_not_found(args))
        print(json.dumps({"id": st.id, "body": st.body, "key_id": st.key_id}, indent=2, sort_keys=True))
        return 0

    return _with_store(args, run)


def _statement_document(store: StatementStore, ref: str) -> bytes | None:
    """The statement ``ref`` names: a ``.statement`` file (as the tools write them, e.g. one a
    platform received), or an id or id prefix in the store."""
    path = Path(ref)
    if path.suffix == ".statement" or path.is_file():
        try:
            return path.read_bytes()
        except OSError as exc:
            raise MethodologyError(f"{ref}: cannot read the statement file: {exc.strerror or exc}") from exc
    st = store.get(statement_ref(ref))
    return None if st is None else store.document(st.id)


def _sessions(source: EvidenceSource, network: str | None, subject: Subject, period: Period) -> list[Any]:
    """A network's imported sessions on the subject's chargers in the period (issue 24)."""
    if network is None:
        return []
    if not hasattr(source, "imported_sessions"):
        raise MethodologyError("--sessions-from: this evidence store keeps no imported sessions")
    found: list[Any] = source.imported_sessions(
        network, chargers=subject.meters, start_ms=period.start * 1000, end_ms=period.end * 1000
    )
    return found


def _verify(args: argparse.Namespace) -> int:
    def run(store: StatementStore) -> int:
        document = _statement_document(store, args.statement)
        if document is None:
            return _fail(_not_found(args))
        issuer = load_public_key(args.issuer.read_bytes())
        if args.keys is not None:  # the key valid when the statement was signed, trusted from --issuer
            st_doc = parse_statement(document)
            valid = verify_keylist(args.keys.read_bytes(), issuer).aggregator_key_at(
                int(st_doc.body["created_ms"]), st_doc.key_id
            )
            if valid is None:
                return _fail(
                    f"statement {args.statement}: signed by key {st_doc.key_id}, which the key list (trusted "
                    f"from {key_id(issuer)}) does not give as valid at {st_doc.body['created_ms']} ms"
                )
            issuer = valid
        source = args.open_evidence(args.db)
        report = verify_statement(
            document, issuer_key=issuer, source=source, params_dir=args.params_dir,
            sessions=source if hasattr(source, "imported_sessions") else None,
        )  # fmt: skip
        print(report, file=sys.stdout if report.ok else sys.stderr)
        return 0 if report.ok else 1

    try:
        return _with_store(args, run)
    except EvidenceError as exc:
        return _fail(str(exc))


def _package(args: argparse.Namespace) -> int:
    from aggregator.package import write_package_file

    return write_package_file(args, statement_ref(args.statement), _fail)
