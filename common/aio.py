"""Asyncio helpers shared by every component.

:func:`publish` works around a Python 3.11 defect: ``asyncio.wait_for`` (which aiomqtt uses
to wait for a QoS 1 acknowledgement) returns the result and *swallows* a cancellation that
arrives in the same loop iteration as the acknowledgement (CPython gh-86296, fixed in 3.12
by reimplementing ``wait_for`` on ``asyncio.timeout``). The cancelled task then runs on as if
nothing happened, and a TaskGroup waiting for it to finish hangs: seen in our tests as a
simulator publisher stuck in ``sleep_until`` on a manual clock, in state "cancelling". After
every publish we honour a pending cancellation request ourselves.
"""

from __future__ import annotations

import asyncio

import aiomqtt


def raise_if_cancel_requested() -> None:
    """Raise ``CancelledError`` if this task has a cancellation request not yet delivered."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def publish(client: aiomqtt.Client, topic: str, payload: bytes, *, qos: int) -> None:
    """``client.publish`` that never swallows a cancellation (see module docstring)."""
    await client.publish(topic, payload, qos=qos)
    raise_if_cancel_requested()
