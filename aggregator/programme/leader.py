"""One statement schedule (and push outbox) among several aggregators over one PostgreSQL.

Every aggregator with a ``programme`` or ``push`` section runs :func:`run_as_leader`: it
tries to take a PostgreSQL session advisory lock (:class:`aggregator.store.postgres.Leadership`)
every ``poll_s``; the one that holds it runs the scheduler and the pusher, the others wait.
The server releases the lock when the holder's session ends (SIGKILL, a broken connection),
so another aggregator takes the lock within ``poll_s``; a holder that finds its session gone
stops its scheduler and pusher (at most ``poll_s`` late). A live holder does not know at once
that its session ended (a broken connection, an operator's ``pg_terminate_backend``), so a new
holder waits ``3 * poll_s`` before it starts (still holding the lock): by then the old one has
stopped. One signer at a time: no statement is signed twice by two aggregators racing. Left: a
look (``tick``) already under way in a thread when the old holder stops runs to its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from common.clock import Clock

log = logging.getLogger(__name__)
RunDb = Callable[..., Awaitable[Any]]


class Lock(Protocol):
    def try_take(self) -> bool: ...
    def still_held(self) -> bool: ...
    def release(self) -> None: ...


class LostLeadership(Exception):
    """The lock's session ended under a running scheduler (it stops; another takes over)."""


async def run_as_leader(
    lock: Lock,
    jobs: Sequence[Callable[[], Coroutine[Any, Any, None]]],
    *,
    clock: Clock,
    run_db: RunDb,
    poll_s: float = 2.0,
    on_change: Callable[[bool], None] = lambda leading: None,
) -> None:
    """Run ``jobs`` while holding ``lock``; forever (cancel to stop; the lock is released)."""

    async def watch() -> None:
        while True:
            await clock.sleep(poll_s)
            if not await run_db(lock.still_held):
                raise LostLeadership("the leadership lock's database session ended")

    async def settled() -> bool:
        """Hold the lock ``3 * poll_s`` before starting: a predecessor whose session just ended
        notices meanwhile and stops. False: this session ended too."""
        for _ in range(3):
            await clock.sleep(poll_s)
            if not await run_db(lock.still_held):
                return False
        return True

    try:
        while True:
            if await run_db(lock.try_take):
                log.warning("leadership: taken; schedule and pusher start in %.1f s", 3 * poll_s)
                try:
                    if await settled():
                        on_change(True)
                        async with asyncio.TaskGroup() as group:
                            for job in jobs:
                                group.create_task(job())
                            group.create_task(watch())
                except* LostLeadership as lost:
                    log.error("leadership lost (%s): schedule and pusher stopped", lost.exceptions[0])
                finally:
                    on_change(False)
                    await run_db(lock.release)
            await clock.sleep(poll_s)
    finally:
        lock.release()
