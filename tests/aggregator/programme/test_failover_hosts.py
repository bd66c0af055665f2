"""Two aggregators on two "hosts" (separate ``store.path`` directories, nothing shared but
one PostgreSQL) run the programme: units registered once with the CLI; the leader signs and
pushes January's statements and is SIGKILLed; the other takes the lead and signs and pushes
February's, and signs nothing again. Across both: one statement per unit and month, each
pushed once (issue 21). Real processes (``puhui aggregator run``), Mosquitto, InfluxDB,
PostgreSQL and an HTTPS receiver; the evidence is stored through the real ingest into the
shared PostgreSQL (as either aggregator would). The months are past, so the system clock
serves: January is due once the gateway's intervals reach into February, February once
they reach into March."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggregator.config import AggregatorConfig, load_config
from aggregator.influx import InfluxV1Client
from aggregator.ingest import BatchIngest
from aggregator.methodology.params import PARAMS_DIR
from aggregator.programme.schedule import signed_statements
from aggregator.registry import GatewayRegistry
from aggregator.service import StoreThreads
from aggregator.store.postgres import PostgresEvidenceStore, connection_info
from aggregator.store.sqldb import PostgresDb
from common.clock import SystemClock
from evidence import generate_key, save_private_key
from evidence.wire import Ack, batch_topic
from puhui.cli import main
from puhui.pki import issue_server, make_ca
from testbed.servers import PrivateMosquitto, PrivatePostgres
from tests.aggregator.ingest_support import forget_session, isolated_mqtt
from tests.aggregator.push_receiver import ReceiverThread, server_context

from .support import GATEWAY, MONTH, MONTH_END, Street

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
DAY = 86400
FEB_END = MONTH_END + 28 * DAY  # 1 March 2026, China time
KEY = generate_key()
TOKEN = "push-token-0123456789-failover"
UNITS = (("house-7-pv", "pv-01", "pv", "acct-0001"), ("house-9-pv", "pv-02", "pv", "acct-0002"),
         ("charger-1", "ev-01", "ev_charging", "acct-0004"))  # fmt: skip


class Host:
    """One aggregator process with a directory of its own (its SQLite file would be there)."""

    def __init__(self, name: str, directory: Path, data: dict[str, Any]) -> None:
        self.name, self.directory = name, directory
        directory.mkdir()
        shutil.copy(data["key_file"], directory / "agg.pem")
        data = {**data, "mqtt": data["mqtt"][name], "key_file": "agg.pem",
                "store": {**data["store"], "path": "local.sqlite3"}}  # fmt: skip
        self.config = directory / "aggregator.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.log = directory / "aggregator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "puhui", "-v", "aggregator", "run", "--config", str(self.config)],
                cwd=self.directory, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip

    def leads(self) -> bool:
        return "leadership: taken" in self.log.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


async def _store(
    conninfo: dict[str, Any], config: AggregatorConfig, payloads: list[bytes], enrol: bytes | None
) -> None:
    """The gateway's batches through the real ingest into the shared PostgreSQL."""
    with StoreThreads() as threads:
        store = PostgresEvidenceStore(conninfo)
        try:
            registry = GatewayRegistry(store)
            if enrol is not None:
                registry.enrol(enrol, at_ms=MONTH * 1000)
            ingest = BatchIngest(config, store=store, registry=registry, key=KEY, clock=SystemClock(),
                                 run_db=threads.run_db)  # fmt: skip
            for payload in payloads:
                answer = await ingest.process(batch_topic(GATEWAY), payload)
                assert answer is not None and isinstance(answer[1], Ack), answer
        finally:
            store.close()


async def _until(what: str, check: Any, hosts: list[Host], seconds: float = 40.0) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {h.name}\n{h.log.read_text(errors='replace')[-3000:]}" for h in hosts)
            pytest.fail(f"timed out waiting for {what}\n{tails}")
        await asyncio.sleep(0.2)


async def test_a_successor_on_another_host_signs_the_next_period_and_nothing_twice(
    tmp_path: Path,
    postgres: PrivatePostgres,
    postgres_db: dict[str, Any],
    mosquitto: PrivateMosquitto,
    influx_db: InfluxV1Client,
) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text(postgres.password + "\n")
    secret.chmod(0o600)
    assert postgres.tls is not None
    save_private_key(KEY, tmp_path / "agg.pem")
    ca = make_ca(tmp_path / "pki")
    issued = issue_server(ca)
    token = tmp_path / "push.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    receiver = ReceiverThread(tmp_path / "receiver", token=TOKEN,
                              tls=server_context(issued.cert_path, issued.key_path))  # fmt: skip
    data: dict[str, Any] = {
        "mqtt": {name: {**isolated_mqtt(mosquitto.port), "reconnect_initial_s": 0.05} for name in ("a", "b")},
        "store": {"path": "unused", "postgres": {
            "host": "127.0.0.1", "port": postgres.port, "dbname": postgres_db["dbname"],
            "user": postgres.user, "password": {"file": str(secret)},
            "sslrootcert": str(postgres.tls.ca_file)}},
        "influx": {"url": influx_db.url, "database": influx_db.database, "retry_initial_s": 0.05},
        "key_file": str(tmp_path / "agg.pem"),
        "programme": {"period": "month", "settle_hours": 1, "check_every_s": 0.2,
                      "parameter_sets": {"pv": str(PARAMS_DIR / "pv-export-mee-2.0.0.yaml"),
                                         "ev_charging": str(PARAMS_DIR / "ev-charging-jjj-2.0.0.yaml")}},
        "push": [{"name": "province", "url": receiver.url, "tls": {"ca_file": str(ca.layout.ca_cert)},
                  "token": {"file": str(token)}, "poll_s": 0.2, "retry_initial_s": 0.05, "retry_max_s": 0.5}],
    }  # fmt: skip
    hosts = [Host("a", tmp_path / "host-a", data), Host("b", tmp_path / "host-b", data)]
    config = load_config(hosts[0].config)
    assert config.store.postgres is not None
    conninfo = connection_info(config.store.postgres)
    db = PostgresDb(conninfo)
    street = Street()

    def signed() -> list[Any]:
        return signed_statements(db)

    def delivered() -> int:
        [(n,)] = db.execute("SELECT count(*) FROM push_deliveries WHERE state = 'delivered'").fetchall()
        return int(n)

    try:
        base = ["aggregator", "units", "--config", str(hosts[0].config)]  # registered once, on host a
        for unit, meter, scenario, acct in UNITS:
            assert main([*base, "add", unit, "--gateway", GATEWAY, "--meter", meter, "--scenario", scenario,
                         "--beneficiary", acct, "--from", "2026-01-01T00:00+08:00"]) == 0  # fmt: skip
        january = [street.seal(street.records(s, s + DAY)) for s in range(MONTH, MONTH_END + 2 * DAY, DAY)]
        await _store(conninfo, config, january, street.enrolment())
        for h in hosts:
            h.start()
        await _until("January's statements, pushed", lambda: len(signed()) == 3 and delivered() == 3, hosts)
        [leader] = [h for h in hosts if h.leads()]
        [successor] = [h for h in hosts if h is not leader]
        assert {(s.period_start, s.period_end) for s in signed()} == {(MONTH, MONTH_END)}
        leader.kill()  # its pushes are recorded delivered: nothing is owed when it dies

        february = [
            street.seal(street.records(s, s + DAY)) for s in range(MONTH_END + 2 * DAY, FEB_END + DAY, DAY)
        ]
        await _store(conninfo, config, february, None)
        await _until("February's statements, pushed", lambda: len(signed()) == 6 and delivered() == 6, hosts)
        assert successor.leads()
        await asyncio.sleep(1.0)  # more looks of the successor: nothing signed again
        assert main(["aggregator", "units", "--config", str(successor.config), "status"]) == 0
        assert main(["aggregator", "push", "--config", str(successor.config), "status"]) == 0
    finally:
        codes = [h.stop() for h in hosts]
        for h in hosts:
            await forget_session(load_config(h.config).mqtt)
        receiver.close()
    assert codes == [0, 0], [h.log.read_text()[-3000:] for h in hosts]
    stated = signed()
    db.close()
    assert sorted((s.unit, s.period_start, s.kind) for s in stated) == sorted(
        (u, p, "scheduled") for u, *_ in UNITS for p in (MONTH, MONTH_END)
    )  # one statement per unit and month, across both hosts
    posts = [p for p in receiver.posts if p.status // 100 == 2]
    assert sorted(str(p.key) for p in posts) == sorted(s.statement for s in stated)  # each pushed once
    for h in hosts:  # no programme state on either host's disk
        assert not (h.directory / "local.sqlite3").exists()
