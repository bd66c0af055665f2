"""``puhui aggregator units``: the programme's units, beneficiaries, statements and records.

::

    puhui aggregator units --config C add house-7 --gateway gw-1 --meter hp-7-elec --meter hp-7-heat \\
        --scenario clean_heating --beneficiary acct-83f2 [--from 2026-11-01T00:00+08:00]
    puhui aggregator units --config C beneficiary house-7 acct-91aa --from 2027-01-01T00:00+08:00
    puhui aggregator units --config C withdraw house-7 --from 2027-04-01T00:00+08:00
    puhui aggregator units --config C list [--gateway G] [--beneficiary REF]
    puhui aggregator units --config C status          statements signed by the schedule; problems
    puhui aggregator units --config C export house-7 --out DIR     a household's data, for it
    puhui aggregator units --config C records --out FILE [--site S]  the project library's record

Exit status: 0 done; 1 refused (the message says why); 2 usage or config error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from aggregator.config import AggregatorConfig, load_config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.methodology.errors import MethodologyError
from aggregator.methodology.params import load_parameter_set
from aggregator.methodology.store import StatementStore
from aggregator.methodology.subject import CHINA_TZ
from aggregator.programme.errors import ProgrammeError
from aggregator.programme.units import SCENARIOS, UnitRegistry
from aggregator.store.sqldb import Db, open_programme_db


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="aggregator YAML config (for the store)")
    sub = parser.add_subparsers(dest="units_action", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="enrol a unit with its beneficiary")
    p.add_argument("unit")
    p.add_argument("--gateway", required=True)
    p.add_argument("--meter", action="append", required=True, help="a meter of the unit (repeatable)")
    p.add_argument("--scenario", required=True, choices=SCENARIOS)
    p.add_argument("--beneficiary", required=True, help="the platform's pseudonymous account id")
    p.add_argument("--from", dest="from_time", help="credited from (ISO 8601 with offset; default now)")
    p.set_defaults(func=_add)
    p = sub.add_parser("beneficiary", help="the unit's reductions go to another account from a date on")
    p.add_argument("unit")
    p.add_argument("beneficiary")
    p.add_argument("--from", dest="from_time", required=True, help="ISO 8601 with offset")
    p.set_defaults(func=_beneficiary)
    p = sub.add_parser("withdraw", help="the unit earns nothing from a date on")
    p.add_argument("unit")
    p.add_argument("--from", dest="from_time", required=True, help="ISO 8601 with offset")
    p.set_defaults(func=_withdraw)
    p = sub.add_parser("list", help="units with their current beneficiary")
    p.add_argument("--gateway")
    p.add_argument("--beneficiary")
    p.set_defaults(func=_list)
    p = sub.add_parser("status", help="statements the schedule signed, and what kept it from signing")
    p.set_defaults(func=_status)
    p = sub.add_parser("export", help="everything kept about one unit, for its household")
    p.add_argument("unit")
    p.add_argument("--out", type=Path, required=True, help="a new directory")
    p.set_defaults(func=_export)
    p = sub.add_parser("records", help="the project record a platform's project library files (JSON)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--site", help="one site only")
    p.set_defaults(func=_records)


def _fail(message: str, status: int = 1) -> int:
    print(f"puhui aggregator units: {message}", file=sys.stderr)
    return status


def _when(text: str | None) -> int:
    """Milliseconds since the epoch of an ISO 8601 time with offset (or POSIX seconds)."""
    if text is None:
        return time.time_ns() // 1_000_000
    if text.lstrip("-").isdigit():
        return int(text) * 1000
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ProgrammeError(f"--from {text!r}: not an ISO 8601 time ({exc})") from exc
    if moment.tzinfo is None:
        raise ProgrammeError(f"--from {text!r}: give a UTC offset (e.g. 2026-11-01T00:00+08:00)")
    return round(moment.timestamp() * 1000)


def _day(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, CHINA_TZ).isoformat(timespec="minutes")


def _run(args: argparse.Namespace, action: Any) -> int:
    try:
        config: AggregatorConfig = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    try:
        db = open_programme_db(config.store)  # PostgreSQL's database with a PostgreSQL store
        try:
            with UnitRegistry(db) as units:
                return int(action(config, units, db))
        finally:
            db.close()
    except (ProgrammeError, MethodologyError, AggregatorError, OSError) as exc:
        return _fail(str(exc))


def _add(args: argparse.Namespace) -> int:
    def act(config: AggregatorConfig, units: UnitRegistry, db: Db) -> int:
        start = _when(args.from_time)
        u = units.add(
            args.unit,
            gateway=args.gateway,
            meters=args.meter,
            scenario=args.scenario,
            beneficiary=args.beneficiary,
            start_ms=start,
            now_ms=time.time_ns() // 1_000_000,
        )
        print(
            f"unit {u.unit}: {u.scenario}, {u.gateway}/{'+'.join(u.meters)}, from {_day(u.start_ms)}, "
            f"beneficiary {args.beneficiary}"
        )
        return 0

    return _run(args, act)


def _beneficiary(args: argparse.Namespace) -> int:
    def act(config: AggregatorConfig, units: UnitRegistry, db: Db) -> int:
        b = units.set_beneficiary(
            args.unit, args.beneficiary, from_ms=_when(args.from_time), now_ms=time.time_ns() // 1_000_000
        )
        print(f"unit {b.unit}: beneficiary {b.beneficiary} from {_day(b.from_ms)}")
        return 0

    return _run(args, act)


def _withdraw(args: argparse.Namespace) -> int:
    def act(config: AggregatorConfig, units: UnitRegistry, db: Db) -> int:
        units.withdraw(args.unit, from_ms=_when(args.from_time))
        print(f"unit {args.unit}: withdrawn from {_day(_when(args.from_time))}")
        return 0

    return _run(args, act)


def _list(args: argparse.Namespace) -> int:
    def act(config: AggregatorConfig, units: UnitRegistry, db: Db) -> int:
        for u in units.units(gateway=args.gateway, beneficiary=args.beneficiary):
            history = units.beneficiaries(u.unit)
            ended = "" if u.end_ms is None else f" until {_day(u.end_ms)}"
            print(
                f"{u.unit}  {u.scenario}  {u.gateway}/{'+'.join(u.meters)}  from {_day(u.start_ms)}{ended}  "
                f"beneficiary {history[-1].beneficiary}"
                + (f" ({len(history)} entries)" if len(history) > 1 else "")
            )
        return 0

    return _run(args, act)


def _status(args: argparse.Namespace) -> int:
    from aggregator.programme.schedule import schedule_problems, signed_statements

    def act(config: AggregatorConfig, units: UnitRegistry, db: Db) -> int:
        for s in signed_statements(db):
            print(
                f"{s.unit}  {_day(s.period_start * 1000)} .. {_day(s.period_end * 1000)}  {s.beneficiary}  "
                f"{s.kind}  {s.statement[:16]}…  ER {s.er_tco2e:.6g} tCO2e"
            )
        problems = schedule_problems(db)
        for unit, start, end, problem in problems:
            print(f"NOT SIGNED {unit} {_day(start * 1000)} .. {_day(end * 1000)}: {problem}")
        return 1 if problems else 0

    return _run(args, act)


def _export(args: argparse.Namespace) -> int:
    """A household's data: the unit, its beneficiary history, every statement of it with its
    receipts and status, and its meters' attested intervals (CSV)."""

    def act(config: AggregatorConfig, units: UnitRegistry, db: Db) -> int:
        from aggregator.store import open_evidence_store

        u = units.get(args.unit)
        if u is None:
            raise ProgrammeError(f"no unit {args.unit!r} (`puhui aggregator units list` lists them)")
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=False)
        (out / "statements").mkdir()
        listed = []
        with StatementStore(db) as statements:
            for row in statements.list(gateway=u.gateway):
                st = statements.get(row.id)
                if st is None or u.unit not in {x["id"] for x in st.body["subject"]["units"]}:
                    continue
                (out / "statements" / f"{row.id}.statement").write_bytes(st.to_bytes())
                listed.append(
                    {
                        "id": row.id,
                        "period_start": row.period_start,
                        "period_end": row.period_end,
                        "beneficiary": st.body["subject"].get("beneficiary"),
                        "er_tco2e": row.er_tco2e,
                        "status": statements.status(row.id),
                        "receipts": [
                            dict(
                                zip(("platform", "receipt_id", "kind", "tco2e", "created_ms"), r, strict=True)
                            )
                            for r in statements.receipts(row.id)
                        ],
                    }
                )
        document = {
            "unit": u.unit,
            "gateway": u.gateway,
            "meters": list(u.meters),
            "scenario": u.scenario,
            "from_ms": u.start_ms,
            "until_ms": u.end_ms,
            "beneficiaries": [
                {"beneficiary": b.beneficiary, "from_ms": b.from_ms} for b in units.beneficiaries(u.unit)
            ],
            "statements": listed,
        }
        (out / "unit.json").write_text(
            json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        store = open_evidence_store(config.store)
        n = 0
        try:
            with (out / "intervals.csv").open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(
                    ["meter", "quantity", "unit", "start", "end", "delta", "flags", "issues", "batch_seq"]
                )
                for ai in store.attested_intervals(gateway=u.gateway, meters=u.meters):
                    r = ai.record
                    w.writerow(
                        [
                            r.meter,
                            r.quantity,
                            r.unit,
                            r.start,
                            r.end,
                            r.delta,
                            " ".join(r.flags),
                            " ".join(ai.issues),
                            ai.batch.seq,
                        ]
                    )
                    n += 1
        finally:
            store.close()
        print(f"{out}: unit {u.unit}, {len(listed)} statement(s), {n} attested interval(s)")
        return 0

    return _run(args, act)


def _records(args: argparse.Namespace) -> int:
    """What a platform's project library files per site: site, region, units with meters and
    nameplates, commissioning (enrolment) date, scenario, parameter set and its filing."""

    def act(config: AggregatorConfig, units: UnitRegistry, db: Db) -> int:
        from aggregator.store import open_evidence_store

        store = open_evidence_store(config.store)
        try:
            gateways = {g.gateway: g for g in store.gateways()}
            meters = {(m.gateway, m.meter): m for m in store.meters()}
        finally:
            store.close()
        sets = {} if config.programme is None else dict(config.programme.parameter_sets)
        sites: dict[str, dict[str, Any]] = {}
        for u in units.units():
            gw = gateways.get(u.gateway)
            if gw is None:
                raise ProgrammeError(f"unit {u.unit}: gateway {u.gateway} is not enrolled")
            if args.site is not None and gw.site != args.site:
                continue
            site = sites.setdefault(
                gw.site, {"site": gw.site, "region": gw.region, "gateways": {}, "units": []}
            )
            site["gateways"][gw.gateway] = {"enrolled": _day(gw.enrolled_ms)}
            site["units"].append(
                {
                    "unit": u.unit,
                    "scenario": u.scenario,
                    "gateway": u.gateway,
                    "from": _day(u.start_ms),
                    "until": _day(u.end_ms),
                    "meters": [_meter(meters.get((u.gateway, m)), m) for m in u.meters],
                    "parameter_set": _set(sets.get(u.scenario)),  # type: ignore[call-overload]
                }
            )
        if args.site is not None and not sites:
            raise ProgrammeError(f"no unit at site {args.site!r}")
        record = {"format": "puhui-project-record/1", "sites": [sites[k] for k in sorted(sites)]}
        args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{args.out}: {len(sites)} site(s), {sum(len(s['units']) for s in sites.values())} unit(s)")
        return 0

    return _run(args, act)


def _meter(info: Any, meter: str) -> dict[str, Any]:
    if info is None:
        raise ProgrammeError(f"meter {meter} is not in its gateway's enrolment")
    return {
        "meter": meter,
        "scenario": info.scenario,
        "rated_power_kw": info.rated_power_kw,
        "meter_class": info.meter_class,
        "calibrated_until": None if info.calibrated_until is None else info.calibrated_until.isoformat(),
    }


def _set(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    loaded = load_parameter_set(path)
    out: dict[str, Any] = loaded.reference()
    filing = getattr(loaded.params, "filing", None)
    out["filing"] = None if filing is None else filing.model_dump(mode="json")
    return out
