"""``puhui platform pull``: the reference client of a city or province platform.

Mirrors an operator's aggregator into a directory: every new statement's evidence package
is fetched through the API, verified with :func:`puhui.verify.verify_package` against the
aggregator key the platform pinned, and only then written under ``verified/``. A package
that fails goes to ``refused/`` with the reasons, never to ``verified/``. The list cursor is
saved after each page is settled and a statement's marker file (``.statement`` or
``.reasons.txt``) is written last, atomically, so a crash resumes at the page it stopped in
and skips what it had settled there.

::

    DIR/cursor.json                  {"cursor": ..., "source": URL}
    DIR/verified/<id>.zip            a package that verified
    DIR/verified/<id>.statement      its statement document
    DIR/refused/<id>.zip             a package that did not, and <id>.reasons.txt

The token comes from a file (mode 0600) or an environment variable, never the command line.
Exit status: 0 all pulled packages verified; 1 a package was refused or the API failed;
2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.tls import SecretError, SecretSource, read_secret
from evidence.errors import EvidenceError
from evidence.keys import PublicKey, load_public_key
from puhui.verify import verify_package

PAGE = 100


class PullError(Exception):
    """The API could not be read (the message names the request)."""


@dataclass
class PullReport:
    verified: list[str] = field(default_factory=list)
    refused: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _get(client: httpx.Client, url: str, **params: str | int | None) -> httpx.Response:
    try:
        r = client.get(url, params={k: v for k, v in params.items() if v is not None})
    except httpx.HTTPError as exc:
        raise PullError(f"GET {url}: {exc}") from exc
    if r.status_code != 200:
        try:
            reason = r.json().get("detail", r.text[:200])
        except ValueError:
            reason = r.text[:200]
        raise PullError(f"GET {url}: {r.status_code}: {reason}")
    return r


def pull(
    client: httpx.Client,
    issuer: PublicKey,
    directory: Path,
    *,
    log: Callable[[str], None] = lambda line: None,
    limit: int | None = None,
) -> PullReport:
    """Mirror new statements from ``client``'s API into ``directory``; stop after ``limit``
    statements (None: until the list is exhausted)."""
    verified, refused = directory / "verified", directory / "refused"
    verified.mkdir(parents=True, exist_ok=True)
    refused.mkdir(exist_ok=True)
    state_file = directory / "cursor.json"
    cursor = json.loads(state_file.read_text())["cursor"] if state_file.exists() else None
    report = PullReport()
    while True:
        page = _get(client, "/v1/statements", cursor=cursor, limit=PAGE).json()
        for item in page["items"]:
            if limit is not None and len(report.verified) + len(report.refused) >= limit:
                return report
            sid = item["id"]
            if (verified / f"{sid}.statement").exists() or (refused / f"{sid}.reasons.txt").exists():
                continue  # settled before a crash, on the page being resumed
            _settle(client, issuer, sid, verified, refused, report, log)
        if page["next_cursor"] is not None:  # the page is settled: resume after it
            cursor = page["next_cursor"]
            _write_atomic(state_file, json.dumps({"cursor": cursor}).encode())
        if len(page["items"]) < PAGE:
            return report


def _settle(
    client: httpx.Client,
    issuer: PublicKey,
    sid: str,
    verified: Path,
    refused: Path,
    report: PullReport,
    log: Callable[[str], None],
) -> None:
    """Fetch, verify and file one statement's package; the marker file is written last."""
    package = _get(client, f"/v1/statements/{sid}/package").content
    result = verify_package(package, issuer)
    if result.ok and result.statement_id == sid:
        document = _get(client, f"/v1/statements/{sid}/document").content
        _write_atomic(verified / f"{sid}.zip", package)
        _write_atomic(verified / f"{sid}.statement", document)
        report.verified.append(sid)
        log(f"verified {sid}: ER {result.recomputed_er_tco2e} tCO2e")
    else:
        problems = result.problems or [f"the package holds statement {result.statement_id}, not {sid}"]
        _write_atomic(refused / f"{sid}.zip", package)
        _write_atomic(refused / f"{sid}.reasons.txt", ("\n".join(problems) + "\n").encode())
        report.refused.append((sid, problems))
        log(f"REFUSED {sid}: {problems[0]}")


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="platform_action", metavar="ACTION", required=True)
    p = sub.add_parser("pull", help="mirror and verify an aggregator's statements and evidence packages")
    p.add_argument("--from", dest="url", required=True, help="the aggregator API's base URL (https://...)")
    p.add_argument("--token-file", type=Path, help="file (mode 0600) holding the bearer token")
    p.add_argument("--token-env", help="environment variable holding the bearer token")
    p.add_argument("--ca-file", type=Path, help="CA certificate the API's server certificate must chain to")
    p.add_argument("--issuer", type=Path, required=True, help="the aggregator's public key, pinned")
    p.add_argument("--out", type=Path, required=True, help="directory to mirror into")
    p.set_defaults(func=_pull)
    p = sub.add_parser(
        "receipt", help="sign a receipt for a statement (issuance, transfer, retirement) and send it"
    )
    p.add_argument("--key", type=Path, required=True, help="the platform's private key (PKCS#8 PEM, 0600)")
    p.add_argument("--platform", required=True, help="the platform's name, as the operator pinned it")
    p.add_argument("--kind", required=True, choices=["issuance", "transfer", "retirement"])
    p.add_argument("--statement", required=True, help="statement id (64 hex)")
    p.add_argument("--receipt-id", required=True, help="the platform's own id of this receipt")
    p.add_argument("--account", required=True, help="pseudonymous account (never a name or phone number)")
    p.add_argument("--tco2e", type=float, required=True)
    p.add_argument("--registry-ref", default="", help="the registry's reference, e.g. a serial range")
    p.add_argument("--out", type=Path, help="also write the signed receipt here")
    p.add_argument("--to", dest="url", help="the aggregator API's base URL: POST the receipt there")
    p.add_argument("--token-file", type=Path, help="file (0600) holding a token with receipts:write")
    p.add_argument("--token-env", help="environment variable holding that token")
    p.add_argument("--ca-file", type=Path, help="CA certificate the API's server certificate must chain to")
    p.set_defaults(func=_receipt)


def _pull(args: argparse.Namespace) -> int:
    if (args.token_file is None) == (args.token_env is None):
        print("puhui platform pull: give --token-file or --token-env (one of them)", file=sys.stderr)
        return 2
    try:
        source = SecretSource(
            file=None if args.token_file is None else str(args.token_file), env=args.token_env
        )
        token = read_secret(source, "token")
        issuer = load_public_key(args.issuer.read_bytes())
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(args.ca_file)) if args.ca_file else True
        )
    except (SecretError, OSError, EvidenceError, ValueError, ssl.SSLError) as exc:
        print(f"puhui platform pull: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=args.url, headers=headers, verify=verify, timeout=120) as client:
            report = pull(client, issuer, args.out, log=print)
    except (PullError, OSError) as exc:
        print(f"puhui platform pull: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {len(report.verified)} verified, {len(report.refused)} refused")
    return 0 if report.ok else 1


def _receipt(args: argparse.Namespace) -> int:
    import time

    from evidence.keys import load_private_key
    from evidence.receipt import sign_receipt

    if args.url is not None and (args.token_file is None) == (args.token_env is None):
        print("puhui platform receipt: --to needs --token-file or --token-env (one of them)", file=sys.stderr)
        return 2
    try:
        receipt = sign_receipt(
            load_private_key(args.key), kind=args.kind, receipt_id=args.receipt_id, platform=args.platform,
            statement=args.statement, account=args.account, tco2e=args.tco2e,
            created_ms=time.time_ns() // 1_000_000, registry_ref=args.registry_ref,
        )  # fmt: skip
        if args.out is not None:
            _write_atomic(args.out, receipt.to_bytes())
    except (EvidenceError, OSError) as exc:
        print(f"puhui platform receipt: {exc}", file=sys.stderr)
        return 2
    print(f"signed {receipt.label}")
    if args.url is None:
        return 0
    try:
        file = None if args.token_file is None else str(args.token_file)
        token = read_secret(SecretSource(file=file, env=args.token_env), "token")
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(args.ca_file)) if args.ca_file else True
        )
        with httpx.Client(base_url=args.url, verify=verify, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as client:  # fmt: skip
            r = client.post("/v1/receipts", content=receipt.to_bytes(),
                            headers={"Content-Type": "application/vnd.puhui.receipt"})  # fmt: skip
    except (SecretError, OSError, ssl.SSLError, httpx.HTTPError) as exc:
        print(f"puhui platform receipt: {exc}", file=sys.stderr)
        return 1
    if r.status_code not in (200, 201):
        try:
            reason = r.json().get("detail", r.text[:200])
        except ValueError:
            reason = r.text[:200]
        print(f"puhui platform receipt: refused ({r.status_code}): {reason}", file=sys.stderr)
        return 1
    print(f"taken: statement {receipt.statement[:16]}… is {r.json()['statement_status']}")
    return 0
