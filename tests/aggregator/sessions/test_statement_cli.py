"""From the stand-in network's week to a signed, verified statement through the CLI: the
platform-attested kWh are the network's sessions, within 0.5 % of the simulated sockets' truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from aggregator.methodology.params import PARAMS_DIR
from aggregator.registry import GatewayRegistry
from aggregator.store import SQLiteEvidenceStore
from evidence import generate_key, public_key_pem, save_private_key
from evidence.enrolment import EnrolledMeter, make_enrolment
from firmware_sim.ev_platform import manifest, to_csv
from puhui.cli import main

from .support import NETWORK, WEEK, WEEK_END, week_orders


def test_a_week_of_imported_sessions_becomes_a_verified_statement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders = week_orders()
    chargers = sorted({o.charger for o in orders})
    db = tmp_path / "agg.db"
    store = SQLiteEvidenceStore(db)
    try:  # the chargers are enrolled as the meters of a gateway (which sends no interval here)
        gw = generate_key()
        meters = [EnrolledMeter(c, "ev_charging", 22.0, "1") for c in chargers]
        doc = make_enrolment(gw, gateway="gw-net", site="depot", meters=meters, created_ms=0)
        GatewayRegistry(store).enrol(doc.to_bytes(), at_ms=0)
    finally:
        store.close()
    cfg = tmp_path / "aggregator.yaml"
    cfg.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": str(db)},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp_path / "k.pem"),
    }))  # fmt: skip
    net = generate_key()
    (tmp_path / "net.pem").write_bytes(public_key_pem(net.public_key))
    data = to_csv(orders)
    (tmp_path / "week.csv").write_bytes(data)
    (tmp_path / "week.manifest").write_bytes(manifest(net, NETWORK, data, len(orders), WEEK, WEEK_END))
    assert (
        main(
            [
                "aggregator",
                "networks",
                "--config",
                str(cfg),
                "add",
                NETWORK,
                "--key",
                str(tmp_path / "net.pem"),
            ]
        )
        == 0
    )
    assert main(["aggregator", "sessions", "--config", str(cfg), "import", str(tmp_path / "week.csv"),
                 "--manifest", str(tmp_path / "week.manifest"), "--network", NETWORK]) == 0  # fmt: skip
    agg = generate_key()
    save_private_key(agg, tmp_path / "agg.pem")
    (tmp_path / "agg.pub.pem").write_bytes(public_key_pem(agg.public_key))
    compute = ["aggregator", "reductions", "compute", "--db", str(db), "--key", str(tmp_path / "agg.pem"),
               "--params", str(PARAMS_DIR / "ev-charging-jjj.yaml"), "--gateway", "gw-net",
               "--start", str(int(WEEK.timestamp())), "--end", str(int(WEEK_END.timestamp())),
               "--sessions-from", NETWORK]  # fmt: skip
    for c in chargers:
        compute += ["--meter", c]
    capsys.readouterr()
    assert main(compute) == 0
    sid = re.search(r"statement ([0-9a-f]{64})", capsys.readouterr().out)
    assert sid is not None
    assert main(["aggregator", "reductions", "show", "--db", str(db), sid.group(1)]) == 0
    body = json.loads(capsys.readouterr().out)
    body = body.get("body", body)
    levels = body["assurance"]["levels"]
    truth_kwh = sum(o.truth_wh for o in orders) / 1000
    assert levels["platform_attested"]["kwh"] == pytest.approx(truth_kwh, rel=0.005)
    assert levels["gateway_signed"]["kwh"] == 0.0
    assert body["evidence"]["sessions"]["by_status"] == {"credited": len(orders)}
    issuer = str(tmp_path / "agg.pub.pem")
    verify = ["aggregator", "reductions", "verify", "--db", str(db), "--issuer", issuer, sid.group(1)]
    assert main(verify) == 0, capsys.readouterr().err
