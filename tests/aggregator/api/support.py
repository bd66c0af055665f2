"""A populated aggregator store and the real API server on loopback (uvicorn, TLS).

The store is filled the way production fills it: batches sealed by a gateway key and taken
by the aggregator's own ingest, statements computed and signed with ``reductions compute``.
The server is ``puhui aggregator api`` in its own process, found by the line it prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from aggregator.config import AggregatorConfig
from aggregator.ingest import BatchIngest
from aggregator.methodology.params import PARAMS_DIR
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store import SQLiteEvidenceStore
from common.clock import SystemClock
from evidence import generate_key, public_key_pem, save_private_key
from evidence.keys import GatewayKey
from evidence.wire import Ack, batch_topic
from puhui.cli import main
from puhui.pki import issue_server, make_ca
from tests.aggregator.ingest_support import T0, SimGateway
from tests.aggregator.methodology.evidence_fixture import counter_records

GATEWAY = "gw-pv"
METERS = ("pv-01", "pv-02")
STEPS = 5_200  # 15-minute intervals per meter: 10,400 records, more than 10,000
PER_BATCH = 400  # intervals per meter in one batch
PLATFORM = "city-platform"
STATEMENT_STEPS = 96 * 7  # each statement covers a week of one meter
START = T0 - 70 * 86_400  # the data lies in the past: batches from the future are implausible


@dataclass(frozen=True)
class Populated:
    directory: Path
    config: Path  # aggregator YAML with an api section (TLS)
    db: Path
    ca: Path  # the API's server certificate's CA, for clients to pin
    aggregator: GatewayKey
    issuer_pem: Path  # the aggregator's public key, pinned by verifiers
    statements: tuple[str, ...]
    platform: GatewayKey  # the pinned key of PLATFORM, whose receipts the API takes


def _records(meter: str, n: int, delta: float) -> list[object]:
    return list(counter_records(meter, "energy_export", [delta] * n, start=START))


async def _ingest(
    db: Path, tmp: Path, aggregator: GatewayKey, meters: tuple[str, ...], steps: int, per_batch: int
) -> None:
    config = AggregatorConfig.model_validate(
        {"mqtt": {"insecure": True}, "store": {"path": str(db)},
         "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp / "unused.pem")}
    )  # fmt: skip
    gw = SimGateway(GATEWAY, meters=meters)
    series = [_records(m, steps, 1.25 + 0.5 * (k % 4)) for k, m in enumerate(meters)]
    with StoreThreads() as threads:
        store = SQLiteEvidenceStore(db)
        try:
            registry = GatewayRegistry(store)
            registry.enrol(gw.enrolment(), at_ms=0)
            ingest = BatchIngest(config, store=store, registry=registry, key=aggregator, clock=SystemClock(),
                                 run_db=threads.run_db)  # fmt: skip
            for i in range(0, steps, per_batch):
                parts = (s[i : i + per_batch] for s in series)
                records = [r for pair in zip(*parts, strict=True) for r in pair]
                end = min(i + per_batch, steps)
                sealed = gw.seal(records, created_ms=(START + end * 900 + 5) * 1000)
                answer = await ingest.process(batch_topic(GATEWAY), sealed.to_bytes())
                assert answer is not None and isinstance(answer[1], Ack), answer
        finally:
            store.close()


def populate(
    tmp: Path,
    *,
    weeks: int = 3,
    meters: tuple[str, ...] = METERS,
    steps: int = STEPS,
    per_batch: int = PER_BATCH,
    one_statement: bool = False,
) -> Populated:
    """A store of ``steps`` intervals per meter; statements: one per meter and week for
    ``weeks`` weeks, or (``one_statement``) one over every meter and the whole span."""
    tmp.mkdir(parents=True, exist_ok=True)
    db, key_file, aggregator = tmp / "agg.db", tmp / "agg.pem", generate_key()
    save_private_key(aggregator, key_file)
    issuer = tmp / "agg.pub.pem"
    issuer.write_bytes(public_key_pem(aggregator.public_key))
    asyncio.run(_ingest(db, tmp, aggregator, meters, steps, per_batch))
    plan = (
        [(meters, START, START + steps * 900)]
        if one_statement
        else [
            ((m,), START + w * STATEMENT_STEPS * 900, START + (w + 1) * STATEMENT_STEPS * 900)
            for w in range(weeks)
            for m in meters
        ]
    )
    for chosen, start, end in plan:
        compute = ["aggregator", "reductions", "compute", "--db", str(db), "--key", str(key_file),
                   "--params", str(PARAMS_DIR / "pv-export-mee.yaml"), "--gateway", GATEWAY,
                   "--start", str(start), "--end", str(end)]  # fmt: skip
        for m in chosen:
            compute += ["--meter", m]
        assert main(compute) == 0
    platform = generate_key()
    (tmp / "platform.pub.pem").write_bytes(public_key_pem(platform.public_key))
    ca = make_ca(tmp / "pki")
    server = issue_server(ca)
    config = tmp / "aggregator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"insecure": True},
                "store": {"path": str(db)},
                "influx": {"url": "http://127.0.0.1:9", "database": "unused"},
                "key_file": str(key_file),
                "api": {"host": "127.0.0.1", "port": 0, "max_page": 20_000,
                        "platforms": {PLATFORM: "platform.pub.pem"},
                        "tls": {"cert_file": str(server.cert_path), "key_file": str(server.key_path)}},
            }
        )
    )  # fmt: skip
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        ids = tuple(str(r[0]) for r in conn.execute("SELECT id FROM reduction_statements ORDER BY id"))
    return Populated(tmp, config, db, ca.layout.ca_cert, aggregator, issuer, ids, platform)


def make_token(config: Path, *scopes: str, days: float = 1.0) -> str:
    args = [sys.executable, "-m", "puhui.cli", "aggregator", "tokens", "--config", str(config), "create",
            "--name", "test-platform", "--days", str(days)]  # fmt: skip
    for s in scopes:
        args += ["--scope", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


@dataclass
class RunningApi:
    url: str
    process: subprocess.Popen[str]


@contextlib.contextmanager
def running_api(config: Path) -> Iterator[RunningApi]:
    """``puhui aggregator api`` in a process of its own; stopped with SIGTERM on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "puhui.cli", "aggregator", "api", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"serving (https?://[^/\s]+)/v1", line)
            if m:
                yield RunningApi(m.group(1), proc)
                return
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"the API did not start: {line!r} {err}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
