"""The platform API (FastAPI): signed statements, evidence packages, attested intervals.

Everything is read-only and versioned under ``/v1``. Lists page with an opaque cursor
(the last item's place in a stable order: new data never shifts a page already read) and a
bounded ``limit``. Immutable objects (a statement, its package, a batch's proof, an
enrolment document, a checkpoint) carry a strong ETag, and ``If-None-Match`` answers 304.

Every refusal is a JSON :class:`Problem` with a status and a reason: 401 (no, malformed,
unknown, expired or revoked token), 403 (the token lacks the scope), 400 (a bad cursor or
filter), 404 (nothing by that name). The OpenAPI 3.1 document is generated from this code
(``/openapi.json``); the property test (tests/aggregator/api/test_api_schema.py) sends
generated requests and checks every answer against it.
"""

import base64
import binascii
import csv
import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as Path_  # a path parameter (pathlib's Path is used too)
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from aggregator.api.metrics import Metrics
from aggregator.api.sessions import add_session_routes
from aggregator.api.tokens import Refused, TokenStore
from aggregator.errors import AggregatorError
from aggregator.keys import key_list
from aggregator.methodology.errors import MethodologyError, ReceiptRefused
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.store import StatementFilter, StatementStore, StoredStatement
from aggregator.package import build_package
from aggregator.store import IntervalKey

if TYPE_CHECKING:
    from aggregator.store import AnyEvidenceStore
from aggregator.view import AttestedInterval
from evidence.batch import parse_batch
from evidence.errors import EvidenceError
from evidence.keys import GatewayKey, PublicKey
from evidence.merkle import inclusion_proof, leaf_hash
from evidence.receipt import verify_receipt

API_VERSION = "1"
MAX_TIME = 2**40  # POSIX seconds: far beyond any interval, far inside SQLite's integers
Scope = Literal[
    "statements:read", "intervals:read", "registry:read", "metrics:read", "receipts:write", "sessions:write"
]
Status = Literal["signed", "issued", "transferred", "retired"]
MAX_RECEIPT_BYTES = 16_384


# -- response models -------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(_Model):
    """Why a request was refused."""

    status: int
    error: str = Field(description="short machine-readable code, e.g. insufficient_scope")
    detail: str = Field(description="what was wrong with the request, for a person")


class StatementSummary(_Model):
    id: str
    gateway: str
    scenario: str
    units: list[str]
    parameter_set: str
    parameter_version: str
    period_start: int
    period_end: int
    created_ms: int
    er_tco2e: float
    status: Status = Field(description="signed, or what the latest platform receipt did with it")
    beneficiary: str | None = Field(
        default=None, description="the platform account the reductions go to (pseudonymous), if named"
    )
    supplements: list[str] = Field(
        default_factory=list, description="a supplementary statement: the statements it adds to"
    )


class StatementPage(_Model):
    items: list[StatementSummary]
    next_cursor: str | None = Field(
        description="the cursor after the last item: ask with it for the next page, or later for "
        "statements signed since (null: the page is empty)"
    )


class StatementDetail(_Model):
    summary: StatementSummary
    document: str = Field(description="the signed statement exactly as stored (two lines, ASCII)")
    body: dict[str, Any] = Field(description="the signed body, decoded")
    key_id: str


class IntervalItem(_Model):
    gateway: str
    seq: int = Field(description="the signed batch holding the record")
    index: int = Field(description="the record's leaf index in that batch")
    meter: str
    quantity: str
    unit: str
    start: int
    end: int
    kind: str
    counter_start: float | None
    counter_end: float | None
    delta: float | None
    samples: int
    expected: int
    flags: list[str]
    quality: Literal["plausible", "implausible"]
    issues: list[str] = Field(description="the aggregator's plausibility findings (empty: none)")


class IntervalPage(_Model):
    items: list[IntervalItem]
    next_cursor: str | None


class InclusionProofOut(_Model):
    gateway: str
    seq: int
    index: int
    record: str = Field(description="the record's exact bytes (one JSON line)")
    leaf_hash: str = Field(description="hex SHA-256(0x00 || record), RFC 9162")
    tree_size: int
    path: list[str] = Field(description="hex audit path, RFC 9162 2.1.3")
    root: str = Field(description="hex Merkle root the batch header signs")
    header: str = Field(description="the batch header line, exactly as signed")
    signature_line: str
    key_id: str


class GatewayKeyOut(_Model):
    key_id: str
    public_key: str = Field(description="base64 DER SubjectPublicKeyInfo")
    valid_from_seq: int
    source: str
    revoked_from_ms: int | None


class MeterOut(_Model):
    meter: str
    scenario: str
    rated_power_kw: float
    meter_class: str
    region: str | None
    calibrated_until: str | None


class GatewayOut(_Model):
    gateway: str
    site: str
    region: str | None
    enrolled_ms: int
    batches: int
    keys: list[GatewayKeyOut]
    meters: list[MeterOut]


class CheckpointOut(_Model):
    size: int = Field(description="batches in the log when it was signed")
    created_ms: int
    url: str


class ReceiptOut(_Model):
    platform: str
    receipt_id: str
    kind: Literal["issuance", "transfer", "retirement"]
    tco2e: float
    created_ms: int


class ReceiptTaken(_Model):
    receipt: ReceiptOut
    statement: str
    statement_status: Status
    new: bool = Field(description="false: the same receipt was taken before (idempotent)")


class Health(_Model):
    status: Literal["ok", "unavailable"]
    detail: str
    api_version: str


# -- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.problem = Problem(status=status, error=error, detail=detail)
        self.headers = headers or {}


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem} for code in codes}


AUTH = _problems(401, 403)


def _not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", what)


# -- context ---------------------------------------------------------------------------------


@dataclass
class ApiContext:
    """What the API serves from. ``signing_key`` signs the key list (None: not served)."""

    evidence: "AnyEvidenceStore"  # a string: this module has no __future__ annotations (FastAPI)
    statements: StatementStore
    tokens: TokenStore
    params_dir: Path = PARAMS_DIR
    signing_key: GatewayKey | None = None
    now_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    max_page: int = 1000
    metrics: Metrics = field(default_factory=Metrics)
    platform_keys: dict[str, PublicKey] = field(default_factory=dict)  # pinned, for receipts


# -- cursors ---------------------------------------------------------------------------------


def _encode_cursor(kind: str, key: list[Any]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(kind: str, cursor: str | None, types: tuple[type, ...]) -> list[Any] | None:
    if cursor is None:
        return None
    bad = ApiError(400, "bad_cursor", f"cursor {cursor[:40]!r} is not one this API gave for {kind}")
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise bad from exc
    if not isinstance(raw, list) or len(raw) != len(types) + 1 or raw[0] != kind:
        raise bad
    values = raw[1:]
    if not all(type(v) is t for v, t in zip(values, types, strict=True)):
        raise bad
    return values


# -- the application -------------------------------------------------------------------------


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="puhui aggregator API",
        version=API_VERSION,
        description=(
            "Attested metering data, signed reduction statements and portable evidence packages "
            "for carbon-inclusive platforms. Read-only; bearer tokens with scopes."
        ),
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="a token from `puhui aggregator tokens create`")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.problem.model_dump(), status_code=exc.problem.status, headers=exc.headers)

    @app.middleware("http")
    async def _timed(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        ctx.metrics.observe(request.method, path, response.status_code, time.perf_counter() - t0)
        return response

    def need(scope: Scope) -> Any:
        def check(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
            header = None if cred is None else f"{cred.scheme} {cred.credentials}"
            try:
                return ctx.tokens.authorise(header, scope, now_ms=ctx.now_ms()).id
            except Refused as exc:
                error = "insufficient_scope" if exc.status == 403 else "invalid_token"
                challenge = f'Bearer error="{error}", error_description="{exc.reason}"'
                if exc.status == 403:
                    challenge += f', scope="{scope}"'
                raise ApiError(exc.status, error, exc.reason, {"WWW-Authenticate": challenge}) from exc

        return Depends(check)

    def page_limit(limit: int) -> int:
        if limit > ctx.max_page:
            raise ApiError(400, "bad_limit", f"limit {limit} is above this API's page bound {ctx.max_page}")
        return limit

    def etag_response(
        request: Request, data: bytes, media_type: str, etag: str, headers: dict[str, str] | None = None
    ) -> Response:
        tag = f'"{etag}"'
        common = {"ETag": tag, "Cache-Control": "public, max-age=31536000, immutable", **(headers or {})}
        wanted = request.headers.get("if-none-match", "")
        if tag in [t.strip() for t in wanted.split(",")] or wanted.strip() == "*":
            return Response(status_code=304, headers=common)
        return Response(data, media_type=media_type, headers=common)

    # -- health and metrics ----------------------------------------------------------------

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, tags=["operations"])
    def healthz() -> Any:
        """Liveness and readiness: the stores answer. No token needed."""
        try:
            count = ctx.evidence.batch_count()
            ctx.statements.page(StatementFilter(), limit=1)
        except (AggregatorError, MethodologyError) as exc:
            body = Health(status="unavailable", detail=str(exc), api_version=API_VERSION)
            return JSONResponse(body.model_dump(), status_code=503)
        return Health(status="ok", detail=f"{count} batches held", api_version=API_VERSION)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={**AUTH, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        tags=["operations"],
    )
    def metrics(_: str = need("metrics:read")) -> Response:
        """Prometheus text exposition: ingest verdicts, rejections, outbox, API latency."""
        return Response(ctx.metrics.render(ctx.evidence), media_type="text/plain; version=0.0.4")

    # -- statements --------------------------------------------------------------------------

    def summary(s: StoredStatement, document: bytes) -> StatementSummary:
        body = json.loads(document.split(b"\n", 1)[0])
        units = [str(u["id"]) for u in body["subject"]["units"]]
        return StatementSummary(
            beneficiary=body["subject"].get("beneficiary"),
            supplements=[str(x["statement"]) for x in body.get("supplements", [])],
            id=s.id, gateway=s.gateway, scenario=s.scenario, units=units, parameter_set=s.parameter_set,
            parameter_version=s.parameter_version, period_start=s.period_start, period_end=s.period_end,
            created_ms=s.created_ms, er_tco2e=s.er_tco2e, status=ctx.statements.status(s.id),  # type: ignore[arg-type]
        )  # fmt: skip

    def stored(statement_id: str) -> bytes:
        if len(statement_id) != 64 or statement_id.strip("0123456789abcdef"):
            raise ApiError(
                400, "bad_id", f"statement id {statement_id[:80]!r} is not 64 lower-case hex digits"
            )
        document = ctx.statements.document(statement_id)
        if document is None:
            raise _not_found(f"no statement {statement_id}")
        return document

    @app.get(
        "/v1/statements",
        response_model=StatementPage,
        responses=_problems(400, 401, 403),
        tags=["statements"],
    )
    def list_statements(
        _: Annotated[str, need("statements:read")],
        gateway: Annotated[str | None, Query(max_length=128)] = None,
        scenario: Annotated[Literal["pv", "ev_charging", "clean_heating"] | None, Query()] = None,
        unit: Annotated[str | None, Query(max_length=128)] = None,
        period_from: Annotated[
            int | None, Query(ge=0, le=MAX_TIME, description="period start >= (s)")
        ] = None,
        period_to: Annotated[int | None, Query(ge=0, le=MAX_TIME, description="period end <= (s)")] = None,
        status: Annotated[Status | None, Query()] = None,
        beneficiary: Annotated[
            str | None, Query(max_length=64, description="the platform account the statement is for")
        ] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> StatementPage:
        """Signed statements, oldest period first; page with ``cursor``."""
        after = _decode_cursor("statements", cursor, (int, str, str))
        where = StatementFilter(gateway, scenario, unit, period_from, period_to, status, beneficiary)
        key = None if after is None else (after[0], after[1], after[2])
        rows = ctx.statements.page(where, after=key, limit=page_limit(limit))
        items = [summary(s, ctx.statements.document(s.id) or b"") for s in rows]
        last = rows[-1] if rows else None  # poll from it later: statements signed since come after
        nxt = (
            None if last is None else _encode_cursor("statements", [last.period_start, last.gateway, last.id])
        )
        return StatementPage(items=items, next_cursor=nxt)

    @app.get(
        "/v1/statements/{statement_id}",
        response_model=StatementDetail,
        responses=_problems(400, 401, 403, 404),
        tags=["statements"],
    )
    def get_statement(statement_id: str, request: Request, _: Annotated[str, need("statements:read")]) -> Any:
        """One statement: its signed bytes and decoded fields (ETag: its id)."""
        document = stored(statement_id)
        body = json.loads(document.split(b"\n", 1)[0])
        sig = json.loads(document.split(b"\n")[1])
        ps = body["methodology"]["parameter_set"]
        s = StoredStatement(
            statement_id, str(body["subject"]["gateway"]), str(body["methodology"]["scenario"]),
            str(ps["id"]), str(ps["version"]),
            int(body["period"]["start"]), int(body["period"]["end"]), int(body["created_ms"]),
            float(body["result"]["er_tco2e"]),
        )  # fmt: skip
        detail = StatementDetail(
            summary=summary(s, document),
            document=document.decode("ascii"),
            body=body,
            key_id=str(sig["key_id"]),
        )
        return etag_response(request, detail.model_dump_json().encode(), "application/json", statement_id)

    @app.get(
        "/v1/statements/{statement_id}/document",
        response_class=Response,
        responses={
            **_problems(400, 401, 403, 404),
            200: {"content": {"application/vnd.puhui.statement": {"schema": {"type": "string"}}}},
        },
        tags=["statements"],
    )
    def get_statement_document(
        statement_id: str, request: Request, _: Annotated[str, need("statements:read")]
    ) -> Response:
        """The signed statement bytes, as ``reductions verify`` and ``puhui verify`` take them."""
        return etag_response(request, stored(statement_id), "application/vnd.puhui.statement", statement_id)

    @app.get(
        "/v1/statements/{statement_id}/package",
        response_class=Response,
        responses={
            **_problems(400, 401, 403, 404),
            200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
        },
        tags=["statements"],
    )
    def get_package(
        statement_id: str, request: Request, _: Annotated[str, need("statements:read")]
    ) -> Response:
        """The statement's portable evidence package (docs/evidence-package.md); verify it
        with ``puhui verify PACKAGE --issuer KEY``."""
        stored(statement_id)
        try:
            keylist = None if ctx.signing_key is None else _stable_key_list(ctx)
            data = build_package(ctx.evidence, ctx.statements, statement_id, ctx.params_dir, keylist=keylist)
        except (AggregatorError, MethodologyError, EvidenceError) as exc:
            raise ApiError(409, "package_unavailable", f"statement {statement_id}: {exc}") from exc
        disposition = {"Content-Disposition": f'attachment; filename="{statement_id}.zip"'}
        return etag_response(request, data, "application/zip", hashlib.sha256(data).hexdigest(), disposition)

    # -- charging networks' session intake (aggregator/api/sessions.py) -------------------------

    add_session_routes(app, ctx, need, ApiError, _problems(400, 401, 403, 404, 413, 422, 501))

    # -- platform receipts ---------------------------------------------------------------------

    @app.post(
        "/v1/receipts",
        response_model=ReceiptTaken,
        status_code=201,
        responses={**_problems(400, 401, 403, 409, 413, 422), 200: {"model": ReceiptTaken}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/vnd.puhui.receipt": {"schema": {"type": "string"}}},
            }
        },
        tags=["receipts"],
    )
    async def post_receipt(request: Request, _: Annotated[str, need("receipts:write")]) -> Any:
        """Take a platform's signed receipt (issuance, transfer, retirement) for a statement.
        The platform's key must be pinned in the API's config (``api.platforms``); the same
        receipt twice is taken once (200); a retired statement takes nothing more (409)."""
        body = await request.body()
        if len(body) > MAX_RECEIPT_BYTES:
            raise ApiError(413, "too_large", f"a receipt is at most {MAX_RECEIPT_BYTES} bytes")
        try:
            receipt = verify_receipt(body, ctx.platform_keys)
        except EvidenceError as exc:
            raise ApiError(422, "receipt_not_verified", str(exc)) from exc
        try:
            new = ctx.statements.add_receipt(receipt, received_ms=ctx.now_ms())
        except ReceiptRefused as exc:
            raise ApiError(409, "receipt_refused", str(exc)) from exc
        out = ReceiptTaken(
            receipt=ReceiptOut(platform=receipt.platform, receipt_id=receipt.receipt_id, kind=receipt.kind,
                               tco2e=receipt.tco2e, created_ms=receipt.created_ms),
            statement=receipt.statement,
            statement_status=ctx.statements.status(receipt.statement),  # type: ignore[arg-type]
            new=new,
        )  # fmt: skip
        return JSONResponse(out.model_dump(), status_code=201 if new else 200)

    @app.get(
        "/v1/statements/{statement_id}/receipts",
        response_model=list[ReceiptOut],
        responses=_problems(400, 401, 403, 404),
        tags=["receipts"],
    )
    def statement_receipts(statement_id: str, _: Annotated[str, need("statements:read")]) -> list[ReceiptOut]:
        """The platform receipts a statement has, in the order taken."""
        stored(statement_id)
        return [
            ReceiptOut(platform=p, receipt_id=i, kind=k, tco2e=t, created_ms=c)  # type: ignore[arg-type]
            for p, i, k, t, c in ctx.statements.receipts(statement_id)
        ]

    # -- attested intervals --------------------------------------------------------------------

    def interval_item(ai: AttestedInterval) -> IntervalItem:
        r = ai.record
        return IntervalItem(
            gateway=ai.batch.gateway, seq=ai.batch.seq, index=ai.index, meter=r.meter, quantity=r.quantity,
            unit=r.unit, start=r.start, end=r.end, kind=r.kind, counter_start=r.counter_start,
            counter_end=r.counter_end, delta=r.delta, samples=r.samples, expected=r.expected,
            flags=list(r.flags), quality="implausible" if ai.issues else "plausible", issues=list(ai.issues),
        )  # fmt: skip

    def meters_of_unit(gateway: str, unit: str) -> list[str]:
        rows = ctx.statements.page(StatementFilter(gateway=gateway, unit=unit), limit=1)
        if not rows:
            raise _not_found(f"unit {unit!r} of gateway {gateway!r}: no statement names it; ask by meter")
        body = json.loads((ctx.statements.document(rows[0].id) or b"{}").split(b"\n", 1)[0])
        return [str(m) for u in body["subject"]["units"] if u["id"] == unit for m in u["meters"]]

    @app.get(
        "/v1/intervals",
        response_model=IntervalPage,
        responses={
            **_problems(400, 401, 403, 404),
            200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        },
        tags=["intervals"],
    )
    def list_intervals(
        _: Annotated[str, need("intervals:read")],
        gateway: Annotated[str, Query(min_length=1, max_length=128)],
        meter: Annotated[list[str] | None, Query(max_length=200)] = None,
        unit: Annotated[str | None, Query(max_length=128)] = None,
        start: Annotated[int | None, Query(ge=0, le=MAX_TIME, description="interval start >= (s)")] = None,
        end: Annotated[int | None, Query(ge=0, le=MAX_TIME, description="interval end <= (s)")] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
        format: Annotated[Literal["json", "csv"], Query()] = "json",
    ) -> Any:
        """Attested interval records of a gateway, in arrival order, with flags and the
        aggregator's plausibility verdict; ``format=csv`` for spreadsheets (the next cursor
        is then in the ``X-Next-Cursor`` header)."""
        after = _decode_cursor("intervals", cursor, (int, int))
        meters = list(meter) if meter else None
        if unit is not None:
            meters = sorted(set(meters or []) | set(meters_of_unit(gateway, unit)))
        key: IntervalKey = (-1, -1) if after is None else (after[0], after[1])
        found = list(
            islice(
                ctx.evidence.attested_after(gateway=gateway, meters=meters, start=start, end=end, after=key),
                page_limit(limit),
            )
        )
        nxt = _encode_cursor("intervals", list(found[-1][0])) if len(found) == limit else None
        items = [interval_item(ai) for _, ai in found]
        if format == "csv":
            headers = {} if nxt is None else {"X-Next-Cursor": nxt}
            return Response(_csv(items), media_type="text/csv; charset=utf-8", headers=headers)
        return IntervalPage(items=items, next_cursor=nxt)

    @app.get(
        "/v1/intervals/proof",
        response_model=InclusionProofOut,
        responses=_problems(400, 401, 403, 404),
        tags=["intervals"],
    )
    def interval_proof(
        request: Request,
        _: Annotated[str, need("intervals:read")],
        gateway: Annotated[str, Query(min_length=1, max_length=128)],
        seq: Annotated[int, Query(ge=1, le=2**53)],
        index: Annotated[int, Query(ge=0, le=2**31)],
    ) -> Any:
        """The inclusion proof of one record in its signed batch (RFC 9162 audit path)."""
        data = ctx.evidence.batch_bytes(gateway, seq)
        if data is None:
            raise _not_found(f"no batch {gateway}#{seq}")
        batch = parse_batch(data)
        if index >= len(batch.records):
            raise _not_found(f"batch {gateway}#{seq} holds {len(batch.records)} records, no index {index}")
        leaves = [leaf_hash(r) for r in batch.records]
        proof = inclusion_proof(leaves, index)
        sig_line = data.split(b"\n")[1]
        out = InclusionProofOut(
            gateway=gateway, seq=seq, index=index, record=batch.records[index].decode("utf-8"),
            leaf_hash=leaves[index].hex(), tree_size=proof.size, path=[h.hex() for h in proof.path],
            root=batch.header.root, header=batch.header_bytes.decode("ascii"),
            signature_line=sig_line.decode("ascii"), key_id=batch.header.key_id,
        )  # fmt: skip
        etag = hashlib.sha256(batch.header_bytes + b"#%d" % index).hexdigest()
        return etag_response(request, out.model_dump_json().encode(), "application/json", etag)

    # -- registry ------------------------------------------------------------------------------

    @app.get("/v1/gateways", response_model=list[GatewayOut], responses=AUTH, tags=["registry"])
    def list_gateways(_: Annotated[str, need("registry:read")]) -> list[GatewayOut]:
        """Enrolled gateways with every key they had and their meters."""
        return [
            GatewayOut(
                gateway=g.gateway, site=g.site, region=g.region, enrolled_ms=g.enrolled_ms,
                batches=ctx.evidence.batch_count(g.gateway),
                keys=[
                    GatewayKeyOut(
                        key_id=k.key_id, public_key=base64.b64encode(k.public_key_der).decode("ascii"),
                        valid_from_seq=k.valid_from_seq, source=k.source, revoked_from_ms=k.revoked_from_ms,
                    )
                    for k in g.keys
                ],
                meters=[
                    MeterOut(
                        meter=m.meter, scenario=m.scenario, rated_power_kw=m.rated_power_kw,
                        meter_class=m.meter_class, region=m.region,
                        calibrated_until=_iso(m.calibrated_until),
                    )
                    for m in g.meters
                ],
            )
            for g in ctx.evidence.gateways()
        ]  # fmt: skip

    @app.get(
        "/v1/gateways/{gateway}/enrolment",
        response_class=Response,
        responses={
            **_problems(401, 403, 404),
            200: {"content": {"application/vnd.puhui.enrolment": {"schema": {"type": "string"}}}},
        },
        tags=["registry"],
    )
    def get_enrolment(gateway: str, request: Request, _: Annotated[str, need("registry:read")]) -> Response:
        """The gateway's signed enrolment document, exactly as enrolled."""
        entry = next((g for g in ctx.evidence.gateways() if g.gateway == gateway), None)
        if entry is None or not entry.document:
            raise _not_found(f"no enrolled gateway {gateway!r}")
        doc = entry.document
        return etag_response(request, doc, "application/vnd.puhui.enrolment", hashlib.sha256(doc).hexdigest())

    @app.get(
        "/v1/keys",
        response_class=Response,
        responses={
            **_problems(401, 403, 404),
            200: {"content": {"application/vnd.puhui.keys": {"schema": {"type": "string"}}}},
        },
        tags=["registry"],
    )
    def get_keys(request: Request, _: Annotated[str, need("registry:read")]) -> Response:
        """The aggregator's signed list of its keys and every gateway key with revocations
        (``puhui-keys/1``): check it with the aggregator key you pinned."""
        if ctx.signing_key is None:
            raise _not_found("this API was started without the aggregator's key: no signed key list")
        data = _stable_key_list(ctx)
        return etag_response(request, data, "application/vnd.puhui.keys", hashlib.sha256(data).hexdigest())

    @app.get(
        "/v1/checkpoints",
        response_model=list[CheckpointOut],
        responses=_problems(400, 401, 403),
        tags=["registry"],
    )
    def list_checkpoints(
        _: Annotated[str, need("registry:read")],
        after_size: Annotated[int, Query(ge=-1, le=2**53)] = -1,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[CheckpointOut]:
        """Signed checkpoints of the batch log, smallest first (as ``checkpoint sign`` kept them)."""
        rows = ctx.evidence.checkpoints(after_size=after_size, limit=page_limit(limit))
        return [CheckpointOut(size=n, created_ms=t, url=f"/v1/checkpoints/{n}") for n, t, _ in rows]

    @app.get(
        "/v1/checkpoints/{size}",
        response_class=Response,
        responses={
            **_problems(401, 403, 404),
            200: {"content": {"application/vnd.puhui.checkpoint": {"schema": {"type": "string"}}}},
        },
        tags=["registry"],
    )
    def get_checkpoint(
        size: Annotated[int, Path_(ge=0, le=2**53)],
        request: Request,
        _: Annotated[str, need("registry:read")],
    ) -> Response:
        """One signed checkpoint document."""
        rows = ctx.evidence.checkpoints(after_size=size - 1, limit=1)
        if not rows or rows[0][0] != size:
            raise _not_found(f"no checkpoint of size {size}")
        doc = rows[0][2]
        return etag_response(
            request, doc, "application/vnd.puhui.checkpoint", hashlib.sha256(doc).hexdigest()
        )

    return app


_CSV_COLUMNS = list(IntervalItem.model_fields)


def _csv(items: list[IntervalItem]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(_CSV_COLUMNS)
    for it in items:
        row = it.model_dump()
        w.writerow(
            [
                " ".join(row[c]) if isinstance(row[c], list) else ("" if row[c] is None else row[c])
                for c in _CSV_COLUMNS
            ]
        )
    return buf.getvalue()


def _cell(value: object) -> object:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else value


def _stable_key_list(ctx: ApiContext) -> bytes:
    """The signed key list, dated by the latest event it reflects (not by the request), so the
    same key history always gives the same bytes (ECDSA here is RFC 6979: deterministic)."""
    assert ctx.signing_key is not None
    events = [0]
    for k in ctx.evidence.aggregator_keys():
        events += [t for t in (k.valid_from_ms, k.retired_ms, k.revoked_from_ms) if t is not None]
    for g in ctx.evidence.gateways():
        events.append(g.enrolled_ms)
        for gk in g.keys:
            events += [t for t in (gk.added_ms, gk.revoked_from_ms) if t is not None]
    return key_list(ctx.evidence, ctx.signing_key, max(events)).to_bytes()


def _iso(day: date | None) -> str | None:
    return None if day is None else day.isoformat()
