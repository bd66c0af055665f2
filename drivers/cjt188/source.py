"""A CJ/T 188 heat meter as a :class:`~drivers.contract.PollSource` on a shared line.

One poll is one "read data 90 1F" request (the whole block carries every quantity),
with the policy of :class:`~drivers.cjt188.config.Cjt188Policy`: the line's timeout per
attempt, retries with jittered backoff on the injected clock (not after an abnormal
answer: the meter did answer), and a circuit breaker so that a dead meter costs the line
one timeout per cool-down, not one per poll. A poll never raises for a failing meter: the
:class:`~drivers.contract.PollResult` carries the error, naming meter, address and line,
and no sample (never an invented value).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence

from common.backoff import Backoff
from common.clock import Clock
from drivers.breaker import BreakerState, CircuitBreaker
from drivers.cjt188.client import Target, read_heat
from drivers.cjt188.config import Cjt188MeterSettings, Cjt188Policy
from drivers.cjt188.errors import AbnormalAnswer
from drivers.cjt188.heat import HeatData
from drivers.contract import PollResult, Sample
from drivers.errors import DriverError
from drivers.line.contract import Line, LineError

SAMPLE_SOURCE = "cjt188"


class Cjt188Source:
    """One CJ/T 188 heat meter's quantities as samples (async context manager)."""

    def __init__(
        self,
        meter: str,
        line: Line,
        clock: Clock,
        target: Target,
        quantities: Sequence[str],
        *,
        policy: Cjt188Policy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.meter = meter
        self.target = target
        self.quantities = tuple(quantities)
        self.policy = policy or Cjt188Policy()
        self.breaker = CircuitBreaker(
            clock, threshold=self.policy.breaker_threshold, cooldown_s=self.policy.breaker_cooldown_s
        )
        self._line = line
        self._clock = clock
        self._backoff = Backoff(
            self.policy.backoff_base_s, self.policy.backoff_max_s, rng=rng or random.Random()
        )
        self._ser = 0
        self._sent = 0

    @classmethod
    def from_settings(
        cls,
        meter: str,
        settings: Cjt188MeterSettings,
        line: Line,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> Cjt188Source:
        c = settings.connection
        target = Target(c.wire_address, c.type_code, c.identifier_order, c.preamble, c.check_ser)
        return cls(meter, line, clock, target, settings.quantities, policy=settings.policy, rng=rng)

    async def __aenter__(self) -> Cjt188Source:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None  # the line belongs to its owner, not to one meter on it

    async def poll(self, groups: Collection[str] | None = None, *, slot: float | None = None) -> PollResult:
        """Read the meter (``groups`` is ignored: one request reads every quantity)."""
        started, t0 = self._clock.now(), asyncio.get_running_loop().time()
        if not self.breaker.allows():
            return self._result(started, t0, (), "circuit breaker open", skipped=True)
        self._sent = 0
        try:
            data = await self._read_with_retries()
        except DriverError as exc:
            self.breaker.record_failure()
            # the line's errors name meter and line already; the meter's own say neither
            where = "cjt188" if isinstance(exc, LineError) else self.target.label(self._line)
            return self._result(started, t0, (), f"{self.meter} ({where}): {exc}")
        self.breaker.record_success()
        return self._result(started, t0, self._samples(data, self._clock.now(), slot), None)

    async def _read_with_retries(self) -> HeatData:
        probing = self.breaker.state is BreakerState.HALF_OPEN
        attempts = 1 if probing else 1 + self.policy.retries
        for attempt in range(attempts):
            self._sent += 1
            self._ser = (self._ser + 1) & 0xFF
            try:
                return await read_heat(
                    self._line, self.target, ser=self._ser, timeout_s=self.policy.timeout_s
                )
            except AbnormalAnswer:
                raise
            except DriverError as exc:
                error = exc
            if attempt + 1 < attempts:
                await self._clock.sleep(self._backoff.delay(attempt))
        raise error

    def _samples(self, data: HeatData, now: float, slot: float | None) -> tuple[Sample, ...]:
        out = []
        for q in self.quantities:
            value = float(data.status.word) if q == "status" else data.values[q]
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
