"""The pusher: every stored statement POSTed to each push target once, oldest first.

One task per target takes the statements it is owed (:mod:`aggregator.push.outbox`) in
creation order and settles each before the next: it checks the stored bytes (canonical, the
row's id, signed by a key of the aggregator's history that could sign then), POSTs them (or
the statement's evidence package) with ``Idempotency-Key: <statement id>``, and records the
outcome after the answer:

- 2xx: delivered;
- 400, 410, 413, 415, 422 and other 4xx about the request: refused, logged at ERROR, not
  retried (``push retry`` requeues);
- 5xx, 408, 409 (a request with this key is still in progress), 425, 429, timeouts and
  connection or TLS failures: retried with the house's jittered backoff (``Retry-After``
  honoured up to ``retry_max_s``);
- 3xx, 401, 403, 404, 405, 407, 421: the target's URL or credentials are wrong, not the
  statement: retried like a 5xx and logged at ERROR (the token file is read again).

A statement that does not check is held (never sent) and logged at ERROR. Waits run on the
injected clock; HTTP timeouts are wall time. The protocol for receivers: docs/platform-api.md.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from aggregator.config import AggregatorConfig, PushTarget
from aggregator.errors import AggregatorError
from aggregator.keys import key_list, register_current
from aggregator.methodology.errors import MethodologyError, StatementFormatError
from aggregator.methodology.params import PARAMS_DIR
from aggregator.methodology.statements import parse_statement
from aggregator.package import build_package
from aggregator.push.errors import PushSetupError
from aggregator.push.outbox import PushOutbox, TargetStatus
from aggregator.store import open_evidence_store
from aggregator.store.sqldb import open_programme_db

if TYPE_CHECKING:
    from aggregator.store import AnyEvidenceStore
from common.backoff import Backoff
from common.clock import Clock, SystemClock
from common.tls import SecretError, TlsSettings, client_context, read_secret
from evidence.errors import EvidenceError
from evidence.keylist import AggregatorKey
from evidence.keys import GatewayKey, PublicKey, load_private_key, load_public_key, verify_signature

log = logging.getLogger(__name__)
T = TypeVar("T")

STATEMENT_TYPE = "application/vnd.puhui.statement"
PACKAGE_TYPE = "application/zip"
RETRY_STATUS = frozenset({408, 409, 425, 429})  # about this moment, not this statement
TARGET_STATUS = frozenset({401, 403, 404, 405, 407, 421})  # about the target's URL or credentials
BATCH = 64  # owed statements read at a time


def classify(status: int) -> str:
    """``delivered``, ``refused`` (for good) or ``retry`` for an HTTP status."""
    if 200 <= status < 300:
        return "delivered"
    if 400 <= status < 500 and status not in RETRY_STATUS and status not in TARGET_STATUS:
        return "refused"
    return "retry"


@dataclass
class PushStats:
    """One target's counts since start."""

    posts: int = 0
    delivered: int = 0
    retries: int = 0
    refused: int = 0
    held: int = 0


@dataclass(frozen=True, slots=True)
class _Failure:
    error: str
    http_status: int | None = None
    retry_after_s: float | None = None


@dataclass
class _Target:
    settings: PushTarget
    client: httpx.AsyncClient
    backoff: Backoff
    token: str | None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    stats: PushStats = field(default_factory=PushStats)

    @property
    def name(self) -> str:
        return self.settings.name


class Pusher:
    """The push outbox's sender for every target of ``config.push``, as an async context
    manager (opens the stores, keys and HTTP clients); :meth:`run` pushes until cancelled."""

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        evidence: AnyEvidenceStore | None = None,
    ) -> None:
        """``evidence``: the process's open evidence store (the aggregator's own), if any. Pass
        it: opening a second one in a process whose SQLite connections are open drops their
        POSIX locks (its mode check opens and closes the file), which can corrupt the WAL."""
        self.config = config
        self._given_evidence = evidence
        self.clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._stack = AsyncExitStack()
        self._targets: list[_Target] = []
        self._keys: dict[str, AggregatorKey] = {}
        self._public: dict[str, PublicKey] = {}
        self._signing_key: GatewayKey | None = None
        self._changed = asyncio.Event()
        self._outbox: PushOutbox
        self._evidence: AnyEvidenceStore
        self._thread: ThreadPoolExecutor

    async def __aenter__(self) -> Self:
        try:
            self._open()
            for settings in self.config.push:
                self._targets.append(await self._target(settings))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def _open(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="puhui-push")
        self._stack.callback(self._thread.shutdown, wait=True)
        path = self.config.store.path
        if self._given_evidence is not None:
            self._evidence = self._given_evidence
        else:  # first: see __init__
            self._evidence = open_evidence_store(self.config.store)
            self._stack.callback(self._evidence.close)
        db = open_programme_db(self.config.store)  # PostgreSQL's when the evidence is there
        self._stack.callback(db.close)
        self._outbox = PushOutbox(db)
        self._stack.callback(self._outbox.close)
        key_file = self.config.key_file
        if key_file.exists():  # it signs the packages' key list, and is in the history from now
            try:
                self._signing_key = load_private_key(key_file)
            except (EvidenceError, OSError) as exc:
                raise PushSetupError(f"key_file: {key_file}: {exc}") from exc
            register_current(self._evidence, self._signing_key, round(self.clock.now() * 1000))
        self._load_keys()
        if not self._keys:
            raise PushSetupError(
                f"no aggregator key to check statements with: key_file {key_file} does not exist "
                f"and {path} holds no key history"
            )

    def _load_keys(self) -> None:
        self._keys = {k.key_id: k for k in self._evidence.aggregator_keys()}

    async def _target(self, settings: PushTarget) -> _Target:
        what = f"push[{settings.name}]"
        try:
            token = None if settings.token is None else read_secret(settings.token, f"{what}.token")
            tls = None
            if settings.url.startswith("https://"):
                tls = client_context(settings.tls or TlsSettings(), f"{what}.tls")
        except SecretError as exc:
            raise PushSetupError(str(exc)) from exc
        client = httpx.AsyncClient(
            verify=tls if tls is not None else True, timeout=settings.timeout_s, follow_redirects=False,
            headers={"User-Agent": "puhui-push/1"},
        )  # fmt: skip
        await self._stack.enter_async_context(client)
        backoff = Backoff(settings.retry_initial_s, settings.retry_max_s, rng=self._rng)
        return _Target(settings, client, backoff, token)

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Push to every target until cancelled (returns at once when there is none)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for t in self._targets:
                    tasks.create_task(self._serve(t), name=f"push-{t.name}")
        except ExceptionGroup as group:  # a broken store ends every target: say why, once
            raise group.exceptions[0] from group

    def notify(self) -> None:
        """New statements are stored: look now rather than at the next poll."""
        for t in self._targets:
            t.wakeup.set()

    def stats(self, target: str) -> PushStats:
        return next(t.stats for t in self._targets if t.name == target)

    async def status(self) -> list[TargetStatus]:
        """Per target (config order): delivered, owed, retrying, refused, held."""
        return [await self._db(self._outbox.status, t.name) for t in self._targets]

    async def wait_for(self, predicate: Callable[[Pusher], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every outcome). Bound it with
        ``asyncio.timeout``."""
        while not predicate(self):
            await self._changed.wait()

    def _progress(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    def _now_ms(self) -> int:
        return round(self.clock.now() * 1000)

    async def _serve(self, t: _Target) -> None:
        while True:
            t.wakeup.clear()
            owed = await self._db(self._outbox.owed, t.name, BATCH)
            for statement in owed:
                await self._settle(t, statement)
            if not owed:
                await _first(self.clock.sleep(t.settings.poll_s), t.wakeup.wait())

    async def _settle(self, t: _Target, statement: str) -> None:
        """Try ``statement`` until it is delivered, refused or held."""
        failures = 0
        while (failure := await self._attempt(t, statement)) is not None:
            delay = t.backoff.delay(failures)
            if failure.retry_after_s is not None:
                delay = max(delay, min(failure.retry_after_s, t.settings.retry_max_s))
            failures += 1
            now = self._now_ms()
            await self._db(
                self._outbox.failed, t.name, statement, at_ms=now, next_ms=now + round(delay * 1000),
                error=failure.error, http_status=failure.http_status,
            )  # fmt: skip
            t.stats.retries += 1
            self._progress()
            level = logging.ERROR if failure.http_status in TARGET_STATUS else logging.WARNING
            log.log(
                level, "push %s: statement %s: %s; again in %.1f s", t.name, statement, failure.error, delay
            )
            await self.clock.sleep(delay)

    async def _attempt(self, t: _Target, statement: str) -> _Failure | None:
        """One try: None once settled, else why it must be tried again."""
        body = await self._db(self._body, t.settings, statement)
        if isinstance(body, str):
            await self._db(self._outbox.held, t.name, statement, at_ms=self._now_ms(), error=body)
            t.stats.held += 1
            log.error("push %s: statement %s held, not sent: %s", t.name, statement, body)
            self._progress()
            return None
        failure = await self._post(t, statement, body)
        self._progress()
        return failure

    async def _post(self, t: _Target, statement: str, body: bytes) -> _Failure | None:
        headers = {
            "Content-Type": PACKAGE_TYPE if t.settings.what == "package" else STATEMENT_TYPE,
            "Idempotency-Key": statement,
            "Puhui-Statement": statement,
        }
        if t.token is not None:
            headers["Authorization"] = f"Bearer {t.token}"
        t.stats.posts += 1
        try:
            r = await t.client.post(t.settings.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            return _Failure(f"POST {t.settings.url}: {type(exc).__name__}: {exc}")
        verdict = classify(r.status_code)
        if verdict == "delivered":
            await self._db(
                self._outbox.delivered, t.name, statement, at_ms=self._now_ms(), http_status=r.status_code
            )
            t.stats.delivered += 1
            return None
        answer = f"HTTP {r.status_code}: {r.text[:300].strip()}"
        if verdict == "refused":
            await self._db(
                self._outbox.refused, t.name, statement, at_ms=self._now_ms(), http_status=r.status_code,
                error=answer,
            )  # fmt: skip
            t.stats.refused += 1
            log.error("push %s: statement %s refused, not retried: %s", t.name, statement, answer)
            return None
        if r.status_code in (401, 403):
            self._reread_token(t)
        return _Failure(answer, r.status_code, _retry_after(r))

    def _reread_token(self, t: _Target) -> None:
        """The operator may have put a new token in the file: read it for the next try."""
        if t.settings.token is None:
            return
        try:
            t.token = read_secret(t.settings.token, f"push[{t.name}].token")
        except SecretError as exc:
            log.error("push %s: %s", t.name, exc)

    # -- what is sent (on the pusher's thread) ------------------------------------------------

    def _body(self, settings: PushTarget, statement: str) -> bytes | str:
        """The bytes to POST, or why the statement is held."""
        document = self._outbox.document(statement)
        if document is None:
            return "the statement is no longer in the store"
        problem = self._check(statement, document)
        if problem is not None:
            return problem
        if settings.what == "statement":
            return document
        params = self.config.api.params_dir if self.config.api is not None else None
        try:
            return build_package(
                self._evidence, self._outbox.statements, statement, params or PARAMS_DIR,
                keylist=self._key_list(),
            )  # fmt: skip
        except (AggregatorError, MethodologyError, EvidenceError) as exc:
            return f"the evidence package cannot be built: {exc}"

    def _check(self, statement: str, document: bytes) -> str | None:
        """Why the stored bytes must not go out as this statement, or None: they are what
        this aggregator signed (another key, or a changed row, would be refused downstream,
        but under this statement's idempotency key)."""
        try:
            st = parse_statement(document)
        except StatementFormatError as exc:
            return f"the stored document is not a statement: {exc}"
        if st.id != statement:
            return f"the stored document's body hashes to {st.id}, not to the row's id"
        key = self._keys.get(st.key_id)
        if key is None:
            self._load_keys()  # rotated since start?
            key = self._keys.get(st.key_id)
        if key is None:
            return f"signed with key {st.key_id}, which is not in the aggregator's key history"
        created = st.body.get("created_ms")
        if not isinstance(created, int) or not key.signs_at(created):
            return f"key {st.key_id} did not sign at created_ms {created} (not yet valid, retired or revoked)"
        try:
            public = self._public.get(key.key_id) or load_public_key(base64.b64decode(key.public_key))
            self._public[key.key_id] = public
            verify_signature(public, st.signature, st.body_bytes)
        except EvidenceError as exc:
            return f"the signature does not verify with key {st.key_id}: {exc}"
        return None

    def _key_list(self) -> bytes | None:
        """The signed key list dated by the latest key event (as the API's packages are), so a
        package's bytes depend on the store's content only."""
        if self._signing_key is None:
            return None
        events = [0]
        for k in self._evidence.aggregator_keys():
            events += [t for t in (k.valid_from_ms, k.retired_ms, k.revoked_from_ms) if t is not None]
        for g in self._evidence.gateways():
            events.append(g.enrolled_ms)
            for gk in g.keys:
                events += [t for t in (gk.added_ms, gk.revoked_from_ms) if t is not None]
        return key_list(self._evidence, self._signing_key, max(events)).to_bytes()


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None  # an HTTP date is not worth the parsing


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
