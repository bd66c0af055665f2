"""The aggregator signs the programme's statements by itself (``aggregator run`` with a
``programme`` section, real Mosquitto and InfluxDB), and ``puhui aggregator units``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from aggregator.config import AggregatorConfig
from aggregator.methodology.params import PARAMS_DIR, load_parameter_set
from aggregator.programme.schedule import signed_statements
from aggregator.programme.units import UnitRegistry
from aggregator.registry import GatewayRegistry
from aggregator.service import Aggregator
from aggregator.store import SQLiteEvidenceStore
from evidence import generate_key, save_private_key
from evidence.wire import Ack
from puhui.cli import main
from puhui.pki import issue_server, make_ca
from testbed.servers import PrivateMosquitto
from tests.aggregator.ingest_support import gateway_peer, make_config
from tests.aggregator.push_receiver import ReceiverThread, server_context

from .support import GATEWAY, MONTH, MONTH_END, Street, deliver

pytestmark = pytest.mark.integration
DAY = 86400
KEY = generate_key()


def _units(db: Path) -> None:
    with UnitRegistry(db) as units:
        for unit, meter, scenario, acct in (("house-7-pv", "pv-01", "pv", "acct-0001"),
                                            ("house-9-pv", "pv-02", "pv", "acct-0002"),
                                            ("charger-1", "ev-01", "ev_charging", "acct-0004")):  # fmt: skip
            units.add(unit, gateway=GATEWAY, meters=[meter], scenario=scenario, beneficiary=acct,
                      start_ms=MONTH * 1000, now_ms=MONTH * 1000)  # fmt: skip


async def test_a_month_of_batches_over_mqtt_is_stated_per_unit_by_the_running_aggregator(
    tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: object
) -> None:
    url, database = influx_db.url, influx_db.database  # type: ignore[attr-defined]
    base = make_config(tmp_path, mqtt_port=mosquitto.port, influx_url=url, database=database)
    save_private_key(KEY, base.key_file)
    programme = {"period": "month", "settle_hours": 1, "check_every_s": 0.2,
                 "parameter_sets": {"pv": PARAMS_DIR / "pv-export-mee-2.0.0.yaml",
                                    "ev_charging": PARAMS_DIR / "ev-charging-jjj-2.0.0.yaml"}}  # fmt: skip
    ca = make_ca(tmp_path / "pki")
    issued = issue_server(ca)
    token = tmp_path / "push.token"
    token.write_text("push-token-0123456789\n")
    token.chmod(0o600)
    receiver = ReceiverThread(tmp_path / "receiver", token="push-token-0123456789",
                              tls=server_context(issued.cert_path, issued.key_path))  # fmt: skip
    fast = {"poll_s": 0.2, "retry_initial_s": 0.05, "retry_max_s": 0.5}
    push = [{"name": "province", "url": receiver.url, "tls": {"ca_file": str(ca.layout.ca_cert)},
             "token": {"file": str(token)}, **fast}]  # fmt: skip
    config = AggregatorConfig.model_validate({**base.model_dump(), "programme": programme, "push": push})
    street = Street()
    store = SQLiteEvidenceStore(config.store.path)
    GatewayRegistry(store).enrol(street.enrolment(), at_ms=MONTH * 1000)
    store.close()
    _units(config.store.path)
    payloads = [street.seal(street.records(s, s + DAY)) for s in range(MONTH, MONTH_END + DAY, DAY)]
    async with (
        Aggregator(config, key=KEY) as agg,
        gateway_peer(mosquitto.port, KEY.public_key) as peer,
    ):  # fmt: skip
        async with asyncio.timeout(10):
            await agg.connected.wait()
        for p in payloads:
            await peer.publish(GATEWAY, p)
        replies = await peer.wait_replies(len(payloads))
        assert all(isinstance(r, Ack) and r.status == "stored" for r in replies)
        async with asyncio.timeout(30):  # nobody runs a command: the aggregator's schedule signs
            while len(signed_statements(config.store.path)) < 3:  # noqa: ASYNC110 (a database, no event)
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a few more looks: nothing signed twice
        async with asyncio.timeout(30):  # and pushes each to the platform that takes them by push
            while len({p.key for p in receiver.posts}) < 3:  # noqa: ASYNC110 (a server thread's log)
                await asyncio.sleep(0.1)
    receiver.close()
    signed = signed_statements(config.store.path)
    assert sorted(p.key for p in receiver.posts) == sorted(s.statement for s in signed)
    assert sorted((s.unit, s.period_start, s.period_end, s.kind) for s in signed) == [
        ("charger-1", MONTH, MONTH_END, "scheduled"),
        ("house-7-pv", MONTH, MONTH_END, "scheduled"),
        ("house-9-pv", MONTH, MONTH_END, "scheduled"),
    ]


def _config(tmp: Path) -> Path:
    key = tmp / "agg.pem"
    save_private_key(KEY, key)
    sets = {"pv": str(PARAMS_DIR / "pv-export-mee-2.0.0.yaml")}
    path = tmp / "aggregator.yaml"
    path.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": "agg.sqlite3"},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": "agg.pem",
        "programme": {"parameter_sets": sets},
    }))  # fmt: skip
    return path


def test_units_cli_add_change_list_export_and_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    street = Street()
    deliver(tmp_path / "agg.sqlite3", tmp_path, KEY, street, MONTH, MONTH + 2 * DAY, enrol=True)
    base = ["aggregator", "units", "--config", str(config)]
    assert main([*base, "add", "house-7-pv", "--gateway", GATEWAY, "--meter", "pv-01", "--scenario", "pv",
                 "--beneficiary", "acct-0001", "--from", "2026-01-01T00:00+08:00"]) == 0  # fmt: skip
    assert main([*base, "beneficiary", "house-7-pv", "acct-0009", "--from", "2026-01-02T00:00+08:00"]) == 0
    # refused, saying why: personal data, a reused id, a meter of another unit, a change back in time
    for argv, why in (
        ([*base, "add", "h2", "--gateway", GATEWAY, "--meter", "pv-02", "--scenario", "pv",
          "--beneficiary", "13812345678"], "looks like a phone number"),
        ([*base, "add", "h2", "--gateway", GATEWAY, "--meter", "pv-02", "--scenario", "pv",
          "--beneficiary", "张三"], "is not an account reference"),
        ([*base, "add", "house-7-pv", "--gateway", GATEWAY, "--meter", "pv-02", "--scenario", "pv",
          "--beneficiary", "acct-0002"], "already enrolled"),
        ([*base, "add", "h3", "--gateway", GATEWAY, "--meter", "pv-01", "--scenario", "pv",
          "--beneficiary", "acct-0002"], "gw-street/pv-01 (unit house-7-pv)"),
        ([*base, "beneficiary", "house-7-pv", "acct-0003", "--from", "2026-01-01T12:00+08:00"],
         "must start after the last one"),
    ):  # fmt: skip
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, err
    assert main([*base, "list", "--beneficiary", "acct-0001"]) == 0
    assert "house-7-pv  pv  gw-street/pv-01" in capsys.readouterr().out
    out = tmp_path / "export"
    assert main([*base, "export", "house-7-pv", "--out", str(out)]) == 0
    unit = json.loads((out / "unit.json").read_text())
    assert [b["beneficiary"] for b in unit["beneficiaries"]] == ["acct-0001", "acct-0009"]
    rows = (out / "intervals.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 96 and all(",pv-02," not in r for r in rows)  # only its own meter
    records = tmp_path / "records.json"
    assert main([*base, "records", "--out", str(records)]) == 0
    [site] = json.loads(records.read_text())["sites"]
    assert site["site"] == "street" and site["region"] == "hebei"
    [u] = site["units"]
    assert u["meters"] == [{"meter": "pv-01", "scenario": "pv", "rated_power_kw": 7.0, "meter_class": "1",
                            "calibrated_until": "2031-12-31"}]  # fmt: skip
    assert u["parameter_set"]["id"] == "pv-export-mee" and u["parameter_set"]["filing"] is None


def test_the_api_lists_statements_by_beneficiary(tmp_path: Path) -> None:
    import ssl

    import httpx

    from aggregator.methodology.store import StatementFilter, StatementStore
    from aggregator.programme.schedule import StatementScheduler
    from puhui.pki import issue_server, make_ca
    from tests.aggregator.api.support import make_token, running_api

    db = tmp_path / "agg.sqlite3"
    street = Street()
    deliver(db, tmp_path, KEY, street, MONTH, MONTH_END + 2 * DAY, enrol=True)
    _units(db)
    with UnitRegistry(db) as units:
        units.set_beneficiary("house-9-pv", "acct-0003", from_ms=(MONTH + 15 * DAY) * 1000, now_ms=0)
    sets = {"pv": load_parameter_set(PARAMS_DIR / "pv-export-mee-2.0.0.yaml"),
            "ev_charging": load_parameter_set(PARAMS_DIR / "ev-charging-jjj-2.0.0.yaml")}  # fmt: skip

    class Later:
        def now(self) -> float:
            return MONTH_END + 3 * DAY

    evidence, units, statements = SQLiteEvidenceStore(db), UnitRegistry(db), StatementStore(db)
    sched = StatementScheduler(db=db, units=units, statements=statements, evidence=evidence, key=KEY,
                               clock=Later(), parameter_sets=sets, owns=(units, statements))  # type: ignore[arg-type]  # fmt: skip
    try:
        signed = sched.tick().signed
        mine = statements.page(StatementFilter(beneficiary="acct-0003"))
    finally:
        sched.close()
        evidence.close()
    [expected] = [s.statement for s in signed if s.beneficiary == "acct-0003"]
    assert [s.id for s in mine] == [expected]
    ca = make_ca(tmp_path / "pki")
    server = issue_server(ca)
    config = tmp_path / "api.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": str(db)},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp_path / "none.pem"),
        "api": {"host": "127.0.0.1", "port": 0,
                "tls": {"cert_file": str(server.cert_path), "key_file": str(server.key_path)}},
    }))  # fmt: skip
    token = make_token(config, "statements:read")
    with running_api(config) as api:
        tls = ssl.create_default_context(cafile=ca.layout.ca_cert)
        r = httpx.get(api.url + "/v1/statements", params={"beneficiary": "acct-0003"}, verify=tls,
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert (item["id"], item["beneficiary"], item["units"]) == (expected, "acct-0003", ["house-9-pv"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"programme": {"parameter_sets": {"pv": "missing-set.yaml"}}}, "missing-set.yaml: cannot read"),
        ({"influx": {"url": "http://127.0.0.1:9", "database": "unused", "username": "u",
                     "password": {"file": "no-such-password"}}}, "no-such-password"),
    ],
)  # fmt: skip
def test_aggregator_run_names_a_bad_programme_or_secret_file_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, object], message: str
) -> None:
    config = _config(tmp_path)
    data = yaml.safe_load(config.read_text()) | change
    config.write_text(yaml.safe_dump(data))
    assert main(["aggregator", "run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
