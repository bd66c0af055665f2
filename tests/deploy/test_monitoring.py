"""Monitoring (issue 20): the Grafana dashboards and the Prometheus alert rules, held against
what puhui really writes and serves.

- InfluxDB: the real aggregator (ingest and InfluxDB writer) takes signed batches over a real
  Mosquitto into a real InfluxDB: normal intervals, every quality flag, an implausible record,
  a chain gap, a fork and a malformed payload. Every InfluxQL query of every dashboard names
  only measurements, fields and tags InfluxDB then reports (``SHOW FIELD KEYS``/``SHOW TAG
  KEYS``), compares only with values that occur, and, run with Grafana's macros filled in,
  finds data.
- Prometheus: ``puhui aggregator api`` over the same store and a running ``puhui gateway run``
  are scraped; every metric an alert rule, its annotations or the Prometheus dashboard names
  is one they serve. ``promtool check rules`` and ``check config`` pass, and ``promtool test
  rules`` shows each alert firing on the pattern it is for and staying quiet on its neighbour.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from aggregator.config import InfluxSettings
from aggregator.influx import InfluxV1Client, Series
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from common.clock import FastClock
from evidence import generate_key, save_private_key
from evidence.chain import ChainVerdict
from evidence.records import FLAGS
from evidence.wire import batch_topic
from firmware_sim import Fleet
from puhui.sitegen import site_for
from testbed.servers import PrivateInfluxDB, PrivateMosquitto
from tests.aggregator.api.support import make_token, running_api
from tests.aggregator.ingest_support import T0, GatewayPeer, SimGateway, gateway_peer, make_config
from tests.gateway.evidence_helpers import make_keys
from tests.sim.helpers import fleet_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "packaging" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = REPO / "packaging" / "prometheus" / "puhui-alerts.yml"
PROMTOOL = shutil.which("promtool")
AGG_KEY = generate_key()
GATEWAYS = ("gw-mon-a", "gw-mon-b")
SILENT = "gw-mon-c"  # enrolled, never sends
INFLUX_DS, PROM_DS = "puhui-influxdb", "puhui-prometheus"


# -- what the dashboards and rules say --------------------------------------------------------


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in DASHBOARDS}


def influx_queries() -> list[tuple[str, str]]:
    """(where, InfluxQL) of every InfluxDB target and template variable of every dashboard."""
    out = []
    for name, d in _dashboards().items():
        for v in d["templating"]["list"]:
            if v["datasource"]["uid"] == INFLUX_DS:
                out.append((f"{name}: variable {v['name']}", v["query"]))
        for p in d["panels"]:
            out += [(f"{name}: {p['title']} [{t['refId']}]", t["query"]) for t in p["targets"]
                    if t["datasource"]["uid"] == INFLUX_DS]  # fmt: skip
    return out


def influx_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{name}: {p['title']} [{t['refId']}]", t) for name, d in _dashboards().items()
            for p in d["panels"] for t in p["targets"] if t["datasource"]["uid"] == INFLUX_DS]  # fmt: skip


def prom_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and every Prometheus target and variable."""
    rules = yaml.safe_load(RULES.read_text())
    out = [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    for name, d in _dashboards().items():
        for v in d["templating"]["list"]:
            if v["datasource"]["uid"] == PROM_DS:
                query = re.fullmatch(r"label_values\((\w+), *\w+\)", v["query"]["query"])
                assert query, v["query"]
                out.append((f"{name}: variable {v['name']}", query[1]))
        for p in d["panels"]:
            out += [(f"{name}: {p['title']} [{t['refId']}]", t["expr"]) for t in p["targets"]
                    if t["datasource"]["uid"] == PROM_DS]  # fmt: skip
    return out


_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if not text[m.end() :].lstrip().startswith("(") and m.group().lower() not in _PROMQL_WORDS:
            names.add(m.group())
    return names


def served_metrics(exposition: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", exposition, re.M))


def test_the_metric_name_reader_finds_names_and_only_names() -> None:
    expr = ('sum without (reason) (delta(puhui_rejections{reason!="fork"}[30m])) / 2 > 0.05 and '
            "deriv(x_total[1h]) > 0 unless on (instance) group_left (gateway) info * time()")  # fmt: skip
    assert promql_metrics(expr) == {"puhui_rejections", "x_total", "info"}
    assert served_metrics('# HELP a_b x\n# TYPE a_b gauge\na_b{l="1"} 2\nc 1\n') == {"a_b", "c"}


def test_dashboards_are_provisioned_with_the_data_sources_they_use() -> None:
    assert {p.stem for p in DASHBOARDS} == {
        "puhui-energy",
        "puhui-quality",
        "puhui-gateways",
        "puhui-operations",
    }
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/puhui.yaml").read_text())["datasources"]
    types = {s["uid"]: s["type"] for s in sources}
    assert types == {INFLUX_DS: "influxdb", PROM_DS: "prometheus"}
    assert next(s for s in sources if s["type"] == "influxdb")["jsonData"]["dbName"] == "puhui"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/puhui.yaml").read_text())["providers"][0]
    assert (
        provider["type"] == "file"
        and provider["options"]["path"] in (REPO / "docs/monitoring.md").read_text()
    )
    for name, d in _dashboards().items():
        assert d["uid"] == name, name
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in d["panels"]:
            kinds = {t["datasource"]["uid"] for t in p["targets"]} | {p["datasource"]["uid"]}
            assert len(kinds) == 1 and kinds <= set(types), (name, p["title"])
            key = "query" if kinds == {INFLUX_DS} else "expr"
            assert all(t.get(key) for t in p["targets"]), (name, p["title"])


# -- the real aggregator feeding a real InfluxDB ---------------------------------------------------


@dataclasses.dataclass
class Fed:
    influx_url: str
    database: str
    config: Path  # aggregator YAML over the same store, with an api section (plain HTTP)
    started: float
    finished: float
    last_end: dict[str, int]  # gateway -> end of its latest stored interval
    highest_seq: dict[str, int]


def _flagged(gw: SimGateway) -> list[Any]:
    """One interval record per quality flag (10 flags: 5 steps x 2 meters)."""
    records = gw.intervals(5)
    assert len(records) == len(FLAGS)
    return [dataclasses.replace(r, flags=(flag,)) for r, flag in zip(records, sorted(FLAGS), strict=True)]


def _gateways() -> tuple[SimGateway, SimGateway, SimGateway]:
    return SimGateway(GATEWAYS[0]), SimGateway(GATEWAYS[1], meters=("pv-11",)), SimGateway(SILENT)


async def _feed(peer: GatewayPeer, agg: Aggregator, a: SimGateway, b: SimGateway) -> None:
    sent = [a.next_batch(2), a.seal(_flagged(a))]
    odd = a.intervals(1)
    sent.append(a.seal([dataclasses.replace(odd[0], delta=5.0), odd[1]]))  # delta != end - start
    a.next_batch(1)  # sealed, never sent: the next one is a chain gap
    before_fork = (a.seq, a.prev, a.next_start, dict(a.counters))
    sent.append(a.next_batch(2))
    a.seq, a.prev, a.next_start, a.counters = before_fork
    fork = a.next_batch(2, created_ms=(a.next_start + 7) * 1000)  # same seq and records, other bytes
    sent += [b.next_batch(2) for _ in range(3)]
    for batch in sent:
        await peer.publish(batch.header.gateway, batch.to_bytes())
    await peer.publish(a.gateway, fork.to_bytes())
    await peer.client.publish(batch_topic(a.gateway), b"not a batch", qos=1)
    async with asyncio.timeout(30):
        await agg.wait_for(lambda x: x.store.batch_count() == len(sent) and x.store.rejection_counts()
                           == {"fork": 1, "malformed": 1} and x.store.influx_backlog() == (0, 0))  # fmt: skip


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: PrivateMosquitto, influxdb: PrivateInfluxDB
) -> Fed:
    tmp = tmp_path_factory.mktemp("monitoring")
    database = f"monitoring_{int(time.time() * 1000)}"
    config = make_config(tmp, mqtt_port=mosquitto.port, influx_url=influxdb.url, database=database)
    save_private_key(AGG_KEY, Path(config.key_file))
    a, b, silent = _gateways()
    store = SQLiteEvidenceStore(config.store.path)
    try:
        for gw in (a, b, silent):
            GatewayRegistry(store).enrol(gw.enrolment(), at_ms=0)
    finally:
        store.close()
    started = time.time()

    async def run() -> None:
        async with (
            Aggregator(config, key=AGG_KEY) as agg,
            gateway_peer(mosquitto.port, AGG_KEY.public_key) as peer,
        ):
            async with asyncio.timeout(10):
                await agg.connected.wait()
            await _feed(peer, agg, a, b)

    asyncio.run(run())
    finished = time.time()
    api_config = tmp / "aggregator-api.yaml"
    api_config.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": str(config.store.path)},
        "key_file": str(config.key_file),
        "influx": {"url": influxdb.url, "database": database},
        "api": {"host": "127.0.0.1", "port": 0, "insecure": True},
    }))  # fmt: skip
    ends = {gw.gateway: gw.next_start for gw in (a, b)}
    return Fed(
        influxdb.url, database, api_config, started, finished, ends, {a.gateway: a.seq, b.gateway: b.seq}
    )


@pytest.fixture(scope="module")
def influx_names(fed: Fed) -> dict[str, set[str]]:
    """measurement -> the field and tag keys InfluxDB holds for it."""

    async def keys() -> dict[str, set[str]]:
        async with InfluxV1Client(fed.influx_url, fed.database) as client:
            out: dict[str, set[str]] = {}
            for kind in ("FIELD", "TAG"):
                for series in await client.query(f"SHOW {kind} KEYS"):
                    out.setdefault(series["name"], set()).update(v[0] for v in series["values"])
            return out

    return asyncio.run(keys())


def _fill_macros(query: str) -> str:
    """What Grafana sends: the dashboard's time range, a group-by interval, variables = All."""
    gateways = "(" + "|".join(re.escape(g) for g in GATEWAYS) + ")"
    return (
        query.replace("$timeFilter", f"time >= {(T0 - 3600) * 1000}ms AND time <= now()")
        .replace("$__interval", "1h")
        .replace("$gateway", gateways)
        .replace("$meter", ".*")
        .replace("$quantity", ".*")
    )


def test_every_influxql_query_names_only_what_the_writer_writes(
    fed: Fed, influx_names: dict[str, set[str]]
) -> None:
    settings = InfluxSettings(url="http://x", database="x")
    assert set(influx_names) == {settings.measurement, settings.batch_measurement}
    problems = []
    comparisons: list[tuple[str, str, str, str]] = []
    for where, query in influx_queries():
        [measurement] = re.findall(r'FROM "([^"]+)"', query)
        aliases = set(re.findall(r'AS "([^"]+)"', query))
        for name in set(re.findall(r'"([^"]+)"', query)) - {measurement} - aliases:
            if name not in influx_names.get(measurement, set()):
                problems.append(f"{where}: {measurement} has no field or tag {name!r}")
        for flag in re.findall(r"/\(\^\|,\)(\w+)\(,\|\$\)/", query):
            if flag not in FLAGS:
                problems.append(f"{where}: {flag!r} is not a quality flag")
        comparisons += [(where, measurement, k, v) for k, v in re.findall(r"\"(\w+)\" !?= '([^']*)'", query)]
    assert not problems, "\n".join(problems)
    assert {v for _, _, k, v in comparisons if k == "chain"} <= {v.value for v in ChainVerdict}

    async def occurs() -> list[str]:
        missing = []
        async with InfluxV1Client(fed.influx_url, fed.database) as client:
            for where, measurement, key, value in comparisons:  # each compared value is in the data
                q = f'SELECT count(*) FROM "{measurement}" WHERE "{key}" = \'{value}\''
                if key in ("kind", "gateway", "meter", "quantity", "unit", "status"):
                    q = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}" WHERE "{key}" = \'{value}\''
                if not await client.query(q):
                    missing.append(f"{where}: no {measurement} point has {key} = {value!r}")
        return missing

    assert asyncio.run(occurs()) == []


def test_every_influxql_query_runs_and_finds_the_data(fed: Fed) -> None:
    async def run_all() -> dict[str, list[Series]]:
        async with InfluxV1Client(fed.influx_url, fed.database) as client:
            return {where: await client.query(_fill_macros(q), epoch="ms") for where, q in influx_queries()}

    results = asyncio.run(run_all())
    empty = [where for where, series in results.items() if not any(s["values"] for s in series)]
    assert empty == [], f"queries that found nothing: {empty}"
    gateways = {v[1] for s in results["puhui-energy: variable gateway"] for v in s["values"]}
    assert gateways == set(GATEWAYS)  # the silent gateway wrote nothing
    # The lag panel's time is the newest interval start of each gateway.
    latest = results["puhui-gateways: Latest interval stored, per site [A]"]
    assert {s["tags"]["gateway"]: s["values"][0][0] // 1000 for s in latest} == {
        g: end - 900 for g, end in fed.last_end.items()
    }


def test_aliases_name_tags_the_query_groups_by() -> None:
    for where, target in influx_targets():
        grouped = set(re.findall(r'"(\w+)"', target["query"].split("GROUP BY")[-1]))
        for tag in re.findall(r"\$tag_(\w+)", target.get("alias", "")):
            assert tag in grouped, f"{where}: alias uses $tag_{tag}, the query does not group by it"


# -- Prometheus: the real endpoints -----------------------------------------------------------------


@pytest.fixture(scope="module")
def aggregator_metrics(fed: Fed) -> str:
    token = make_token(fed.config, "metrics:read")
    with running_api(fed.config) as api:
        response = httpx.get(f"{api.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.text


async def _status_port(log: Path, proc: asyncio.subprocess.Process) -> int:
    async with asyncio.timeout(60):
        while True:
            found = re.search(r"status endpoint on http://127\.0\.0\.1:(\d+)/", log.read_text())  # noqa: ASYNC240
            if found:
                return int(found[1])
            assert proc.returncode is None, log.read_text()  # noqa: ASYNC240
            await asyncio.sleep(0.1)  # a log file has no event to wait on


async def _gateway_scrape(tmp: Path, broker: PrivateMosquitto) -> str:
    """``puhui gateway run`` polling a simulated SDM630 on a fast clock, its uplink on a broker
    where no aggregator answers: batches stay in the outbox. Its /metrics once one waits."""
    cfg = fleet_config({"kind": "sdm630", "name": "elec", "unit": 3, "physics": {"model": "heating"}})
    clock = FastClock(cfg.clock.epoch_s, 20.0)
    keys = make_keys(tmp / "keys")
    async with Fleet(cfg, clock=clock) as fleet:
        data = site_for(fleet, "site", "gw-mon-scraped", poll_s=10.0, timeout_s=2.0)
        spec = clock.spec
        data.update({
            "clock": {"mode": "fast", "epoch": spec.epoch, "factor": spec.factor,
                      "wall_start": spec.wall_start},
            "interval_minutes": 1, "grace_seconds": 5, "status": {"host": "127.0.0.1", "port": 0},
            "evidence": {"key_file": str(keys.gateway_file), "state_dir": str(tmp / "state"),
                         "sealing": {"max_records": 1, "max_age_s": 30}},
            "uplink": {"host": broker.host, "port": broker.port, "tls": None,
                       "aggregator_public_key": str(keys.aggregator_pub_file)},
        })  # fmt: skip
        config, log = tmp / "site.yaml", tmp / "gateway.log"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "puhui", "gateway", "run", "--config", str(config),
                cwd=REPO, stdout=err, stderr=err,
            )  # fmt: skip
        try:
            port = await _status_port(log, proc)
            async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(90):
                while True:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    if "puhui_evidence_oldest_unacked_age_s" in text:
                        return text
                    await asyncio.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.wait()


@pytest.fixture(scope="module")
def gateway_metrics(tmp_path_factory: pytest.TempPathFactory, mosquitto: PrivateMosquitto) -> str:
    return asyncio.run(_gateway_scrape(tmp_path_factory.mktemp("gateway-metrics"), mosquitto))


def _sample(exposition: str, name: str, **labels: str) -> float:
    for line in exposition.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m[1] for k, v in labels.items()):
            return float(m[2])
    raise AssertionError(f"no sample {name}{labels}")


def test_the_aggregator_serves_per_gateway_arrival_gaps_and_every_reason(
    fed: Fed, aggregator_metrics: str
) -> None:
    text = aggregator_metrics
    assert _sample(text, "puhui_rejections", reason="fork") == 1
    assert _sample(text, "puhui_rejections", reason="malformed") == 1
    assert _sample(text, "puhui_rejections", reason="bad_signature") == 0  # served before it happens
    assert _sample(text, "puhui_batches_stored", verdict="gap") == 1
    assert _sample(text, "puhui_batches_stored", verdict="reorder") == 0
    for gateway in GATEWAYS:
        received = _sample(text, "puhui_gateway_last_batch_received_seconds", gateway=gateway, site="site-1")
        assert fed.started <= received <= fed.finished
        assert (
            _sample(text, "puhui_gateway_last_interval_end_seconds", gateway=gateway) == fed.last_end[gateway]
        )
        assert _sample(text, "puhui_gateway_highest_seq", gateway=gateway) == fed.highest_seq[gateway]
    assert _sample(text, "puhui_gateway_last_batch_received_seconds", gateway=SILENT) == 0
    assert _sample(text, "puhui_gateway_chain_gaps", gateway=GATEWAYS[0], state="open") == 1
    assert _sample(text, "puhui_gateway_chain_gaps", gateway=GATEWAYS[1], state="open") == 0
    if PROMTOOL:  # the exposition format's conventions, as Prometheus' own linter reads them
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")


def test_every_metric_the_rules_and_dashboards_name_is_served(
    aggregator_metrics: str, gateway_metrics: str
) -> None:
    served = served_metrics(aggregator_metrics) | served_metrics(gateway_metrics)
    rules = yaml.safe_load(RULES.read_text())
    named = {(where, name) for where, expr in prom_expressions() for name in promql_metrics(expr)}
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        text = " ".join(rule["annotations"].values())
        named |= {(f"alert {rule['alert']} annotations", n) for n in re.findall(r"\bpuhui_[a-z_]+\b", text)}
    missing = sorted(f"{where}: {name}" for where, name in named if name not in served)
    assert missing == [], "\n".join(missing)
    assert len({n for _, n in named}) >= 12  # the check looked at something


# -- promtool ---------------------------------------------------------------------------------------

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (Debian: apt-get install prometheus)"
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_file_is_well_formed() -> None:
    """Without promtool: the structure promtool would check (it runs in the next tests)."""
    rules = yaml.safe_load(RULES.read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) == len(set(names))
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
    for needed in (
        "PuhuiGatewaySilent",
        "PuhuiGatewayOutboxGrowing",
        "PuhuiChainFork",
        "PuhuiRejectedBatchRate",
    ):
        assert needed in names


@needs_promtool
def test_promtool_checks_the_rules_the_example_config_and_the_dashboard_queries(tmp_path: Path) -> None:
    assert (done := _promtool("check", "rules", str(RULES), cwd=tmp_path)).returncode == 0, (
        done.stdout + done.stderr
    )
    # Every PromQL of the dashboards, as recording rules: promtool parses them.
    exprs = [e.replace("$gateway", ".*") for w, e in prom_expressions() if not w.startswith("alert")]
    recorded = {"groups": [{"name": "dashboards", "rules": [{"record": f"dash:q{i}", "expr": e}
                                                             for i, e in enumerate(exprs)]}]}  # fmt: skip
    (tmp_path / "dash.yml").write_text(yaml.safe_dump(recorded))
    assert (done := _promtool("check", "rules", "dash.yml", cwd=tmp_path)).returncode == 0, (
        done.stdout + done.stderr
    )
    # The example scrape config, with its secret files where this test can make them.
    example = (REPO / "packaging/prometheus/prometheus.example.yml").read_text()
    for secret in set(re.findall(r"/etc/prometheus/([\w.-]+)", example)):
        (tmp_path / secret).write_text("secret\n")
    (tmp_path / "prometheus.yml").write_text(example.replace("/etc/prometheus/", f"{tmp_path}/"))
    shutil.copy(RULES, tmp_path / "puhui-alerts.yml")
    done = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0 and "SUCCESS: 1 rule files found" in done.stdout, done.stdout + done.stderr


AGG, GWJ = 'job="puhui-aggregator",instance="agg:8443"', 'job="puhui-gateway",instance="10.8.0.11:9108"'
# Each alert: input series (1-minute steps from t=0, PromQL's time() = seconds since t=0), and at
# which minutes it fires with which labels (severity added) and where it does not.
ALERT_CASES: dict[str, dict[str, Any]] = {
    "PuhuiGatewaySilent": {
        "series": {  # a batch every minute; one that stopped at minute 30; one that never sent
            f'puhui_gateway_last_batch_received_seconds{{{AGG},gateway="a",site="s"}}': "0+60x200",
            f'puhui_gateway_last_batch_received_seconds{{{AGG},gateway="b",site="s"}}': "0+60x30 1800x170",
            f'puhui_gateway_last_batch_received_seconds{{{AGG},gateway="c",site="s"}}': "0x200",
        },
        "fires": {
            80: [{"gateway": "c", "site": "s"}],
            110: [{"gateway": "b", "site": "s"}, {"gateway": "c", "site": "s"}],
        },
    },
    "PuhuiChainFork": {
        "series": {
            f'puhui_rejections{{{AGG},reason="fork"}}': "0x30 1x150",
            f'puhui_rejections{{{AGG},reason="malformed"}}': "0x60 0+1x120",
        },
        "fires": {40: [{"reason": "fork"}], 100: []},
    },
    "PuhuiRejectedBatchRate": {
        "series": {
            f'puhui_batches_stored{{{AGG},verdict="append"}}': "0+10x120",
            f'puhui_rejections{{{AGG},reason="malformed"}}': "0x40 0+2x80",
            f'puhui_rejections{{{AGG},reason="fork"}}': "0+5x120",
        },
        "fires": {35: [], 70: [{}]},
    },
    "PuhuiChainGapOpen": {
        "series": {
            f'puhui_gateway_chain_gaps{{{AGG},gateway="a",site="s",state="open"}}': "1x200",
            f'puhui_gateway_chain_gaps{{{AGG},gateway="b",site="s",state="open"}}': "0x200",
            f'puhui_gateway_chain_gaps{{{AGG},gateway="b",site="s",state="explained"}}': "3x200",
        },
        "fires": {100: [], 130: [{"gateway": "a", "site": "s", "state": "open"}]},
    },
    "PuhuiGatewayDroppedBatches": {
        "series": {f'puhui_gateway_chain_gaps{{{AGG},gateway="a",site="s",state="explained"}}': "0x20 4x100"},
        "fires": {30: [{"gateway": "a", "site": "s", "state": "explained"}], 110: []},
    },
    "PuhuiInfluxOutboxGrowing": {
        "series": {f'puhui_influx_outbox_batches{{{AGG},state="pending"}}': "0+5x100 500x100"},
        "fires": {30: [], 60: [{"state": "pending"}], 190: []},
    },
    "PuhuiInfluxBatchParked": {
        "series": {f'puhui_influx_outbox_batches{{{AGG},state="failed"}}': "0x10 1x50"},
        "fires": {5: [], 20: [{"state": "failed"}]},
    },
    "PuhuiGatewayOutboxGrowing": {
        "series": {
            f"puhui_evidence_outbox_depth_batches{{{GWJ}}}": "0+1x120",
            'puhui_evidence_outbox_depth_batches{job="puhui-gateway",instance="b:9108"}': "40x120",
        },
        "fires": {20: [], 60: [{}]},
    },
    "PuhuiGatewayOutboxStale": {
        "series": {f"puhui_evidence_oldest_unacked_age_s{{{GWJ}}}": "0+60x400"},
        "fires": {300: [], 370: [{}]},
    },
    "PuhuiGatewayClockNotGood": {
        "series": {
            f"puhui_clock_good{{{GWJ}}}": "0x30",
            'puhui_clock_good{job="puhui-gateway",instance="b:9108"}': "1x30",
        },
        "fires": {10: [], 20: [{}]},
    },
    "PuhuiMeterNotAnswering": {
        "series": {
            f'puhui_device_up{{{GWJ},meter="m1"}}': "1x60",
            f'puhui_device_up{{{GWJ},meter="m2"}}': "0x60",
        },
        "fires": {20: [], 40: [{"meter": "m2"}]},
    },
}


def _base_labels(series: str) -> dict[str, str]:
    return dict(re.findall(r'(job|instance)="([^"]*)"', series))


@needs_promtool
def test_each_alert_fires_on_its_pattern_and_not_on_its_neighbour(tmp_path: Path) -> None:
    """``promtool test rules`` on the rules as shipped (expr, for, labels), annotations left out
    (promtool compares them whole; ``check rules`` above has parsed their templates)."""
    rules = yaml.safe_load(RULES.read_text())
    severity = {r["alert"]: r["labels"]["severity"] for g in rules["groups"] for r in g["rules"]}
    assert set(ALERT_CASES) == set(severity)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = []
    for alert, case in ALERT_CASES.items():
        base = _base_labels(next(iter(case["series"])))
        level = {"severity": severity[alert]}
        checks = [
            {"eval_time": f"{minute}m", "alertname": alert,
             "exp_alerts": [{"exp_labels": base | labels | level} for labels in fired]}
            for minute, fired in case["fires"].items()
        ]  # fmt: skip
        inputs = [{"series": s, "values": v} for s, v in case["series"].items()]
        tests.append({"interval": "1m", "input_series": inputs, "alert_rule_test": checks})
    unit = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(unit, sort_keys=False))
    done = _promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # ... and the same harness fails when an alert does not fire as expected.
    broken = yaml.safe_load((tmp_path / "tests.yml").read_text())
    broken["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken, sort_keys=False))
    assert _promtool("test", "rules", "broken.yml", cwd=tmp_path).returncode != 0
