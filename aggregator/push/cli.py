"""``puhui aggregator push``: run the pusher alone, show where each target stands, requeue.

::

    puhui aggregator push --config aggregator.yaml            # push until SIGTERM / Ctrl-C
    puhui aggregator push --config aggregator.yaml status     # per target: delivered, owed, refused, held
    puhui aggregator push --config aggregator.yaml retry city [STATEMENT ...]   # refused/held: owed again

Exit status: 0 done; 1 the pusher or the store failed; 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from aggregator.config import AggregatorConfig, PushTarget, load_config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.push.outbox import Delivery, PushOutbox, TargetStatus
from aggregator.store.sqldb import open_programme_db
from evidence.errors import EvidenceError

SHOWN = 20  # refused or held statements listed per target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="aggregator YAML config (its push: list)")
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(dest="push_action", metavar="[status | retry]")
    p = sub.add_parser("status", help="per target: delivered, owed, refused and held statements")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="aggregator YAML config")
    p.set_defaults(func=_status)
    p = sub.add_parser("retry", help="make a target's refused and held statements owed again")
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="aggregator YAML config")
    p.add_argument("target", help="the push target's name")
    p.add_argument("statement", nargs="*", help="statement ids (default: every refused and held one)")
    p.set_defaults(func=_retry)


def _fail(message: str) -> int:
    print(f"puhui aggregator push: {message}", file=sys.stderr)
    return 1


def _config(args: argparse.Namespace) -> AggregatorConfig:
    if args.config is None:
        raise ConfigError("puhui aggregator push: --config FILE is required")
    config = load_config(args.config)
    if not config.push:
        raise ConfigError(f"{args.config}: push: no push target (a list of name, url, token, ...)")
    return config


def _target(config: AggregatorConfig, name: str, file: Path) -> PushTarget:
    for t in config.push:
        if t.name == name:
            return t
    names = ", ".join(t.name for t in config.push)
    raise ConfigError(f"{file}: push: no target named {name!r} (the targets: {names})")


def _run(args: argparse.Namespace) -> int:
    from aggregator.push.pusher import Pusher  # httpx only when pushing

    try:
        config = _config(args)

        async def main() -> None:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            async with Pusher(config) as pusher:
                targets = ", ".join(f"{t.name} ({t.url})" for t in config.push)
                print(f"puhui aggregator push: pushing to {targets}", flush=True)
                await pusher.run()

        asyncio.run(main())
    except asyncio.CancelledError:
        return 0
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (AggregatorError, EvidenceError) as exc:
        return _fail(str(exc))
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        with _outbox(config) as outbox:
            for t in config.push:
                _print_status(t, outbox.status(t.name), outbox)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except AggregatorError as exc:
        return _fail(str(exc))
    return 0


@contextlib.contextmanager
def _outbox(config: AggregatorConfig) -> Iterator[PushOutbox]:
    """The outbox where the config keeps it (PostgreSQL's database with a PostgreSQL store)."""
    db = open_programme_db(config.store)
    try:
        with PushOutbox(db) as outbox:
            yield outbox
    finally:
        db.close()


def _print_status(t: PushTarget, s: TargetStatus, outbox: PushOutbox) -> None:
    print(
        f"{t.name}\t{t.url}\t{t.what}\tdelivered {s.delivered}\towed {s.owed}\trefused {s.refused}"
        f"\theld {s.held}\tlast delivered {_when(s.last_delivered_ms)}"
    )
    if s.last is not None:
        d = s.last
        print(
            f"  retrying {s.retrying}: latest {d.statement} attempt {d.attempts} at "
            f"{_when(d.last_attempt_ms)}, next at {_when(d.next_attempt_ms)}: {d.last_error}"
        )
    for state, count in (("refused", s.refused), ("held", s.held)):
        rows = outbox.deliveries(t.name, state, SHOWN) if count else []
        for d in rows:
            print(f"  {_line(d)}")
        if count > len(rows):
            print(f"  ... and {count - len(rows)} more {state}")


def _line(d: Delivery) -> str:
    status = "" if d.http_status is None else f" (HTTP {d.http_status})"
    return f"{d.state} {d.statement} at {_when(d.last_attempt_ms)}{status}: {d.last_error}"


def _when(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _retry(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        target = _target(config, args.target, args.config)
        with _outbox(config) as outbox:
            n = outbox.requeue(target.name, args.statement)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except AggregatorError as exc:
        return _fail(str(exc))
    print(f"{target.name}: {n} refused or held statements owed again (the pusher sends them next)")
    return 0
