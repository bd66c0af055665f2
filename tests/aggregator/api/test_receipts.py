"""Platform receipts over the API: signed by a pinned platform key, taken once, in order
(issuance, then transfers, then one retirement), shown as the statement's status; forged,
unpinned, out-of-order and over-quantity receipts refused with the reason; a retired
statement's intervals can never be credited again, and the refusal names the receipt."""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx
import pytest

from aggregator.methodology.errors import DoubleClaim, ReceiptRefused
from aggregator.methodology.statements import parse_statement, sign_statement
from aggregator.methodology.store import StatementStore
from evidence import generate_key
from evidence.receipt import Receipt, parse_receipt, sign_receipt
from tests.aggregator.api.support import PLATFORM, Populated, RunningApi, make_token

pytestmark = pytest.mark.integration
RECEIPT = "application/vnd.puhui.receipt"


def _receipt(populated: Populated, statement: str, kind: Any, rid: str, **over: Any) -> Receipt:
    fields: dict[str, Any] = {
        "kind": kind, "receipt_id": rid, "platform": PLATFORM, "statement": statement,
        "account": "acct-7f3a", "tco2e": 0.1, "created_ms": int(time.time() * 1000),
        "registry_ref": "CN-HB-0001",
    }  # fmt: skip
    fields.update(over)
    key = fields.pop("key", populated.platform)
    return sign_receipt(key, **fields)


@pytest.fixture(scope="module")
def http(api: RunningApi, populated: Populated) -> httpx.Client:
    token = make_token(populated.config, "receipts:write", "statements:read")
    trust = ssl.create_default_context(cafile=populated.ca)
    return httpx.Client(
        base_url=api.url, verify=trust, timeout=60, headers={"Authorization": f"Bearer {token}"}
    )


def _post(http: httpx.Client, r: Receipt | bytes) -> httpx.Response:
    data = r if isinstance(r, bytes) else r.to_bytes()
    return http.post("/v1/receipts", content=data, headers={"Content-Type": RECEIPT})


def _status(http: httpx.Client, sid: str) -> str:
    return str(http.get(f"/v1/statements/{sid}").json()["summary"]["status"])


def test_issuance_transfer_retirement_in_order_and_each_taken_once(
    http: httpx.Client, populated: Populated
) -> None:
    sid = populated.statements[0]
    assert _status(http, sid) == "signed"
    early = _post(http, _receipt(populated, sid, "transfer", "t-0"))
    assert early.status_code == 409 and "needs the statement's issuance first" in early.json()["detail"]
    issued = _receipt(populated, sid, "issuance", "i-1")
    first, again = _post(http, issued), _post(http, issued)
    assert (first.status_code, first.json()["new"]) == (201, True)
    assert (again.status_code, again.json()["new"]) == (200, False)
    assert _status(http, sid) == "issued"
    assert _post(http, _receipt(populated, sid, "issuance", "i-2")).status_code == 409
    assert _post(http, _receipt(populated, sid, "transfer", "t-1", account="acct-91bc")).status_code == 201
    assert _status(http, sid) == "transferred"
    assert _post(http, _receipt(populated, sid, "retirement", "r-1")).status_code == 201
    assert _status(http, sid) == "retired"
    after = _post(http, _receipt(populated, sid, "transfer", "t-2"))
    assert after.status_code == 409 and "retired already" in after.json()["detail"]
    listed = http.get(f"/v1/statements/{sid}/receipts").json()
    assert [r["kind"] for r in listed] == ["issuance", "transfer", "retirement"]
    retired = http.get("/v1/statements", params={"status": "retired"}).json()["items"]
    assert [s["id"] for s in retired] == [sid]
    signed = http.get("/v1/statements", params={"status": "signed"}).json()["items"]
    assert sid not in {s["id"] for s in signed} and len(signed) == len(populated.statements) - 1


@pytest.mark.parametrize("case", ["other key", "unpinned platform", "byte changed", "another document"])
def test_forged_and_conflicting_receipts_are_refused_with_the_reason(
    http: httpx.Client, populated: Populated, case: str
) -> None:
    sid = populated.statements[1]
    if case == "other key":
        r = _post(http, _receipt(populated, sid, "issuance", "x-1", key=generate_key()))
        assert r.status_code == 422 and "pinned key of city-platform" in r.json()["detail"]
    elif case == "unpinned platform":
        r = _post(http, _receipt(populated, sid, "issuance", "x-2", platform="rogue-platform"))
        assert r.status_code == 422 and "'rogue-platform' is not pinned" in r.json()["detail"]
    elif case == "byte changed":
        data = _receipt(populated, sid, "issuance", "x-3", tco2e=0.01).to_bytes()
        r = _post(http, data.replace(b'"tco2e":0.01', b'"tco2e":0.02'))
        assert r.status_code == 422 and "signature does not verify" in r.json()["detail"]
    else:
        assert _post(http, _receipt(populated, sid, "issuance", "x-4", tco2e=0.01)).status_code == 201
        r = _post(http, _receipt(populated, sid, "issuance", "x-4", tco2e=0.02))
        assert r.status_code == 409 and "another document under this receipt id" in r.json()["detail"]
    if case != "another document":
        assert _status(http, sid) == "signed"


def test_more_than_the_statement_credits_is_refused(http: httpx.Client, populated: Populated) -> None:
    sid = populated.statements[2]
    er = http.get(f"/v1/statements/{sid}").json()["summary"]["er_tco2e"]
    r = _post(http, _receipt(populated, sid, "issuance", "big-1", tco2e=er * 1.01 + 1e-6))
    assert r.status_code == 409 and "more than the statement's ER" in r.json()["detail"]


def test_a_receipt_needs_its_scope(api: RunningApi, populated: Populated) -> None:
    token = make_token(populated.config, "statements:read")
    trust = ssl.create_default_context(cafile=populated.ca)
    with httpx.Client(base_url=api.url, verify=trust, headers={"Authorization": f"Bearer {token}"}) as c:
        r = c.post("/v1/receipts", content=b"x\n", headers={"Content-Type": RECEIPT})
    assert r.status_code == 403 and "receipts:write" in r.json()["detail"]


def test_a_retired_statement_is_never_credited_again_and_the_refusal_names_the_receipt(
    populated: Populated, tmp_path: Any
) -> None:
    store = StatementStore(populated.db)
    try:
        sid = populated.statements[3]
        store.add_receipt(
            parse_receipt(_receipt(populated, sid, "issuance", "i-9").to_bytes()), received_ms=1
        )
        store.add_receipt(_receipt(populated, sid, "retirement", "r-9"), received_ms=2)
        original = store.get(sid)
        assert original is not None
        body = {**original.body, "created_ms": original.body["created_ms"] + 1}  # a "new" statement
        again = sign_statement(body, populated.aggregator)
        with pytest.raises(
            DoubleClaim, match=r"is retired \(issuance receipt city-platform/i-9, retirement "
        ):
            store.save(again)
        with pytest.raises(ReceiptRefused, match="no such statement"):
            store.add_receipt(_receipt(populated, "0" * 64, "issuance", "i-0"), received_ms=3)
    finally:
        store.close()
    assert parse_statement(again.to_bytes()).id != sid


def test_the_platform_signs_and_sends_a_receipt_from_the_command_line(
    api: RunningApi, populated: Populated, tmp_path: Any
) -> None:
    import subprocess
    import sys

    from evidence import save_private_key

    key = tmp_path / "platform.pem"
    save_private_key(populated.platform, key)
    token = tmp_path / "token"
    token.write_text(make_token(populated.config, "receipts:write") + "\n")
    token.chmod(0o600)
    sid = populated.statements[4]
    base = [sys.executable, "-m", "puhui.cli", "platform", "receipt", "--key", str(key),
            "--platform", PLATFORM, "--statement", sid, "--account", "acct-1", "--tco2e", "0.01",
            "--to", api.url,
            "--token-file", str(token), "--ca-file", str(populated.ca)]  # fmt: skip
    ok = subprocess.run([*base, "--kind", "issuance", "--receipt-id", "cli-1", "--out", str(tmp_path / "r")],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and "is issued" in ok.stdout, ok.stderr
    assert parse_receipt((tmp_path / "r").read_bytes()).receipt_id == "cli-1"
    again = subprocess.run([*base, "--kind", "issuance", "--receipt-id", "cli-2"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 1 and "refused (409)" in again.stderr and "Traceback" not in again.stderr
