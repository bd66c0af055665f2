"""Imported session records per second (issue 24): file import and the HTTP intake.

A stand-in network (:mod:`firmware_sim.ev_platform`, 50 chargers x 2 connectors, 4 weeks at a
5-minute step) exports its sessions as one JSON file with its signed manifest. Figures, same run:

- **parse floor**: the file parsed and every record checked on its own (no store);
- **file import**: :func:`aggregator.sessions.intake.import_sessions` into a fresh SQLite store
  (manifest verified, continuity checked against the store, records and bytes kept, durable);
- **file import again**: the same file (every record a duplicate);
- **HTTP intake**: the same file POSTed to ``/v1/networks/{network}/sessions`` on the real API
  server (uvicorn, TLS, its own process) on 127.0.0.1, into a fresh store.

Run: ``.venv/bin/python -m bench.bench_sessions``.
"""

from __future__ import annotations

import base64
import platform
import ssl
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import yaml

from aggregator.api.tokens import TokenStore
from aggregator.sessions.checks import check_record
from aggregator.sessions.intake import enrol_network, import_sessions
from aggregator.sessions.records import SessionRecord, parse_file
from aggregator.store import SQLiteEvidenceStore
from bench.common import Figure
from evidence import generate_key, public_key_pem
from firmware_sim.ev_platform import CHINA, StandInPlatform, manifest, to_json
from puhui.pki import issue_server, make_ca
from tests.aggregator.api.support import running_api

NETWORK = "net-bench"
START = datetime(2026, 3, 2, tzinfo=CHINA)
END = START + timedelta(days=28)
NOW_MS = int((END + timedelta(days=1)).timestamp() * 1000)


def _file() -> tuple[bytes, bytes, int, object]:
    key = generate_key()
    orders = StandInPlatform(NETWORK, chargers=50, connectors=2, step_s=300).orders(START, END)
    data = to_json(orders)
    return data, manifest(key, NETWORK, data, len(orders), START, END), len(orders), key


def _store(db: Path, key: object) -> SQLiteEvidenceStore:
    store = SQLiteEvidenceStore(db)
    enrol_network(store, NETWORK, public_key_pem(key.public_key), region=None, now_ms=0)  # type: ignore[attr-defined]
    return store


def _timed(work: object) -> float:
    t0 = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - t0


def _http(tmp: Path, data: bytes, m: bytes, key: object) -> float:
    ca = make_ca(tmp / "pki")
    server = issue_server(ca)
    config = tmp / "aggregator.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": str(tmp / "http.db")},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp / "unused.pem"),
        "api": {"host": "127.0.0.1", "port": 0,
                "tls": {"cert_file": str(server.cert_path), "key_file": str(server.key_path)}},
    }))  # fmt: skip
    _store(tmp / "http.db", key).close()
    tokens = TokenStore(tmp / "http.db")
    token = tokens.create(NETWORK, ["sessions:write"], now_ms=0, expires_ms=2**42)[0]
    tokens.close()
    body = {"manifest": m.decode("ascii"), "file_base64": base64.b64encode(data).decode("ascii")}
    with running_api(config) as api:
        trust = ssl.create_default_context(cafile=ca.layout.ca_cert)
        with httpx.Client(base_url=api.url, verify=trust, timeout=300) as client:
            headers = {"Authorization": f"Bearer {token}"}
            t0 = time.perf_counter()
            answer = client.post(f"/v1/networks/{NETWORK}/sessions", json=body, headers=headers)
            seconds = time.perf_counter() - t0
    answer.raise_for_status()
    assert answer.json()["accepted"] == answer.json()["records"], answer.json()
    return seconds


def run() -> list[Figure]:
    """The figures, for ``make bench`` (bench/__main__.py) and :func:`main`."""
    data, m, n, key = _file()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)

        def floor() -> None:
            for r in parse_file(data):
                assert isinstance(r, SessionRecord) and check_record(r, NOW_MS) is None

        t_floor = min(_timed(floor) for _ in range(3))
        store = _store(tmp / "file.db", key)
        try:
            t_first = _timed(lambda: import_sessions(store, NETWORK, data, m, now_ms=NOW_MS, via="file"))
            t_again = _timed(lambda: import_sessions(store, NETWORK, data, m, now_ms=NOW_MS, via="file"))
            assert len(store.imported_sessions(NETWORK)) == n
        finally:
            store.close()
        t_http = _http(tmp, data, m, key)
    floor, peer = n / t_floor, f"parse + checks, {n} sessions"
    return [
        Figure("session records parsed and checked (floor)", floor, "records/s", peer, floor),
        Figure("session file import, fresh store", n / t_first, "records/s", peer, floor),
        Figure("session file imported again (duplicates)", n / t_again, "records/s", peer, floor),
        Figure("session HTTP intake", n / t_http, "records/s", peer, floor),
    ]


def main() -> None:
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    for f in run():
        print(f"| {f.name} | {f.value:,.0f} | {f.unit} | {f.ratio:.2f} |")


if __name__ == "__main__":
    main()
