"""The reductions CLI (evidence source injected) and the InfluxDB points of a statement."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from aggregator.influx import InfluxV1Client
from aggregator.methodology import Period, Subject, compute, issue_statement, load_parameter_set
from aggregator.methodology.cli import add_arguments
from aggregator.methodology.influx import statement_points, write_statement
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.store import StatementStore
from evidence import generate_key, public_key_pem, save_private_key

from .evidence_fixture import T0, SealedEvidence
from .test_golden import PERIOD, pv_source


def run(argv: list[str], source: SealedEvidence) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.open_evidence = lambda db: source
    return int(args.func(args))


def test_compute_list_show_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, key = pv_source(), generate_key()
    save_private_key(key, tmp_path / "agg.pem")
    (tmp_path / "agg.pub.pem").write_bytes(public_key_pem(key.public_key))
    db = str(tmp_path / "agg.db")
    compute_args = ["compute", "--db", db, "--key", str(tmp_path / "agg.pem"), "--params",
                    str(PARAMS_DIR / "pv-export-mee.yaml"), "--gateway", "gw-pv", "--meter", "house-01-grid",
                    "--start", "2025-06-21T08:00:00+08:00", "--end", str(PERIOD.end)]  # fmt: skip
    assert run(compute_args, src) == 0
    out = capsys.readouterr().out
    assert "ER 0.023877 tCO2e" in out and '"flag:gap": 1' in out
    statement_id = out.split()[1]
    assert run(compute_args, src) == 1  # the same intervals again
    assert "would credit intervals twice" in capsys.readouterr().err
    assert run(["list", "--db", db], src) == 0
    assert statement_id in capsys.readouterr().out
    assert run(["show", "--db", db, statement_id[:12]], src) == 0
    assert '"er_tco2e": 0.023877' in capsys.readouterr().out
    verify = ["verify", "--db", db, "--issuer", str(tmp_path / "agg.pub.pem"), statement_id]
    assert run(verify, src) == 0
    assert "OK statement" in capsys.readouterr().out
    data = src.batch_bytes("gw-pv", 1)
    assert data is not None
    src.replace_bytes("gw-pv", 1, data.replace(b'"delta":1.25', b'"delta":2.25', 1))
    assert run(verify, src) == 1
    assert "NOT VERIFIED" in capsys.readouterr().err


def test_cli_refuses_bad_unit_and_naive_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = generate_key()
    save_private_key(key, tmp_path / "k.pem")
    params = str(PARAMS_DIR / "pv-export-mee.yaml")
    base = ["compute", "--db", str(tmp_path / "a.db"), "--key", str(tmp_path / "k.pem"), "--params", params,
            "--gateway", "gw-pv", "--start", str(T0), "--end", str(T0 + 900)]  # fmt: skip
    assert run([*base, "--unit", "nonsense"], pv_source()) == 1
    assert "expected ID=METER+METER" in capsys.readouterr().err
    assert run([*base, "--meter", "nobody"], pv_source()) == 1
    assert "meters ['nobody'] are not enrolled" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run([*base[:-4], "--start", "2025-06-21T00:00:00", "--end", "1"], pv_source())


def test_no_statement_is_signed_for_a_period_without_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_key()
    save_private_key(key, tmp_path / "k.pem")
    db = str(tmp_path / "a.db")
    empty = ["compute", "--db", db, "--key", str(tmp_path / "k.pem"), "--params",
             str(PARAMS_DIR / "pv-export-mee.yaml"), "--gateway", "gw-pv", "--meter", "house-01-grid",
             "--start", str(T0 - 30 * 86400), "--end", str(T0 - 29 * 86400)]  # fmt: skip
    assert run(empty, pv_source()) == 1
    err = capsys.readouterr().err
    assert "no attested interval of house-01-grid" in err and "no statement signed" in err
    assert run(["list", "--db", db], pv_source()) == 0
    assert capsys.readouterr().out == ""


def test_ids_as_people_paste_them_and_periods_as_dates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, key = pv_source(), generate_key()
    save_private_key(key, tmp_path / "agg.pem")
    (tmp_path / "agg.pub.pem").write_bytes(public_key_pem(key.public_key))
    db = str(tmp_path / "agg.db")
    assert run(["compute", "--db", db, "--key", str(tmp_path / "agg.pem"), "--params",
                str(PARAMS_DIR / "pv-export-mee.yaml"), "--gateway", "gw-pv", "--meter", "house-01-grid",
                "--start", "2025-06-21T08:00:00+08:00", "--end", str(PERIOD.end)], src) == 0  # fmt: skip
    out = capsys.readouterr().out
    statement_id = out.split()[1]
    assert "period 2025-06-21T08:00+08:00 .. " in out
    assert run(["list", "--db", db], src) == 0
    assert "2025-06-21T08:00+08:00 .. " in capsys.readouterr().out
    for pasted in (statement_id[:12] + "…", statement_id[:8].upper() + "...", f" {statement_id} "):
        assert run(["show", "--db", db, pasted], src) == 0, pasted
        assert statement_id in capsys.readouterr().out
    verify = ["verify", "--db", db, "--issuer", str(tmp_path / "agg.pub.pem"), statement_id[:16] + "…"]
    assert run(verify, src) == 0
    assert "OK statement" in capsys.readouterr().out
    # a .statement file as the tools write them (what a platform received), not looked up by id
    with StatementStore(Path(db)) as store:
        document = store.document(statement_id)
    assert document is not None
    (tmp_path / "received.statement").write_bytes(document)
    assert run([*verify[:-1], str(tmp_path / "received.statement")], src) == 0
    assert f"OK statement {statement_id}" in capsys.readouterr().out
    (tmp_path / "forged.statement").write_bytes(document.replace(b'"er_tco2e":', b'"er_tco2e": ', 1))
    assert run([*verify[:-1], str(tmp_path / "forged.statement")], src) == 1
    assert "NOT VERIFIED" in capsys.readouterr().err
    assert run(["show", "--db", db, "%"], src) == 1
    assert "is not a statement id" in capsys.readouterr().err
    other = "0" * 10 if not statement_id.startswith("0" * 10) else "f" * 10
    assert run(["show", "--db", db, other + "…"], src) == 1
    err = capsys.readouterr().err
    assert f"no statement {other}…" in err and "reductions list" in err


@pytest.mark.integration
async def test_statement_points_in_influxdb(influx_db: InfluxV1Client) -> None:
    src = pv_source()
    params = load_parameter_set(PARAMS_DIR / "pv-export-mee.yaml")
    st = issue_statement(
        compute(src, params, Subject.of_meters("gw-pv", ["house-01-grid"]), PERIOD),
        generate_key(),
        created_ms=0,
    )
    assert len(statement_points(st)) == 2
    await write_statement(influx_db, st)
    series = await influx_db.query(
        "SELECT er_tco2e, be_tco2e, completeness, intervals_used, statement FROM reductions "
        "WHERE scope = 'statement' GROUP BY gateway, parameter_set",
        epoch="s",
    )
    assert series[0]["tags"] == {"gateway": "gw-pv", "parameter_set": "pv-export-mee"}
    assert series[0]["values"] == [[T0, st.er_tco2e, st.er_tco2e, 0.9, 36, st.id]]
    units = await influx_db.query(
        "SELECT be_tco2e, credited FROM reductions WHERE scope = 'unit' GROUP BY unit"
    )
    assert units[0]["tags"] == {"unit": "house-01-grid"} and units[0]["values"][0][1:] == [st.er_tco2e, True]
    assert Period(T0, T0 + 1).seconds == 1
