"""docs/commissioning.md section 4 as a reader would run it: the shipped village fleet and
site files, the clock starting now, then the scans, a probe and ``gateway check --live``
exactly as the page shows them. docs/profiles.md's DL/T 645 and CJ/T 188 site excerpts
validate. Only the serial server's port differs from the files as shipped (a free one)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.profiles import load_profiles
from gateway.config import Cjt188Meter, Dlt645Meter, parse_site
from testbed.servers import free_ports

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PORT = "15030"


def _excerpts(doc: Path, heading: str) -> list[Any]:
    text = doc.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S)]


def test_the_profiles_page_line_site_excerpts_validate() -> None:
    dlt645, cjt188 = _excerpts(DOCS / "profiles.md", "## DL/T 645 and CJ/T 188 meters")
    data = {"gateway": {"id": "gw", "site": "s"}, "lines": dlt645["lines"],
            "meters": dlt645["meters"] + cjt188["meters"]}  # fmt: skip
    site = parse_site(data, "profiles.md", load_profiles())
    assert [type(m) for m in site.meters] == [Dlt645Meter, Cjt188Meter]


def test_the_commissioning_page_excerpt_is_the_shipped_site() -> None:
    (excerpt,) = _excerpts(DOCS / "commissioning.md", "## 4. A village line")
    shipped = yaml.safe_load((DOCS / "commissioning" / "village-site.yaml").read_text(encoding="utf-8"))
    assert excerpt["lines"] == shipped["lines"]
    by_id = {m["id"]: m for m in shipped["meters"]}
    for meter in excerpt["meters"]:
        assert meter == by_id[meter["id"]], meter["id"]


async def _puhui(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "puhui", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _run(*args: str) -> tuple[int, str]:
    proc = await _puhui(*args)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode or 0, out.decode() + err.decode()


def _ported(path: Path, port: int) -> str:
    text = path.read_text(encoding="utf-8")
    assert PORT in text  # the shipped file still uses the port the page shows
    return text.replace(PORT, str(port))


@pytest.mark.integration
async def test_the_village_section_runs_as_written(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    fleet, site = tmp_path / "village-fleet.yaml", tmp_path / "village-site.yaml"
    fleet.write_text(_ported(DOCS / "commissioning" / "village-fleet.yaml", port), encoding="utf-8")
    site.write_text(_ported(DOCS / "commissioning" / "village-site.yaml", port), encoding="utf-8")
    sim = await _puhui("sim", "run", "--fleet", str(fleet), "--epoch", "now")
    assert sim.stdout is not None
    where = ("--host", "127.0.0.1", "--port", str(port))
    try:
        async with asyncio.timeout(30):
            while (await sim.stdout.readline()).decode().strip() != "ready":
                pass
        houses = await _run("gateway", "dlt645", "scan", *where, "--addresses",
                            "000012345601,000012345602,000012345603")  # fmt: skip
        flats = await _run("gateway", "cjt188", "scan", *where, "--addresses",
                           "20250000000101,20250000000102,20250000000103")  # fmt: skip
        collided = await _run("gateway", "cjt188", "scan", *where)
        probe = await _run("gateway", "cjt188", "probe", *where, "--address", "20250000000101")
        check = await _run("gateway", "check", "--config", str(site), "--live")
    finally:
        sim.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            await sim.communicate()
    assert houses[0] == 0 and "2 of 3 meter(s) found" in houses[1], houses
    assert "no answer within 1 s: 000012345603" in houses[1]
    assert flats[0] == 0 and "2 of 3 meter(s) found" in flats[1], flats
    assert collided[0] == 1 and "more than one meter is probably connected" in collided[1], collided
    assert probe[0] == 0 and "status               ST1=00 ST2=00 (valve open)" in probe[1], probe
    assert check[0] == 0 and "5 of 5 meter(s) ok, 0 warning(s)" in check[1], check[1]
    assert "note: substation counts energy_import: profile chint-dtsu666 says it is unconfirmed" in check[1]
