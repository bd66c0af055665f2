"""Three aggregators' statement schedulers, one PostgreSQL (their programme state in it too):
only the holder of the leadership lock (a session advisory lock) signs; when its database
session ends (as when its process is killed) another takes over; every unit and period is
stated once."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from aggregator.programme.leader import run_as_leader
from aggregator.store.postgres import Leadership, PostgresEvidenceStore

from .support import MONTH, MONTH_END
from .test_schedule import Setup

pytestmark = pytest.mark.integration


class TickingClock:
    """The schedule's time stands after the month settled; its sleeps are short real ones."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, 0.05))


async def _run_blocking(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def test_one_scheduler_signs_at_a_time_and_another_takes_over(
    street: Setup, postgres_db: dict[str, Any]
) -> None:
    await asyncio.to_thread(street.deliver, MONTH, MONTH_END + 3 * 86400)
    clock = TickingClock(MONTH_END + 48 * 3600)
    gens = [street.scheduler() for _ in range(3)]
    scheds = [next(g) for g in gens]
    stores = [PostgresEvidenceStore(postgres_db) for _ in scheds]
    locks = [Leadership(s) for s in stores]
    leading: set[int] = set()
    took: list[int] = []

    def on_change(i: int) -> Any:
        def change(now_leading: bool) -> None:
            if now_leading:
                assert not leading, f"scheduler {i} leads while {leading} do"
                leading.add(i)
                took.append(i)
            else:
                leading.discard(i)

        return change

    for s in scheds:
        s.clock = clock  # type: ignore[assignment]

    def contender(i: int) -> asyncio.Task[None]:
        job = scheds[i].run
        leader = run_as_leader(
            locks[i],
            [lambda: job(0.05)],
            clock=clock,
            run_db=_run_blocking,
            poll_s=0.1,
            on_change=on_change(i),
        )
        return asyncio.create_task(leader)

    tasks = [contender(i) for i in range(len(scheds))]
    try:
        async with asyncio.timeout(30):
            while len(took) < 3:
                await asyncio.sleep(0.3)
                [leader] = leading or {None}  # type: ignore[misc]
                if leader is None:
                    continue
                pid = locks[leader].backend_pid()
                with psycopg.connect(**postgres_db, autocommit=True) as conn:  # as if its process died
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                async with asyncio.timeout(10):
                    while leader in leading:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
        for g in gens:
            g.close()
        for s in stores:
            s.close()
    assert [e for e in ended if not isinstance(e, asyncio.CancelledError)] == []  # never two leaders
    assert len(set(took)) >= 2  # the leadership moved
    rows = street.sql(
        "SELECT unit, period_start, period_end, count(*) FROM programme_statements"
        " GROUP BY unit, period_start, period_end"
    )
    assert len(rows) == 4 and all(n == 1 for *_, n in rows), rows  # one statement per unit and stretch


@pytest.fixture
def street(tmp_path: Any, postgres_db: dict[str, Any]) -> Setup:
    return Setup(tmp_path, postgres_db)
