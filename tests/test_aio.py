"""common.aio: a cancellation swallowed by asyncio.wait_for (Python 3.11) is honoured."""

from __future__ import annotations

import asyncio
import sys

import pytest

from common.aio import raise_if_cancel_requested


async def test_cancellation_swallowed_by_wait_for_is_raised_afterwards() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    returned: list[int] = []

    async def victim() -> None:
        returned.append(await asyncio.wait_for(fut, 5))  # like aiomqtt's QoS 1 wait
        raise_if_cancel_requested()
        await asyncio.sleep(3600)  # without the check, a swallowed cancel parks the task here

    task = asyncio.create_task(victim())
    await asyncio.sleep(0)
    fut.set_result(1)  # the acknowledgement and the cancellation arrive in one iteration
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    if sys.version_info < (3, 12):
        assert returned == [1]  # wait_for did swallow it: the check above is what saved us


async def test_no_cancellation_requested_is_a_no_op() -> None:
    raise_if_cancel_requested()
