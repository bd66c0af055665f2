"""The push outbox against a real HTTP(S) receiver on loopback (no fake of httpx or the server).

The store holds real signed statements (batches taken by the aggregator's ingest, statements
computed by ``reductions compute``); each test pushes from its own copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggregator.config import AggregatorConfig, load_config, parse_config
from aggregator.errors import ConfigError
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.statements import canonical
from aggregator.push import Pusher, PushOutbox, PushSetupError, classify
from common.clock import ManualClock
from evidence import generate_key, save_private_key
from puhui.cli import main
from puhui.pki import issue_server, make_ca
from puhui.verify import verify_package
from tests.aggregator.api.support import GATEWAY, METERS, START, Populated, populate
from tests.aggregator.push_receiver import STATEMENT_TYPE, ReceiverThread, server_context

TOKEN = "push-test-token-0123456789"
DAY = 86_400


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Populated:
    """Three weeks of two meters' data; statements for the first two weeks (four)."""
    return populate(tmp_path_factory.mktemp("push-seed"), weeks=2, steps=96 * 21, per_batch=96)


@dataclass
class Site:
    """A copy of the seeded store, with helpers to configure targets and add statements."""

    seed: Populated
    directory: Path

    @property
    def db(self) -> Path:
        return self.directory / "agg.db"

    def token_file(self, token: str = TOKEN) -> Path:
        path = self.directory / "push-token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        return path

    def config(self, *targets: dict[str, Any]) -> AggregatorConfig:
        return parse_config(self.config_data(*targets), "aggregator.yaml")

    def config_data(self, *targets: dict[str, Any]) -> dict[str, Any]:
        push = [{"token": {"file": str(self.token_file())}, **t} for t in targets]
        return {
            "mqtt": {"insecure": True}, "store": {"path": str(self.db)},
            "influx": {"url": "http://127.0.0.1:9", "database": "unused"},
            "key_file": str(self.seed.directory / "agg.pem"), "push": push,
        }  # fmt: skip

    def statements(self) -> list[tuple[str, bytes]]:
        """(id, document) in creation order."""
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            rows = db.execute("SELECT id, document FROM reduction_statements ORDER BY created_ms, id")
            return [(str(i), bytes(d)) for i, d in rows]

    def compute(self, day: int, meter: str = METERS[0], key: Path | None = None) -> str:
        """Sign and store a statement for one meter and day (of the seeded week 3)."""
        before = {s for s, _ in self.statements()}
        start = START + day * DAY
        args = ["aggregator", "reductions", "compute", "--db", str(self.db),
                "--key", str(key or self.seed.directory / "agg.pem"),
                "--params", str(PARAMS_DIR / "pv-export-mee.yaml"), "--gateway", GATEWAY,
                "--start", str(start), "--end", str(start + DAY), "--meter", meter]  # fmt: skip
        assert main(args) == 0
        [new] = {s for s, _ in self.statements()} - before
        return new


@pytest.fixture
def site(seed: Populated, tmp_path: Path) -> Site:
    for suffix in ("", "-wal", "-shm"):
        source = seed.db.with_name(seed.db.name + suffix)
        if source.exists():
            shutil.copy(source, tmp_path / f"agg.db{suffix}")
    return Site(seed, tmp_path)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverThread]:
    with ReceiverThread(tmp_path / "receiver", token=TOKEN) as r:
        yield r


def target(url: str, **extra: Any) -> dict[str, Any]:
    fast = {"retry_initial_s": 0.02, "retry_max_s": 0.2, "poll_s": 0.2, "timeout_s": 5}
    return {"name": "city", "url": url, "insecure": url.startswith("http://"), **fast, **extra}


@contextlib.asynccontextmanager
async def pushing(config: AggregatorConfig, clock: ManualClock | None = None) -> AsyncIterator[Pusher]:
    async with Pusher(config, clock=clock, rng=random.Random(7)) as pusher:
        task = asyncio.create_task(pusher.run(), name="test-pusher")
        try:
            yield pusher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(pusher: Pusher, name: str, **at_least: int) -> None:
    def reached(p: Pusher) -> bool:
        stats = p.stats(name)
        return all(getattr(stats, k) >= v for k, v in at_least.items())

    async with asyncio.timeout(30):
        await pusher.wait_for(reached)


# -- delivery -----------------------------------------------------------------------------------


async def test_every_statement_goes_once_in_creation_order_with_its_exact_bytes(
    site: Site, receiver: ReceiverThread
) -> None:
    config = site.config(target(receiver.url))
    stored = site.statements()
    assert len(stored) == 4
    async with pushing(config) as pusher:
        await until(pusher, "city", delivered=4)
        added = site.compute(15)  # a statement signed while the pusher runs
        pusher.notify()
        await until(pusher, "city", delivered=5)
    posts = receiver.posts
    assert [p.key for p in posts] == [s for s, _ in stored] + [added]
    assert [p.status for p in posts] == [201] * 5
    assert [p.body for p in posts] == [d for _, d in site.statements()]
    for p in posts:
        assert p.headers["authorization"] == f"Bearer {TOKEN}"
        assert p.headers["content-type"] == STATEMENT_TYPE
        assert p.headers["puhui-statement"] == p.key
    with PushOutbox(site.db) as outbox:
        status = outbox.status("city")
    assert (status.delivered, status.owed, status.refused, status.held) == (5, 0, 0, 0)

    # A restart sends nothing again: the next statement is the next POST.
    newer = site.compute(16)
    async with pushing(config) as pusher:
        await until(pusher, "city", delivered=1)
        assert pusher.stats("city").posts == 1
    assert [p.key for p in receiver.posts[5:]] == [newer]


async def test_a_5xx_is_retried_with_growing_backoff_on_the_injected_clock(
    site: Site, receiver: ReceiverThread
) -> None:
    config = site.config(target(receiver.url, retry_initial_s=10, retry_max_s=100))
    first = site.statements()[0][0]
    receiver.intake.script.extend([503, 503])
    clock = ManualClock(1_000_000.0)
    waits = []
    async with pushing(config, clock) as pusher:
        with PushOutbox(site.db) as outbox:
            for retries in (1, 2):
                await until(pusher, "city", retries=retries)
                last = outbox.status("city").last
                assert last is not None and last.statement == first and last.attempts == retries
                assert last.http_status == 503 and last.last_error is not None and "503" in last.last_error
                assert last.next_attempt_ms is not None and last.last_attempt_ms is not None
                waits.append(last.next_attempt_ms - last.last_attempt_ms)
                # Nothing more is sent until the clock reaches the next attempt (wall time passes).
                assert len(receiver.posts) == retries
                await clock.set(last.next_attempt_ms / 1000)
            await until(pusher, "city", delivered=4)
    assert 5_000 <= waits[0] <= 10_000 and 10_000 <= waits[1] <= 20_000, waits
    assert [p.key for p in receiver.posts[:3]] == [first] * 3
    assert len(receiver.posts) == 6


async def test_a_refusal_is_recorded_loudly_and_not_retried_until_requeued(
    site: Site, receiver: ReceiverThread, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = site.config_data(target(receiver.url))
    config_file = site.directory / "aggregator.yaml"
    config_file.write_text(yaml.safe_dump(data))
    first = site.statements()[0][0]
    receiver.intake.script.append(422)
    async with pushing(site.config(target(receiver.url))) as pusher:
        await until(pusher, "city", delivered=3, refused=1)
    assert [p.key for p in receiver.posts].count(first) == 1
    assert f"statement {first} refused, not retried: HTTP 422: scripted answer" in caplog.text

    assert main(["aggregator", "push", "--config", str(config_file), "status"]) == 0
    out = capsys.readouterr().out
    assert "delivered 3\towed 0\trefused 1\theld 0" in out
    assert f"refused {first} at " in out and "(HTTP 422): HTTP 422: scripted answer" in out

    assert main(["aggregator", "push", "retry", "--config", str(config_file), "city"]) == 0
    assert "city: 1 refused or held statements owed again" in capsys.readouterr().out
    async with pushing(site.config(target(receiver.url))) as pusher:
        await until(pusher, "city", delivered=1)
    assert [p.key for p in receiver.posts].count(first) == 2
    with PushOutbox(site.db) as outbox:
        status = outbox.status("city")
    assert (status.delivered, status.owed, status.refused) == (4, 0, 0)


async def test_a_wrong_token_is_retried_not_refused_and_a_new_token_file_is_read(
    site: Site, receiver: ReceiverThread
) -> None:
    config = site.config(target(receiver.url))
    site.token_file("an-old-token")  # the file the config names now holds a token the receiver refuses
    async with pushing(config) as pusher:
        await until(pusher, "city", retries=3)
        assert pusher.stats("city").refused == 0
        site.token_file(TOKEN)  # the operator puts the new one in place
        await until(pusher, "city", delivered=4)
    statuses = [p.status for p in receiver.posts]
    assert statuses[:3] == [401] * 3 and statuses[-4:] == [201] * 4


async def test_statements_that_do_not_check_are_held_and_never_sent(
    site: Site, receiver: ReceiverThread, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign.pem"
    save_private_key(generate_key(), foreign)
    forged = site.compute(15, key=foreign)  # stored, but signed by a key this aggregator never had
    changed = site.statements()[1][0]
    with contextlib.closing(sqlite3.connect(site.db)) as db:  # a row changed in place
        [(document,)] = db.execute("SELECT document FROM reduction_statements WHERE id = ?", (changed,))
        body_line, signature_line, _ = bytes(document).split(b"\n")
        body = json.loads(body_line)
        body["result"]["er_tco2e"] *= 2
        db.execute(
            "UPDATE reduction_statements SET document = ? WHERE id = ?",
            (canonical(body) + b"\n" + signature_line + b"\n", changed),
        )
        db.commit()
    async with pushing(site.config(target(receiver.url))) as pusher:
        await until(pusher, "city", delivered=3, held=2)
    sent = {p.key for p in receiver.posts}
    assert forged not in sent and changed not in sent and len(sent) == 3
    with PushOutbox(site.db) as outbox:
        held = {d.statement: d.last_error for d in outbox.deliveries("city", "held")}
    assert set(held) == {forged, changed}
    assert "not in the aggregator's key history" in str(held[forged])
    assert "not to the row's id" in str(held[changed])


async def test_a_package_target_gets_packages_that_verify(site: Site, receiver: ReceiverThread) -> None:
    async with pushing(site.config(target(receiver.url, what="package"))) as pusher:
        await until(pusher, "city", delivered=4)
    posts = receiver.posts
    assert [p.key for p in posts] == [s for s, _ in site.statements()]
    for p in posts:
        assert p.headers["content-type"] == "application/zip"
        report = verify_package(p.body, site.seed.aggregator.public_key)
        assert report.ok, report.problems
        assert report.statement_id == p.key


async def test_tls_with_a_pinned_ca_and_a_receiver_the_pin_does_not_match(site: Site, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    issued = issue_server(ca)
    other = make_ca(tmp_path / "other-pki")
    tls = server_context(issued.cert_path, issued.key_path)
    with ReceiverThread(tmp_path / "receiver", token=TOKEN, tls=tls) as receiver:
        assert receiver.url.startswith("https://")
        config = site.config(
            target(receiver.url, tls={"ca_file": str(ca.layout.ca_cert)}),
            target(receiver.url, name="impostor-check", tls={"ca_file": str(other.layout.ca_cert)}),
        )
        async with pushing(config) as pusher:
            await until(pusher, "city", delivered=4)
            await until(pusher, "impostor-check", retries=2)
        assert len(receiver.posts) == 4  # the second target never got past the handshake
    with PushOutbox(site.db) as outbox:
        last = outbox.status("impostor-check").last
    assert last is not None and last.last_error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in last.last_error


# -- the parts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "delivered"), (201, "delivered"), (204, "delivered"), (400, "refused"), (413, "refused"),
     (415, "refused"), (422, "refused"), (410, "refused"), (409, "retry"), (429, "retry"), (408, "retry"),
     (401, "retry"), (403, "retry"), (404, "retry"), (301, "retry"), (500, "retry"), (503, "retry")],
)  # fmt: skip
def test_classify(status: int, verdict: str) -> None:
    assert classify(status) == verdict


@pytest.mark.parametrize(
    ("push", "message"),
    [
        ([{"name": "city", "url": "http://platform.example/intake"}], "push[0]: a push url is https://"),
        ([{"name": "city", "url": "https://a.example", "token": "secret"}],
         "push[0].token: a token is not written"),
        ([{"name": "city", "url": "http://a.example", "insecure": True, "tls": {"ca_file": "ca.crt"}}],
         "push[0]: tls is for an https:// url"),
        ([{"name": "a", "url": "https://a.example"}, {"name": "a", "url": "https://b.example"}],
         "push: push target names must differ: a given more than once"),
        ([{"name": "city", "url": "https://a.example", "what": "zip"}], "push[0].what: 'zip' is not a what"),
        ([{"name": "city", "url": "https://a.example", "retry_max_s": 0.5}],
         "push[0]: retry_max_s is less than"),
        ([{"name": "city", "url": "https://a.example", "tiemout_s": 5}], "push[0].tiemout_s: unknown key"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(push: list[dict[str, Any]], message: str) -> None:
    data = {"mqtt": {"insecure": True}, "store": {"path": "a.db"}, "key_file": "k.pem", "push": push,
            "influx": {"url": "http://127.0.0.1:9", "database": "x"}}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "aggregator.yaml")
    assert message in str(caught.value)
    assert "aggregator.yaml: push" in str(caught.value)


async def test_setup_errors_name_the_setting(site: Site, receiver: ReceiverThread) -> None:
    config = site.config(target(receiver.url))
    site.token_file().chmod(0o644)
    with pytest.raises(PushSetupError, match=r"push\[city\]\.token\.file: .* is mode 644"):
        async with Pusher(config):
            pass


def test_push_without_targets_is_a_config_error(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = site.directory / "aggregator.yaml"
    config_file.write_text(yaml.safe_dump({**site.config_data(), "push": []}))
    assert main(["aggregator", "push", "--config", str(config_file)]) == 2
    assert "push: no push target" in capsys.readouterr().err


def test_the_documented_push_config_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "platform-api.md").read_text()
    block = doc.split("```yaml\npush:", 1)[1].split("```", 1)[0]
    config = tmp_path / "aggregator.yaml"
    base = {"mqtt": {"insecure": True}, "store": {"path": "a.db"}, "key_file": "k.pem",
            "influx": {"url": "http://127.0.0.1:9", "database": "x"}}  # fmt: skip
    config.write_text(yaml.safe_dump(base) + "push:" + block)
    [city] = load_config(config).push
    assert (city.name, city.what, city.insecure) == ("city-platform", "statement", False)
    assert city.token is not None and city.token.file == str(tmp_path / "city-push-token")
    assert city.tls is not None and city.tls.ca_file == str(tmp_path / "city-ca.crt")


def test_the_command_names_a_target_it_cannot_set_up(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = site.directory / "aggregator.yaml"
    config_file.write_text(yaml.safe_dump(site.config_data(target("https://127.0.0.1:9/intake"))))
    site.token_file().chmod(0o640)
    assert main(["aggregator", "push", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert "puhui aggregator push: push[city].token.file:" in err and "chmod 600" in err
    assert "Traceback" not in err
