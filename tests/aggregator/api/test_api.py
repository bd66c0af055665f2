"""The platform API served by a real uvicorn process over TLS on loopback: paging, scopes,
revocation, TLS, ETags, packages that verify with only the pinned key, inclusion proofs."""

from __future__ import annotations

import base64
import csv
import io
import ssl
import subprocess
import sys

import httpx
import pytest

from aggregator.store import SQLiteEvidenceStore
from evidence.batch import parse_header
from evidence.keys import load_public_key, verify_signature
from evidence.merkle import InclusionProof, leaf_hash, root_from_proof
from puhui.verify import verify_package
from tests.aggregator.api.support import GATEWAY, METERS, STEPS, Populated, RunningApi, make_token

pytestmark = pytest.mark.integration
ALL = ("statements:read", "intervals:read", "registry:read", "metrics:read")


@pytest.fixture(scope="module")
def token(populated: Populated) -> str:
    return make_token(populated.config, *ALL)


def client(api: RunningApi, populated: Populated, token: str | None = None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(
        base_url=api.url, verify=ssl.create_default_context(cafile=populated.ca), headers=headers, timeout=60
    )


def test_health_needs_no_token_and_says_what_it_holds(api: RunningApi, populated: Populated) -> None:
    with client(api, populated) as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["detail"].startswith(f"{-(-STEPS // 400)} batches")


@pytest.mark.parametrize("limit", [1, 97, 1000, 20_000])
def test_paging_over_every_interval_returns_each_once_in_store_order(
    api: RunningApi, populated: Populated, token: str, limit: int
) -> None:
    store = SQLiteEvidenceStore(populated.db)
    try:
        expected = [(ai.batch.seq, ai.index) for ai in store.attested_intervals(gateway=GATEWAY)]
    finally:
        store.close()
    assert len(expected) == len(METERS) * STEPS > 10_000
    seen: list[tuple[int, int]] = []
    cursor = None
    pages = 0
    with client(api, populated, token) as c:
        while True:
            params: dict[str, object] = {"gateway": GATEWAY, "limit": limit}
            if cursor:
                params["cursor"] = cursor
            r = c.get("/v1/intervals", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["items"]) <= limit
            seen += [(i["seq"], i["index"]) for i in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
            if limit == 1 and pages >= 50:  # one-item pages: enough to show the cursor, not all 10,400
                expected = expected[: len(seen)]
                break
    assert seen == expected


def test_intervals_filter_by_meter_and_period_and_export_csv(
    api: RunningApi, populated: Populated, token: str
) -> None:
    with client(api, populated, token) as c:
        js = c.get("/v1/intervals", params={"gateway": GATEWAY, "meter": "pv-02", "limit": 20_000}).json()
        first = js["items"][0]["start"]
        window = {"gateway": GATEWAY, "meter": "pv-02", "start": first + 900 * 10, "end": first + 900 * 20}
        part = c.get("/v1/intervals", params=window).json()["items"]
        text = c.get("/v1/intervals", params={**window, "format": "csv"})
    assert {i["meter"] for i in js["items"]} == {"pv-02"} and len(js["items"]) == STEPS
    assert [i["start"] for i in part] == [first + 900 * k for k in range(10, 20)]
    assert text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert [int(r["start"]) for r in rows] == [i["start"] for i in part]
    assert [float(r["delta"]) for r in rows] == [i["delta"] for i in part]


def test_statements_list_filters_and_pages(api: RunningApi, populated: Populated, token: str) -> None:
    with client(api, populated, token) as c:
        all_items = c.get("/v1/statements", params={"limit": 1000}).json()["items"]
        paged: list[str] = []
        cursor = None
        while True:
            params: dict[str, object] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/statements", params=params).json()
            paged += [s["id"] for s in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        by_unit = c.get("/v1/statements", params={"unit": "pv-01"}).json()["items"]
        later = c.get("/v1/statements", params={"period_from": all_items[-1]["period_start"]}).json()["items"]
    assert sorted(s["id"] for s in all_items) == sorted(populated.statements)
    assert paged == [s["id"] for s in all_items]
    assert by_unit and all(s["units"] == ["pv-01"] for s in by_unit)
    assert len(by_unit) == len(populated.statements) // 2
    assert {s["period_start"] for s in later} == {all_items[-1]["period_start"]}


def test_a_statement_and_its_document_carry_etags(api: RunningApi, populated: Populated, token: str) -> None:
    sid = populated.statements[0]
    with client(api, populated, token) as c:
        detail = c.get(f"/v1/statements/{sid}")
        doc = c.get(f"/v1/statements/{sid}/document")
        again = c.get(f"/v1/statements/{sid}/document", headers={"If-None-Match": doc.headers["etag"]})
        other = c.get(f"/v1/statements/{sid}/document", headers={"If-None-Match": '"something-else"'})
    assert detail.status_code == 200 and detail.json()["summary"]["id"] == sid
    assert detail.json()["document"].encode() == doc.content
    assert doc.headers["etag"] == f'"{sid}"'
    assert again.status_code == 304 and again.content == b""
    assert other.status_code == 200 and other.content == doc.content


def test_the_package_served_verifies_with_only_the_pinned_key(
    api: RunningApi, populated: Populated, token: str
) -> None:
    sid = populated.statements[-1]
    with client(api, populated, token) as c:
        first = c.get(f"/v1/statements/{sid}/package")
        second = c.get(f"/v1/statements/{sid}/package")
    assert first.status_code == 200 and first.headers["content-type"] == "application/zip"
    assert first.content == second.content and first.headers["etag"] == second.headers["etag"]
    report = verify_package(first.content, populated.aggregator.public_key)
    assert report.ok, report.problems
    assert report.statement_id == sid


def test_an_inclusion_proof_leads_to_the_signed_root(
    api: RunningApi, populated: Populated, token: str
) -> None:
    with client(api, populated, token) as c:
        gw = c.get("/v1/gateways").json()[0]
        proof = c.get("/v1/intervals/proof", params={"gateway": GATEWAY, "seq": 3, "index": 217}).json()
        missing = c.get("/v1/intervals/proof", params={"gateway": GATEWAY, "seq": 3, "index": 10**6})
    key = load_public_key(base64.b64decode(gw["keys"][0]["public_key"]))
    header = proof["header"].encode()
    signature = base64.b64decode(__import__("json").loads(proof["signature_line"])["sig"])
    verify_signature(key, signature, header)
    leaf = leaf_hash(proof["record"].encode())
    assert leaf.hex() == proof["leaf_hash"]
    path = InclusionProof(proof["index"], proof["tree_size"], tuple(bytes.fromhex(h) for h in proof["path"]))
    assert root_from_proof(leaf, path).hex() == parse_header(header).root == proof["root"]
    assert missing.status_code == 404 and "no index" in missing.json()["detail"]


def test_registry_endpoints_serve_the_signed_documents(
    api: RunningApi, populated: Populated, token: str
) -> None:
    from evidence.enrolment import parse_enrolment
    from evidence.keylist import verify_keylist

    with client(api, populated, token) as c:
        enrolment = c.get(f"/v1/gateways/{GATEWAY}/enrolment")
        keys = c.get("/v1/keys")
        keys_again = c.get("/v1/keys")
        unknown = c.get("/v1/gateways/nobody/enrolment")
    assert parse_enrolment(enrolment.content).gateway == GATEWAY
    listed = verify_keylist(keys.content, populated.aggregator.public_key)
    assert listed.gateway_key(GATEWAY, listed.gateway_keys[0].key_id) is not None
    assert keys.content == keys_again.content  # dated by its content, not by the request
    assert unknown.status_code == 404


def test_metrics_count_batches_and_requests(api: RunningApi, populated: Populated, token: str) -> None:
    with client(api, populated, token) as c:
        c.get("/v1/statements")
        text = c.get("/metrics").text
    assert f'puhui_batches_stored{{verdict="append"}} {-(-STEPS // 400)}' in text
    assert 'puhui_api_requests_total{method="GET",route="/v1/statements",status="200"}' in text
    assert 'puhui_api_request_seconds_bucket{method="GET",route="/v1/statements",le="+Inf"}' in text


@pytest.mark.parametrize(
    ("path", "scope"),
    [("/v1/statements", "statements:read"), ("/v1/intervals?gateway=gw-pv", "intervals:read"),
     ("/v1/gateways", "registry:read"), ("/metrics", "metrics:read")],
)  # fmt: skip
def test_each_endpoint_needs_its_scope(api: RunningApi, populated: Populated, path: str, scope: str) -> None:
    others = [s for s in ALL if s != scope]
    with client(api, populated, make_token(populated.config, *others)) as c:
        refused = c.get(path)
    with client(api, populated, make_token(populated.config, scope)) as c:
        allowed = c.get(path)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "insufficient_scope" and scope in refused.json()["detail"]
    assert f'scope="{scope}"' in refused.headers["www-authenticate"]
    assert allowed.status_code == 200


def test_missing_malformed_unknown_and_revoked_tokens_get_401_with_a_reason(
    api: RunningApi, populated: Populated
) -> None:
    token = make_token(populated.config, "statements:read")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    cases = {None: "no bearer token", "puhui_nope": "malformed token", forged: "unknown token"}
    for bad, reason in cases.items():
        with client(api, populated, bad) as c:
            r = c.get("/v1/statements")
        assert r.status_code == 401 and reason in r.json()["detail"], (bad, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    with client(api, populated, token) as c:
        assert c.get("/v1/statements").status_code == 200
        token_id = token.split("_")[1]
        subprocess.run(
            [sys.executable, "-m", "puhui.cli", "aggregator", "tokens", "--config", str(populated.config),
             "revoke", token_id], check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        r = c.get("/v1/statements")
    assert r.status_code == 401 and f"token {token_id} is revoked" in r.json()["detail"]


def test_an_expired_token_is_refused(api: RunningApi, populated: Populated) -> None:
    from aggregator.api.tokens import TokenStore

    store = TokenStore(populated.db)
    try:
        token, info = store.create("old", ["statements:read"], now_ms=1_000, expires_ms=2_000)
    finally:
        store.close()
    with client(api, populated, token) as c:
        r = c.get("/v1/statements")
    assert r.status_code == 401 and f"token {info.id} is expired" in r.json()["detail"]


def test_only_tls_clients_that_trust_the_ca_get_through(
    api: RunningApi, populated: Populated, token: str
) -> None:
    assert api.url.startswith("https://")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(api.url + "/healthz", verify=ssl.create_default_context())
    plain = api.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        r = httpx.get(plain + "/healthz", timeout=5)
        assert r.status_code >= 400  # h11 answers a plaintext request on a TLS port with an error
        raise httpx.HTTPError("plain HTTP was not served")


@pytest.mark.parametrize(
    ("params", "needle"),
    [({"cursor": "bm90LWEtY3Vyc29y"}, "is not one this API gave"), ({"limit": 50_000}, "page bound"),
     ({"gateway": GATEWAY, "unit": "no-such-unit"}, "no statement names it")],
)  # fmt: skip
def test_bad_requests_name_what_was_wrong(
    api: RunningApi, populated: Populated, token: str, params: dict[str, object], needle: str
) -> None:
    with client(api, populated, token) as c:
        r = c.get("/v1/intervals", params={"gateway": GATEWAY, **params})
    assert r.status_code in (400, 404) and needle in r.json()["detail"], r.text
