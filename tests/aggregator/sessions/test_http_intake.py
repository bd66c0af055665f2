"""The session intake over the real API server (uvicorn, TLS) on 127.0.0.1: a network posts a
week twice (held once), an inconsistent record is refused by name, and a missing, wrong,
under-scoped or other network's token is refused."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from aggregator.api.tokens import TokenStore
from evidence import generate_key, public_key_pem
from firmware_sim.ev_platform import manifest, tampered, to_json
from puhui.cli import main
from puhui.pki import issue_server, make_ca
from tests.aggregator.api.support import RunningApi, running_api

from .support import NETWORK, WEEK, WEEK_END, week_orders

KEY = generate_key()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningApi, Path, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("intake")
    ca = make_ca(tmp / "pki")
    server = issue_server(ca)
    config = tmp / "aggregator.yaml"
    config.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": str(tmp / "agg.db")},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp / "unused.pem"),
        "api": {"host": "127.0.0.1", "port": 0,
                "tls": {"cert_file": str(server.cert_path), "key_file": str(server.key_path)}},
    }))  # fmt: skip
    (tmp / "net.pub.pem").write_bytes(public_key_pem(KEY.public_key))
    assert (
        main(
            [
                "aggregator",
                "networks",
                "--config",
                str(config),
                "add",
                NETWORK,
                "--key",
                str(tmp / "net.pub.pem"),
            ]
        )
        == 0
    )
    tokens = TokenStore(tmp / "agg.db")
    try:
        made = {
            "network": tokens.create(NETWORK, ["sessions:write"], now_ms=0, expires_ms=2**42)[0],
            "other": tokens.create("net-other", ["sessions:write"], now_ms=0, expires_ms=2**42)[0],
            "reader": tokens.create(NETWORK, ["statements:read"], now_ms=0, expires_ms=2**42)[0],
        }
    finally:
        tokens.close()
    with running_api(config) as api:
        yield api, ca.layout.ca_cert, made


def _post(
    served: tuple[RunningApi, Path, dict[str, str]], token: str | None, data: bytes, m: bytes
) -> httpx.Response:
    api, ca, _ = served
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    body = {"manifest": m.decode("ascii"), "file_base64": base64.b64encode(data).decode("ascii")}
    with httpx.Client(base_url=api.url, verify=ssl.create_default_context(cafile=ca), timeout=60) as client:
        return client.post(f"/v1/networks/{NETWORK}/sessions", json=body, headers=headers)


def _week() -> tuple[bytes, bytes, int]:
    orders = week_orders()
    data = to_json(orders)
    return data, manifest(KEY, NETWORK, data, len(orders), WEEK, WEEK_END), len(orders)


def test_a_week_posted_twice_is_held_once(served: tuple[RunningApi, Path, dict[str, str]]) -> None:
    data, m, n = _week()
    first = _post(served, served[2]["network"], data, m)
    again = _post(served, served[2]["network"], data, m)
    assert first.status_code == 200, first.text
    assert (first.json()["accepted"], first.json()["duplicate"], first.json()["refused"]) == (n, 0, 0)
    assert (again.json()["accepted"], again.json()["duplicate"], again.json()["refused"]) == (0, n, 0)


def test_an_inconsistent_record_is_refused_by_session_and_field(
    served: tuple[RunningApi, Path, dict[str, str]],
) -> None:
    orders = week_orders()[:3]
    bad = tampered(orders[1], session_id="net-demo-bad", energy_kwh=orders[1].energy_kwh + 2.0)
    data = to_json([bad])
    answer = _post(served, served[2]["network"], data, manifest(KEY, NETWORK, data, 1, WEEK, WEEK_END))
    assert answer.status_code == 200, answer.text
    [refusal] = answer.json()["refusals"]
    assert (refusal["session_id"], refusal["field"]) == ("net-demo-bad", "energy")


@pytest.mark.parametrize(
    ("who", "status", "error"),
    [(None, 401, "invalid_token"), ("garbage", 401, "invalid_token"), ("reader", 403, "insufficient_scope"),
     ("other", 403, "wrong_network")],
)  # fmt: skip
def test_a_missing_wrong_or_other_token_is_refused(
    served: tuple[RunningApi, Path, dict[str, str]], who: str | None, status: int, error: str
) -> None:
    data, m, _ = _week()
    token = None if who is None else served[2].get(who, "puhui_0123456789ab_" + "A" * 43)
    answer = _post(served, token, data, m)
    assert (answer.status_code, answer.json()["error"]) == (status, error)


def test_a_manifest_signed_with_another_key_is_422(served: tuple[RunningApi, Path, dict[str, str]]) -> None:
    data, _, n = _week()
    answer = _post(
        served, served[2]["network"], data, manifest(generate_key(), NETWORK, data, n, WEEK, WEEK_END)
    )
    assert (answer.status_code, answer.json()["error"]) == (422, "manifest_refused")
    assert "pinned to" in answer.json()["detail"]
