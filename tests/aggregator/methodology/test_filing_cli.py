"""``reductions compute --production`` and ``--scenario`` with ``--params-dir``: the CLI refuses
to sign with an unfiled or expired set (exit 1, nothing stored), lets the precedence rule pick
the set for the meters' region, and ``reductions verify`` re-runs the rule. Fictitious filings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.store import StatementStore
from evidence import generate_key, public_key_pem, save_private_key

from .filing_fixture import EV_V2, Spec, write_sets
from .test_cli_influx import run
from .test_golden import PERIOD
from .test_golden_v2 import ev_source

LOCAL = Spec("ev-bj-local", "local", regions=("beijing",), since="2024-07-01")
GROUP = Spec("ev-group", "group", since="2021-01-01")
EXPIRED = Spec("ev-national", "national", until="2024-12-31")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    key = generate_key()
    save_private_key(key, tmp_path / "agg.pem")
    (tmp_path / "agg.pub.pem").write_bytes(public_key_pem(key.public_key))
    return tmp_path


def compute_args(tmp_path: Path, *which: str) -> list[str]:
    return ["compute", "--db", str(tmp_path / "agg.db"), "--key", str(tmp_path / "agg.pem"),
            "--gateway", "gw-ev", "--meter", "alfen-1", "--start", str(PERIOD.start),
            "--end", str(PERIOD.end), *which]  # fmt: skip


def stored(tmp_path: Path) -> int:
    if not (tmp_path / "agg.db").exists():
        return 0
    with StatementStore(tmp_path / "agg.db") as store:
        return len(store.list())


def test_production_refuses_an_unfiled_set(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = compute_args(keys, "--params", str(EV_V2), "--production")
    assert run(argv, ev_source()) == 1
    err = capsys.readouterr().err
    assert err == (
        "puhui aggregator reductions: ev-charging-jjj 2.0.0: not filed (no filing section, or "
        "filing.status 'unfiled'): production signs only with a filed set valid for the whole period\n"
    )
    assert stored(keys) == 0
    assert run(argv[:-1], ev_source()) == 0  # without production the shipped set still signs
    assert stored(keys) == 1


def test_production_refuses_an_expired_set(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (path,) = write_sets(keys / "sets", EXPIRED)
    assert run(compute_args(keys, "--params", str(path), "--production"), ev_source()) == 1
    err = capsys.readouterr().err
    assert (
        "ev-national 2.0.0: filing TEST-ev-national-2.0.0 (fictitious) (生态环境部) is valid through " in err
    )
    assert "2024-12-31 (China time), the period ends 2025-06-21T18:00+08:00: production signs only" in err
    assert "Traceback" not in err and stored(keys) == 0


def test_the_rule_picks_the_set_and_verify_runs_it_again(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = keys / "sets"
    write_sets(sets, LOCAL, GROUP, EXPIRED)
    (sets / EV_V2.name).write_bytes(EV_V2.read_bytes())  # the shipped, unfiled set beside them
    src = ev_source()
    argv = compute_args(keys, "--scenario", "ev_charging", "--params-dir", str(sets), "--production")
    assert run(argv, src) == 0
    out = capsys.readouterr().out
    assert "ev-bj-local 2.0.0, period" in out
    assert "chosen by puhui-precedence/1 (tier) among 4 ev_charging sets for region beijing" in out
    filing = "TEST-ev-bj-local-2.0.0 (fictitious) (北京市生态环境局), tier local, DB11/T 3043-2024"
    assert f"production: filing {filing}" in out
    statement_id = out.split()[1]
    db = str(keys / "agg.db")
    assert run(["show", "--db", db, statement_id], src) == 0
    m = json.loads(capsys.readouterr().out)["body"]["methodology"]
    assert m["production"] is True and m["filing"]["number"] == "TEST-ev-bj-local-2.0.0 (fictitious)"
    assert [(c["id"], c["reason"]) for c in m["selection"]["candidates"]] == [
        ("ev-bj-local", "chosen"),
        ("ev-group", "outranked_tier"),
        ("ev-charging-jjj", "unfiled"),
        ("ev-national", "expired"),
    ]
    verify = ["verify", "--db", db, "--issuer", str(keys / "agg.pub.pem"), statement_id]
    assert run([*verify, "--params-dir", str(sets)], src) == 0
    assert "OK statement" in capsys.readouterr().out
    assert run(verify, src) == 1  # the shipped directory holds neither the set nor its rivals
    err = capsys.readouterr().err
    assert f"parameter set: {PARAMS_DIR}: no parameter set ev-bj-local version 2.0.0" in err


def test_without_production_the_rule_takes_the_highest_shipped_version(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = ev_source()
    assert run(compute_args(keys, "--scenario", "ev_charging"), src) == 0
    out = capsys.readouterr().out
    assert "ev-charging-jjj 2.0.0, period" in out
    assert "chosen by puhui-precedence/1 (version) among 2 ev_charging sets for region beijing" in out
    assert "production:" not in out
    verify = ["verify", "--db", str(keys / "agg.db"), "--issuer", str(keys / "agg.pub.pem"), out.split()[1]]
    assert run(verify, src) == 0, capsys.readouterr().err


def test_production_with_no_filed_set_names_every_candidate(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = compute_args(keys, "--scenario", "ev_charging", "--production")
    assert run(argv, ev_source()) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "puhui aggregator reductions: no ev_charging parameter set applies to region 'beijing' for "
        "2025-06-21T08:00+08:00 .. 2025-06-21T18:00+08:00 (production signs only with a filed set valid "
        "for the whole period): ev-charging-jjj 1.0.0: not filed"
    )
    assert "ev-charging-jjj 2.0.0: not filed" in err and stored(keys) == 0


def test_scenario_and_params_exclude_each_other_and_meters_must_be_enrolled(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run(compute_args(keys, "--scenario", "ev_charging", "--params", str(EV_V2)), ev_source())
    with pytest.raises(SystemExit):
        run(compute_args(keys), ev_source())
    capsys.readouterr()
    argv = compute_args(keys, "--scenario", "ev_charging")
    argv[argv.index("alfen-1")] = "nobody"
    assert run(argv, ev_source()) == 1
    assert "gateway gw-ev: meters ['nobody'] are not enrolled" in capsys.readouterr().err
    assert (
        run(compute_args(keys, "--scenario", "ev_charging", "--params-dir", str(keys / "none")), ev_source())
        == 1
    )
    assert f"{keys / 'none'}: not a directory of parameter sets" in capsys.readouterr().err
