"""A fleet of simulated OCPP chargers on one clock, against one CSMS (or tap) URL.

::

    async with OcppFleet(specs, clock, "ws://127.0.0.1:9000", until=end) as fleet:
        await fleet.wait_sent_through(end)          # every reading up to ``end`` answered
        fleet.true_wh("CP-001", 1, t0, t1)          # ground truth between two reading times
        fleet.meter_keys()                          # {"CP-001": "3059...", ...} to pin

Leaving the ``async with`` stops every charger (their connections close).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from types import TracebackType

from common.clock import Clock
from firmware_sim.meter import MWS_PER_WH
from firmware_sim.ocpp_charger import OcppChargerSpec, SimCharger


class OcppFleet:
    """Simulated OCPP chargers (async context manager owning one task per charger)."""

    def __init__(
        self,
        specs: Iterable[OcppChargerSpec],
        clock: Clock,
        url: str,
        *,
        until: float | None = None,
        step_s: int = 60,
        start: float | None = None,
    ) -> None:
        self.clock, self.until = clock, until
        self.chargers = {s.name: SimCharger(s, clock, url, step_s=step_s, start=start) for s in specs}
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> OcppFleet:
        for c in self.chargers.values():
            self._tasks.append(asyncio.create_task(c.run(self.until), name=f"sim-ocpp-{c.spec.name}"))
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def wait_sent_through(self, t: float) -> None:
        """Every charger has produced up to ``t`` and had all of it answered (bound it by a timeout).

        A charger task that failed raises its error here instead of letting the wait hang.
        """
        waits = [asyncio.ensure_future(c.wait_sent_through(t)) for c in self.chargers.values()]
        try:
            pending = set(waits) | set(self._tasks)
            while not all(w.done() for w in waits):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done & set(self._tasks):
                    task.result()  # a charger never ends on its own: this raises what ended it
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def meter_keys(self) -> dict[str, str]:
        """Charger -> its meter's public key (DER, hex), for the chargers that sign."""
        return {n: c.signer.public_key_hex() for n, c in self.chargers.items() if c.signer is not None}

    def true_wh(self, charger: str, connector: int, t0: float, t1: float) -> float:
        """Energy that really flowed through ``connector`` between two reading times."""
        log = self.chargers[charger].meters[connector].step_log()
        assert log is not None  # the chargers log every step
        return (log.at(t1)[0] - log.at(t0)[0]) / MWS_PER_WH
