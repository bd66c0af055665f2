"""The installer's status page (issue 20) in real headless Chromium (Debian's ``chromium``).

A running ``puhui gateway run`` (firmware_sim meters over TCP and MQTT, one dead meter, the
evidence pipeline acknowledged by the stand-in aggregator) serves the page; Chromium loads
it at a phone's size: the DOM it built has each meter with its state and last reading, the
breaker, the last interval, outbox, last ack, clock and key id; its screenshot is a real
picture (decoded here: many colours, much of it not background). Plus the page's escaping,
the clock-not-good rendering, and the password required off loopback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from common.clock import FastClock
from evidence.keys import load_private_key
from firmware_sim import Fleet
from gateway.config import parse_site
from gateway.errors import ConfigError
from gateway.status import StatusServer, StatusSettings
from gateway.status_page import render_page
from puhui.sitegen import site_for
from testbed.servers import PrivateMosquitto
from tests.gateway.ack_subscriber import AckSubscriber
from tests.gateway.evidence_helpers import make_keys
from tests.sim.helpers import fleet_config

REPO = Path(__file__).resolve().parents[2]
SDM630 = {"kind": "sdm630", "name": "elec", "unit": 3, "physics": {"model": "heating"}}
PLUG = {"kind": "mqtt_plain", "name": "plug", "interval_s": 0.5, "physics": {"model": "pv", "kwp": 0.8}}
PHONE = (412, 915)


# -- the DOM and the picture --------------------------------------------------------------------


class Dom(HTMLParser):
    """Elements by id, meter articles by data-meter, and the text inside each."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.meters: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self._open: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        key = f"#{a['id']}" if "id" in a else (f"meter:{a['data-meter']}" if "data-meter" in a else "")
        if "id" in a:
            self.by_id[a["id"]] = a
        if "data-meter" in a:
            self.meters[a["data-meter"]] = a
        if tag in ("meta", "br", "link"):
            return
        self._open.append(key)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for key in self._open:
            if key:
                self.text[key] = self.text.get(key, "") + data


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) pixels of a non-interlaced 8-bit PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        prev = line
    pixels = [row[x : x + 3] for row in rows for x in range(0, stride, bpp)]
    return width, height, pixels


def chromium(url: str, tmp: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is not installed: make system-deps (scripts/system-deps.sh) installs it"
    argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp / 'chromium-profile'}", f"--window-size={PHONE[0]},{PHONE[1]}",
            *mode, url]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


# -- the running gateway -----------------------------------------------------------------------------


def _site(fleet: Fleet, clock: FastClock, broker: PrivateMosquitto, tmp_path: Path) -> dict[str, Any]:
    keys = make_keys(tmp_path / "keys")
    data = site_for(fleet, "site", "gw-page-1", poll_s=10.0, timeout_s=2.0, mqtt=(broker.host, broker.port))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    dead = {**data["meters"][0], "id": "dead", "connection": {"host": "127.0.0.1", "port": closed,
            "retries": 0, "timeout_s": 0.5}}  # fmt: skip
    spec = clock.spec
    data.update({
        "clock": {"mode": "fast", "epoch": spec.epoch, "factor": spec.factor, "wall_start": spec.wall_start},
        "interval_minutes": 1, "grace_seconds": 5, "boundary_seconds": 1,
        "meters": [*data["meters"], dead],
        "status": {"host": "127.0.0.1", "port": 0},
        "evidence": {"key_file": str(keys.gateway_file), "state_dir": str(tmp_path / "state"),
                     "sealing": {"max_records": 2, "max_age_s": 30}},
        "uplink": {"host": broker.host, "port": broker.port, "tls": None,
                   "aggregator_public_key": str(keys.aggregator_pub_file), "resend_after_s": 2},
    })  # fmt: skip
    data["_keys"] = keys
    return data


async def _status_port(log: Path, proc: asyncio.subprocess.Process) -> int:
    async with asyncio.timeout(60):
        while True:
            text = await asyncio.to_thread(log.read_text)
            found = re.search(r"status endpoint on http://127\.0\.0\.1:(\d+)/", text)
            if found:
                return int(found.group(1))
            assert proc.returncode is None, text
            await asyncio.sleep(0.1)  # a log file has no event to wait on


async def _until(port: int, ready: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(90):
        while True:
            status: dict[str, Any] = (await client.get(f"http://127.0.0.1:{port}/status")).json()
            if ready(status):
                return status
            await asyncio.sleep(0.2)


def _ready(status: dict[str, Any]) -> bool:
    ev, devices, readings = status["evidence"], status["devices"], status["readings"]
    return bool(
        (ev.get("last_ack_seq") or 0) >= 1
        and devices.get("elec", {}).get("state") == "up"
        and devices.get("dead", {}).get("breaker") == "open"
        and "plug" in readings
        and status["intervals"].get("last_end")
    )


@pytest.mark.integration
async def test_the_page_in_headless_chromium_shows_meters_evidence_clock_and_key(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    mqtt = {"host": mosquitto.host, "port": mosquitto.port}
    cfg = fleet_config(SDM630, PLUG, mqtt=mqtt)
    clock = FastClock(cfg.clock.epoch_s, 20.0)
    async with Fleet(cfg, clock=clock) as fleet:
        data = _site(fleet, clock, mosquitto, tmp_path)
        keys = data.pop("_keys")
        config = tmp_path / "site.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        log = tmp_path / "gateway.log"
        known = {"gw-page-1": keys.gateway.public_key}
        agg = AckSubscriber(mosquitto.host, mosquitto.port, tmp_path / "agg.sqlite", gateway_keys=known,
                            aggregator_key=keys.aggregator)  # fmt: skip
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "puhui", "gateway", "run", "--config", str(config),
                cwd=REPO, stdout=err, stderr=err,
            )  # fmt: skip
        try:
            async with agg:
                port = await _status_port(log, proc)
                status = await _until(port, _ready)
                url = f"http://127.0.0.1:{port}/"
                dom_out = await asyncio.to_thread(chromium, url, tmp_path, "--dump-dom")
                shot = tmp_path / "page.png"
                await asyncio.to_thread(chromium, url, tmp_path, f"--screenshot={shot}")
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]

    dom = Dom(dom_out.stdout)
    key_id = load_private_key(keys.gateway_file).key_id
    assert dom.text["#key-id"].strip() == key_id == status["evidence"]["key_id"]
    assert set(dom.meters) == {"elec", "plug", "dead"}
    assert dom.meters["elec"]["data-state"] == "up" and dom.meters["plug"]["data-state"] == "up"
    assert dom.meters["dead"]["data-state"] in ("failing", "breaker_open")
    elec = dom.text["meter:elec"]
    assert "energy_import" in elec and "kWh" in elec and "breaker closed" in elec
    assert "breaker open" in dom.text["meter:dead"]
    assert re.search(r"energy\s*[\d.]+ k?Wh", dom.text["meter:plug"]), dom.text["meter:plug"]
    assert dom.text["#last-ack"].startswith("#") and " at " in dom.text["#last-ack"]
    assert re.fullmatch(r"\d+ batch\(es\), [\d.]+ (B|KiB)", dom.text["#outbox"])
    assert dom.text["#last-interval"] != "none yet" and dom.text["#last-sealed"].startswith("#")
    assert dom.by_id["clock"]["data-ok"] == "true" and "simulated time" in dom.text["#clock"]

    if os.environ.get("PUHUI_STATUS_PAGE_SHOT"):  # to look at it: the file tool shows PNGs
        shutil.copy(shot, os.environ["PUHUI_STATUS_PAGE_SHOT"])
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == PHONE
    colours = Counter(pixels)
    background, count = colours.most_common(1)[0]
    assert len(colours) > 50, "the screenshot is nearly uniform"
    assert count / len(pixels) < 0.9, f"{count / len(pixels):.0%} of the screenshot is {background.hex()}"


# -- the page without a browser: what it says when the clock is bad; escaping ---------------------


def test_a_bad_clock_and_hostile_names_render_safely() -> None:
    status = {
        "gateway": "gw-1", "site": "<b>site</b>",
        "clock": {"ok": False, "detail": "kernel reports the clock unsynchronised", "held_back": 7},
        "devices": {"<script>alert(1)</script>": {"state": "failing", "breaker": "open",
                                                  "last_error": "timeout <i>"}},
        "evidence": {"key_id": "k1", "outbox_depth_batches": 0, "outbox_bytes": 0, "uplink": "disabled"},
        "readings": {}, "intervals": {},
    }  # fmt: skip
    page = render_page(status, now=0)
    dom = Dom(page)
    assert dom.by_id["clock"]["class"] == "bad" and "NOT GOOD" in dom.text["#clock"]
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>site" not in page
    assert dom.text["#last-ack"] == "none yet" and dom.text["#key-id"] == "k1"


def test_off_loopback_the_page_needs_a_password() -> None:
    base = {"gateway": {"id": "gw-1", "site": "s"}, "meters": [
        {"id": "m", "driver": "modbus_tcp", "unit_id": 1, "scenario": "pv", "profile": "sdm120",
         "connection": {"host": "127.0.0.1"}, "nameplate": {"rated_power_kw": 1, "meter_class": "1"},
         "counts": ["energy_import"]}]}  # fmt: skip
    from drivers.modbus.profiles import load_profiles

    with pytest.raises(ConfigError, match=r"'0\.0\.0\.0' is not loopback: set password_file"):
        parse_site({**base, "status": {"host": "0.0.0.0"}}, "site.yaml", load_profiles())
    parse_site({**base, "status": {"host": "0.0.0.0", "password_file": "/etc/puhui/status-password"}},
               "site.yaml", load_profiles())  # fmt: skip
    parse_site({**base, "status": {"host": "::1"}}, "site.yaml", load_profiles())


async def test_with_a_password_every_page_but_healthz_asks_for_it(tmp_path: Path) -> None:
    secret = tmp_path / "status-password"
    secret.write_text("boiler-room-7\n")
    os.chmod(secret, 0o600)
    settings = StatusSettings(host="127.0.0.1", port=0, password_file=str(secret))
    source = {"gateway": "gw-1", "site": "s", "evidence": {}, "devices": {}}
    async with StatusServer(settings, lambda: source) as server, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{server.port}"
        refused = await client.get(f"{url}/")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert (await client.get(f"{url}/status", auth=("installer", "wrong"))).status_code == 401
        assert (await client.get(f"{url}/healthz")).status_code == 200
        page = await client.get(f"{url}/", auth=("installer", "boiler-room-7"))
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        garbled = await client.get(
            f"{url}/", headers={"Authorization": "Basic " + base64.b64encode(b"x").decode()}
        )
        assert garbled.status_code == 401


async def test_an_unreadable_password_file_is_named(tmp_path: Path) -> None:
    from gateway.errors import StatusSetupError

    settings = StatusSettings(host="0.0.0.0", port=0, password_file=str(tmp_path / "absent"))
    with pytest.raises(StatusSetupError, match=f"status.password_file: {tmp_path / 'absent'}: No such file"):
        async with StatusServer(settings, dict):
            pass
