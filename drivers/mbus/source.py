"""An M-Bus heat meter as a :class:`~drivers.contract.PollSource` on a shared line.

One poll is SND_NKE (or the secondary-address selection) and REQ_UD2: the one RSP_UD
carries every quantity. The policy of :class:`~drivers.mbus.config.MbusPolicy`: the
line's timeout per frame, retries with jittered backoff on the injected clock, and a
circuit breaker so that a dead meter costs the line one timeout per cool-down, not one per
poll. A poll never raises for a failing meter: the :class:`~drivers.contract.PollResult`
carries the error, naming meter, address and line, and no sample.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from common.backoff import Backoff
from common.clock import Clock
from drivers.breaker import BreakerState, CircuitBreaker
from drivers.contract import PollResult, Sample
from drivers.errors import DriverError
from drivers.line.contract import Line, LineError
from drivers.mbus.client import Target, read_heat
from drivers.mbus.config import MbusMeterSettings, MbusPolicy

if TYPE_CHECKING:
    from drivers.mbus.heat import HeatData  # the M-Bus library: imported when a meter is read

SAMPLE_SOURCE = "mbus"


class MbusSource:
    """One M-Bus heat meter's quantities as samples (async context manager)."""

    def __init__(
        self,
        meter: str,
        line: Line,
        clock: Clock,
        target: Target,
        quantities: Sequence[str],
        *,
        policy: MbusPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.meter = meter
        self.target = target
        self.quantities = tuple(quantities)
        self.policy = policy or MbusPolicy()
        self.breaker = CircuitBreaker(
            clock, threshold=self.policy.breaker_threshold, cooldown_s=self.policy.breaker_cooldown_s
        )
        self.last: HeatData | None = None  # the last telegram decoded (status page, probe)
        self._line = line
        self._clock = clock
        self._backoff = Backoff(
            self.policy.backoff_base_s, self.policy.backoff_max_s, rng=rng or random.Random()
        )
        self._sent = 0

    @classmethod
    def from_settings(
        cls,
        meter: str,
        settings: MbusMeterSettings,
        line: Line,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> MbusSource:
        target = settings.connection.target
        return cls(meter, line, clock, target, settings.quantities, policy=settings.policy, rng=rng)

    async def __aenter__(self) -> MbusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None  # the line belongs to its owner, not to one meter on it

    async def poll(self, groups: Collection[str] | None = None, *, slot: float | None = None) -> PollResult:
        """Read the meter (``groups`` is ignored: one telegram carries every quantity)."""
        started, t0 = self._clock.now(), asyncio.get_running_loop().time()
        if not self.breaker.allows():
            return self._result(started, t0, (), "circuit breaker open", skipped=True)
        self._sent = 0
        try:
            data = await self._read_with_retries()
        except DriverError as exc:
            self.breaker.record_failure()
            # the line's errors name meter and line already; the meter's own say neither
            where = "mbus" if isinstance(exc, LineError) else self.target.label(self._line)
            return self._result(started, t0, (), f"{self.meter} ({where}): {exc}")
        self.breaker.record_success()
        self.last = data
        return self._result(started, t0, self._samples(data, self._clock.now(), slot), None)

    async def _read_with_retries(self) -> HeatData:
        probing = self.breaker.state is BreakerState.HALF_OPEN
        attempts = 1 if probing else 1 + self.policy.retries
        for attempt in range(attempts):
            self._sent += 1
            try:
                return await read_heat(self._line, self.target, timeout_s=self.policy.timeout_s)
            except DriverError as exc:
                error = exc
            if attempt + 1 < attempts:
                await self._clock.sleep(self._backoff.delay(attempt))
        raise error

    def _samples(self, data: HeatData, now: float, slot: float | None) -> tuple[Sample, ...]:
        out = []
        for q in self.quantities:
            value = float(data.status.byte) if q == "status" else data.values[q]
            out.append(Sample(self.meter, q, value, now, SAMPLE_SOURCE, slot))
        return tuple(out)

    def _result(
        self, started: float, t0: float, samples: tuple[Sample, ...], error: str | None, skipped: bool = False
    ) -> PollResult:
        latency = asyncio.get_running_loop().time() - t0
        return PollResult(
            self.meter, error is None, samples, started, latency, 0 if skipped else self._sent,
            self.breaker.state, error, skipped,
        )  # fmt: skip
