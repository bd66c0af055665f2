"""The session intake of the platform API: a charging network POSTs a session file and its
signed manifest (docs/ev-sessions.md, *HTTP intake*).

``POST /v1/networks/{network}/sessions`` with a bearer token of scope ``sessions:write``
whose name is the network's (``puhui aggregator tokens create --name NETWORK --scope
sessions:write``): a network posts for itself only. The body is JSON::

    {"manifest": "<the two-line manifest, as text>", "file_base64": "<the file's exact bytes>"}

The answer is the import's report: counts accepted / duplicate / refused and a reason per
refused record; a manifest that does not verify with the network's pinned key is 422 and
nothing is kept.
"""

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Request
from fastapi import Path as Path_
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from aggregator.api.tokens import TokenStore
from aggregator.sessions.errors import ManifestRefused, SessionError, SessionFileError, UnknownNetwork
from aggregator.sessions.intake import POSTGRES_UNSUPPORTED, import_sessions
from aggregator.store.sqlite import SQLiteEvidenceStore


class IntakeContext(Protocol):
    """What the intake uses of the API's context (:class:`aggregator.api.app.ApiContext`)."""

    @property
    def evidence(self) -> object: ...  # the evidence store: SQLite keeps sessions, PostgreSQL not
    @property
    def tokens(self) -> TokenStore: ...
    @property
    def now_ms(self) -> Callable[[], int]: ...


MAX_SESSION_BYTES = 64 * 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionRefusal(_Model):
    session_id: str = Field(description="the record's session id, or #N (its place) if it has none")
    field: str = Field(description="the field that is wrong")
    reason: str


class SessionImportAnswer(_Model):
    network: str
    source_sha256: str = Field(description="sha256 of the file's exact bytes, kept as evidence")
    import_id: int | None
    records: int
    accepted: int
    duplicate: int = Field(description="already held with the same content (idempotent)")
    refused: int
    refusals: list[SessionRefusal]


def add_session_routes(
    app: FastAPI,
    ctx: IntakeContext,
    need: Callable[..., Any],
    error: Callable[[int, str, str], Exception],
    problems: dict[int | str, dict[str, Any]],
) -> None:
    """Register the intake route on ``app`` (``need``: the API's scope check; ``error``: its
    problem exception)."""

    @app.post(
        "/v1/networks/{network}/sessions",
        response_model=SessionImportAnswer,
        responses=problems,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["manifest", "file_base64"],
                            "properties": {"manifest": {"type": "string"}, "file_base64": {"type": "string"}},
                        }
                    }
                },
            }
        },
        tags=["sessions"],
    )
    async def post_sessions(
        network: Annotated[str, Path_(max_length=128)],
        request: Request,
        token_id: Annotated[str, need("sessions:write")],
    ) -> Any:
        """Import a network's session records (file + signed manifest); idempotent by session id."""
        info = ctx.tokens.get(token_id)
        if info is None or info.name != network:
            who = "?" if info is None else info.name
            raise error(403, "wrong_network", f"token {token_id} is for network {who!r}, not {network!r}")
        if not isinstance(ctx.evidence, SQLiteEvidenceStore):
            raise error(501, "sessions_unsupported", POSTGRES_UNSUPPORTED)
        body = await request.body()
        if len(body) > MAX_SESSION_BYTES * 4 // 3 + 8192:
            raise error(413, "too_large", f"a session file is at most {MAX_SESSION_BYTES} bytes")
        data, manifest = _envelope(body, error)
        try:
            report = await run_in_threadpool(
                import_sessions, ctx.evidence, network, data, manifest, now_ms=ctx.now_ms(), via="http",
                name=f"POST /v1/networks/{network}/sessions",
            )  # fmt: skip
        except UnknownNetwork as exc:
            raise error(404, "unknown_network", str(exc)) from exc
        except ManifestRefused as exc:
            raise error(422, "manifest_refused", str(exc)) from exc
        except SessionFileError as exc:
            raise error(400, "not_a_session_file", str(exc)) from exc
        except SessionError as exc:
            raise error(409, "session_import_refused", str(exc)) from exc
        return SessionImportAnswer.model_validate(report.to_json())


def _envelope(body: bytes, error: Callable[[int, str, str], Exception]) -> tuple[bytes, bytes]:
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict) or set(doc) != {"manifest", "file_base64"}:
            raise ValueError("the body has exactly the keys manifest and file_base64")
        manifest = str(doc["manifest"]).encode("ascii")
        data = base64.b64decode(str(doc["file_base64"]), validate=True)
    except (ValueError, UnicodeEncodeError, binascii.Error, RecursionError) as exc:
        raise error(400, "bad_body", f"not a session upload: {exc}") from exc
    if len(data) > MAX_SESSION_BYTES:
        raise error(413, "too_large", f"a session file is at most {MAX_SESSION_BYTES} bytes")
    return data, manifest
