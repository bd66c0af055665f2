"""``puhui demo`` on the DL/T 645 + CJ/T 188 village (issue 19): a simulated week, about 4 minutes.

Eight DL/T 645 electricity meters and four CJ/T 188 heat meters on one simulated RS-485
line behind one simulated transparent serial server
(``config/fleets/village-dlt645-cjt188.yaml``), read on schedule by one gateway process
for a simulated week on the fast clock, through sealed batches, MQTT and the aggregator
to a signed clean-heating statement. As in ``tests/test_demo.py``: the demo must exit 0
and its ground-truth check pass (ER within 0.5 % of ER from the simulator's true energy
between each credited record's own readings). Besides: every one of the twelve meters was
read by the gateway and reached the aggregator, and one meter dead on the line for four
simulated hours delayed the others' readings by no more than its own timeout.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests.test_demo import WALL_LIMIT_S, _why, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FLEET = "config/fleets/village-dlt645-cjt188.yaml"
DAYS, POLL_S = 7, 450
METERS = {f"hp-{i:02d}-elec" for i in range(8)} | {f"hp-{i:02d}-heat" for i in range(4)}


@pytest.mark.timeout(WALL_LIMIT_S + 60)
def test_a_simulated_week_of_the_line_village_passes_the_ground_truth_check(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    args = ("--fleet", FLEET, "--days", str(DAYS), "--speed", "2880", "--poll", str(POLL_S))
    result = run_demo(out, *args)
    text = result.stdout
    assert result.returncode == 0, _why(text)
    assert "ER CHECK PASSED" in text, _why(text)
    line = r"^  (\w+) +statement ([0-9.]+) +truth ([0-9.]+) tCO2e +difference ([+-][0-9.]+)% +(PASS|FAIL)$"
    checks = re.findall(line, text, re.M)
    assert [c[0] for c in checks] == ["clean_heating"], _why(text)
    _, er, truth, diff, verdict = checks[0]
    assert verdict == "PASS" and abs(float(diff)) <= 0.5, _why(text)
    assert float(truth) > 0 and float(er) > 0, "a check against zero truth proves nothing"
    # the four houses with a heat meter are credited; the four without are shown, not enrolled
    assert re.search(r"^  clean_heating +4/4 ", text, re.M), _why(text)
    assert "not enrolled: hp-04, hp-05, hp-06, hp-07 (heat pumps without a heat meter" in text, _why(text)
    _all_meters_read(out, text)
    # the dead DL/T 645 meter on the line: the others' closing readings against its timeout
    assert "dead meter hp-02-elec" in text and "DL/T 645 requests unanswered" in text, _why(text)
    assert "the 11 other meters on line village-rs485 kept being read" in text, _why(text)
    assert ": NOT DELAYED BEYOND ITS TIMEOUT" in text, _why(text)
    assert re.search(r"0 stored twice, 0 open chain gaps, 0 rejections", text), _why(text)
    assert re.search(r"platform/mirror: 1 verified, 0 refused", text), _why(text)


def _all_meters_read(out: Path, text: str) -> None:
    """All twelve meters on the one line were polled on schedule by the gateway (its own
    counters) and their intervals reached the aggregator (its evidence store)."""
    head = r"shared line village-rs485 of gw-wanquan-village \(transparent serial server [0-9.:]+, .*\): "
    assert re.search(head + r"12 meters \(4 CJ/T 188, 8 DL/T 645\)", text), _why(text)
    reads = re.search(r"meters read: (\d+)/12; polls answered per meter (\d+)\.\.(\d+)", text)
    assert reads is not None, _why(text)
    slots = DAYS * 86_400 // POLL_S  # the period's poll slots; the dead meter misses 4 h of them
    assert int(reads[1]) == 12 and int(reads[2]) >= 0.9 * slots, reads[0]
    con = sqlite3.connect(f"file:{out / 'aggregator' / 'evidence.sqlite3'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT meter, quantity, count(*) FROM intervals WHERE issues IS NULL GROUP BY meter, quantity"
        ).fetchall()
    finally:
        con.close()
    counted = {m: n for m, q, n in rows if q in ("energy_import", "heat_energy")}
    assert set(counted) == METERS, sorted(counted)
    assert min(counted.values()) >= 0.9 * DAYS * 96, counted  # plausible quarter hours, 96 a day
