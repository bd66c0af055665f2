"""``reductions compute --baseline FILE``: a household's recorded coal use caps its baseline,
the statement carries the record, and ``reductions verify`` recomputes the cap from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.methodology.params import PARAMS_DIR
from evidence import generate_key, public_key_pem, save_private_key

from .test_cli_influx import run
from .test_golden import PERIOD
from .test_golden_v2 import heating_source

BASELINE = """format: puhui-heating-baseline/1
units:
  hp-01:
    {coal_t: 0.6, first_day: 2020-01-06, last_day: 2020-01-12, source: "household survey 2020, record 0417"}
"""


def compute_args(tmp_path: Path, baseline: Path) -> list[str]:
    return ["compute", "--db", str(tmp_path / "agg.db"), "--key", str(tmp_path / "agg.pem"),
            "--params", str(PARAMS_DIR / "clean-heating-hebei-2.0.0.yaml"), "--gateway", "gw-heat",
            "--unit", "hp-01=hp-01-elec+hp-01-heat", "--start", str(PERIOD.start), "--end", str(PERIOD.end),
            "--baseline", str(baseline)]  # fmt: skip


def test_compute_with_a_baseline_file_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, key = heating_source(), generate_key()
    save_private_key(key, tmp_path / "agg.pem")
    (tmp_path / "agg.pub.pem").write_bytes(public_key_pem(key.public_key))
    (tmp_path / "baseline.yaml").write_text(BASELINE)
    assert run(compute_args(tmp_path, tmp_path / "baseline.yaml"), src) == 0
    out = capsys.readouterr().out
    assert "clean-heating-hebei 2.0.0" in out and "BE 0.062393" in out  # the cap, test_golden_v2
    statement_id = out.split()[1]
    verify = [
        "verify",
        "--db",
        str(tmp_path / "agg.db"),
        "--issuer",
        str(tmp_path / "agg.pub.pem"),
        statement_id,
    ]
    assert run(verify, src) == 0, capsys.readouterr().err


def test_a_bad_baseline_file_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_private_key(generate_key(), tmp_path / "agg.pem")
    bad = tmp_path / "baseline.yaml"
    bad.write_text(BASELINE.replace("last_day: 2020-01-12", "last_day: 2019-01-12").replace("coal_t", "coal"))
    assert run(compute_args(tmp_path, bad), heating_source()) == 1
    err = capsys.readouterr().err
    assert f"{bad}: units.hp-01.coal_t: required, missing" in err
    assert f"{bad}: units.hp-01.coal: unknown key" in err
    assert "Traceback" not in err
    bad.write_text(BASELINE.replace("hp-01:", "hp-02:"))
    assert run(compute_args(tmp_path, bad), heating_source()) == 1
    assert (
        "baseline records for ['hp-02']: not units of this statement (['hp-01'])" in capsys.readouterr().err
    )
