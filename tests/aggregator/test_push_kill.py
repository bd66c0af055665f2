"""The push outbox survives ``kill -9`` of the pusher and of the receiver: 0 lost, 0 duplicated.

Three processes: ``puhui aggregator push`` (the aggregator's side), a receiving HTTPS server
(:mod:`tests.aggregator.push_receiver`: fsyncs each key before answering, answers a repeated
key 200 without storing it twice, counts every POST) and this test, which keeps signing
statements into the store while it SIGKILLs the pusher, the receiver or both at random
moments (after a random number of POSTs, plus a random few milliseconds) and restarts them.
Two kills are placed: the first receiver stores a statement and never answers it (killed
there, so at least one statement must be sent again); the second holds a POST without storing
it while the pusher is killed (so a pusher that counted a POST as delivered before the answer
loses it). At the end every statement was taken exactly once, with its exact bytes, and the
figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.store import StatementStore
from aggregator.push import PushOutbox
from puhui.cli import main
from puhui.pki import issue_server, make_ca
from tests.aggregator.api.support import GATEWAY, METERS, START, populate

ROOT = Path(__file__).resolve().parents[2]
DAYS = 16
PERIOD = 6 * 3600  # one statement per meter and six hours: 128 statements
FIRST = 24  # signed before anything runs; the others while the processes are killed
KILLS = ["pusher", "receiver", "both"] * 5  # in a random order
TOKEN = "kill-test-token-9f8e7d6c5b4a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Processes:
    """The receiver and the pusher as processes of their own, killed and restarted at will."""

    def __init__(self, work: Path, config: Path, port: int, cert: Path, key: Path, token: Path) -> None:
        self.work, self.config = work, config
        self.receiver_args = [
            sys.executable, "-m", "tests.aggregator.push_receiver", "--dir", str(work / "received"),
            "--port", str(port), "--cert", str(cert), "--key", str(key), "--token-file", str(token),
            "--delay-ms", "15",
        ]  # fmt: skip
        self.receiver: subprocess.Popen[bytes] | None = None
        self.pusher: subprocess.Popen[bytes] | None = None
        self.starts = Counter[str]()

    def start_receiver(self, *extra: str) -> None:
        with open(self.work / "receiver.err", "ab") as err:
            proc = subprocess.Popen(
                [*self.receiver_args, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=err
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the receiver is listening once it says so
        proc.stdout.close()
        assert line.startswith(b"listening"), (line, (self.work / "receiver.err").read_text()[-2000:])
        self.receiver = proc
        self.starts["receiver"] += 1

    def start_pusher(self) -> None:
        with open(self.work / "pusher.out", "ab") as out, open(self.work / "pusher.err", "ab") as err:
            self.pusher = subprocess.Popen(
                [sys.executable, "-m", "puhui.cli", "aggregator", "push", "--config", str(self.config)],
                cwd=ROOT, stdout=out, stderr=err,
            )  # fmt: skip
        self.starts["pusher"] += 1

    def kill(self, which: str) -> None:
        proc = self.receiver if which == "receiver" else self.pusher
        assert proc is not None
        assert proc.poll() is None, f"the {which} died by itself: {self._tail(which)}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def _tail(self, which: str) -> str:
        return (self.work / f"{which}.err").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for proc in (self.pusher, self.receiver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


class Signer:
    """Signs the planned statements into the store, a few at a time (:meth:`run` in a thread)."""

    def __init__(self, db: Path, key: Path, plan: list[tuple[str, int]], rng: random.Random) -> None:
        self.db, self.key, self.plan, self.rng = db, key, plan, rng
        self.done = 0
        self.stop = threading.Event()

    def sign(self, n: int) -> None:
        for meter, start in self.plan[self.done : self.done + n]:
            args = ["aggregator", "reductions", "compute", "--db", str(self.db), "--key", str(self.key),
                    "--params", str(PARAMS_DIR / "pv-export-mee.yaml"), "--gateway", GATEWAY,
                    "--start", str(start), "--end", str(start + PERIOD), "--meter", meter]  # fmt: skip
            assert main(args) == 0
            self.done += 1

    def run(self) -> None:
        while self.done < len(self.plan) and not self.stop.is_set():
            self.sign(self.rng.randint(1, 4))
            self.stop.wait(self.rng.uniform(0.05, 0.3))  # pacing only: statements arrive over the run


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _posted(received: Path, n: int) -> bool:
    return len(_lines(received / "posts.log")) >= n


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., Processes]]:
    made: list[Processes] = []

    def make(work: Path, config: Path, port: int, cert: Path, key: Path, token: Path) -> Processes:
        made.append(Processes(work, config, port, cert, key, token))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.mark.slow
def test_push_survives_kill_9_of_pusher_and_receiver(
    tmp_path: Path, processes: Callable[..., Processes], capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("PUSH_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    began = time.monotonic()
    (tmp_path / "site").mkdir()
    StatementStore(tmp_path / "site" / "agg.db").close()  # no statement yet: the signer makes them all
    site = populate(tmp_path / "site", weeks=0, steps=96 * DAYS, per_batch=96)
    key_file = site.directory / "agg.pem"
    ca = make_ca(tmp_path / "pki")
    server = issue_server(ca)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = _free_port()
    config = tmp_path / "aggregator.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": str(site.db)},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(key_file),
        "push": [{"name": "city", "url": f"https://127.0.0.1:{port}/intake", "token": {"file": str(token)},
                  "tls": {"ca_file": str(ca.layout.ca_cert)}, "timeout_s": 2, "retry_initial_s": 0.05,
                  "retry_max_s": 0.5, "poll_s": 0.1}],
    }))  # fmt: skip
    plan = [(m, START + i * PERIOD) for i in range(DAYS * 86_400 // PERIOD) for m in METERS]
    signer = Signer(site.db, key_file, plan, rng)
    signer.sign(FIRST)
    received = tmp_path / "received"
    procs = processes(tmp_path, config, port, server.cert_path, server.key_path, token)

    procs.start_receiver("--stall-after", str(rng.randint(3, 10)))
    procs.start_pusher()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-kill-signer")
    signing = pool.submit(signer.run)
    try:
        # The first receiver stores a statement and never answers: killed there, the pusher must resend it.
        _wait(lambda: (received / "stalled").exists(), "the receiver to store a statement it will not answer")
        procs.kill("receiver")
        procs.start_receiver("--hang-before", str(len(_lines(received / "keys.log")) + rng.randint(2, 6)))
        # The second holds a POST unstored: the pusher dies waiting for the answer, then the receiver.
        _wait(lambda: (received / "hung").exists(), "the receiver to hold a statement it will not store")
        procs.kill("pusher")
        procs.kill("receiver")
        procs.start_receiver()
        procs.start_pusher()
        posts = len(_lines(received / "posts.log"))
        for victim in rng.sample(KILLS, len(KILLS)):
            target = posts + rng.randint(1, 8)
            _wait(functools.partial(_posted, received, target), f"POST number {target}")
            time.sleep(rng.uniform(0, 0.03))  # a random moment in the request's life
            posts = len(_lines(received / "posts.log"))
            for which in ("pusher", "receiver") if victim == "both" else (victim,):
                procs.kill(which)
            if victim in ("receiver", "both"):
                procs.start_receiver()
            if victim in ("pusher", "both"):
                procs.start_pusher()
        signing.result()  # raises what the signer raised
        assert signer.done == len(plan)
        with contextlib.closing(sqlite3.connect(site.db)) as db:
            rows = db.execute("SELECT id, document FROM reduction_statements")
            stored = {str(i): bytes(d) for i, d in rows}
        assert len(stored) == len(plan)
        with PushOutbox(site.db) as outbox:
            _wait(lambda: outbox.status("city").owed == 0, "the pusher to settle every statement", 40)
    finally:
        signer.stop.set()
        pool.shutdown(wait=True)

    assert procs.pusher is not None
    procs.pusher.send_signal(signal.SIGTERM)
    assert procs.pusher.wait(timeout=30) == 0, (tmp_path / "pusher.err").read_text()[-3000:]
    procs.close()

    keys = [line.split(" ")[0] for line in _lines(received / "keys.log")]
    twice = [k for k, n in Counter(keys).items() if n > 1]
    lost = set(stored) - set(keys)
    assert not lost, f"{len(lost)} statements lost (seed {seed})"
    assert not twice, f"{len(twice)} statements stored twice (seed {seed})"
    assert set(keys) == set(stored)
    for sid, document in stored.items():
        assert (received / "bodies" / sid).read_bytes() == document
    answers = Counter(line.split(" ")[1] for line in _lines(received / "posts.log"))
    assert set(answers) <= {"200", "201"}, answers
    assert answers["201"] == len(stored)
    assert answers["200"] >= 1  # the unanswered statement at least came back
    with PushOutbox(site.db) as outbox:
        status = outbox.status("city")
    assert (status.delivered, status.owed, status.refused, status.held) == (len(stored), 0, 0, 0)
    with capsys.disabled():
        print(
            f"\npush kill -9 (seed {seed}): {len(stored)} statements, {procs.starts['pusher']} pusher and "
            f"{procs.starts['receiver']} receiver starts, {sum(answers.values())} POSTs, "
            f"{answers['200']} re-POSTs absorbed by the Idempotency-Key, 0 lost, 0 duplicated, "
            f"{time.monotonic() - began:.1f} s"
        )
