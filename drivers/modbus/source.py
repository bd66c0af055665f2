"""A Modbus device as a sample source: plan, read with policy, slice, decode.

:class:`ModbusSource` reads one device's selected :class:`~drivers.modbus.profiles.RegisterField`
s through a :class:`RegisterReader` (the transport: one TCP connection, or a unit on a
serial bus). A poll never raises for a failing device: it returns a :class:`PollResult`
carrying the samples read, whether the poll succeeded, the last error (naming the device
and the address range), the latency and the circuit breaker's state.

Policy per request: ``asyncio.timeout`` deadline, up to ``retries`` retries with jittered
exponential backoff (on the injected clock), dropping the connection after each failure.
Per device: a :class:`~drivers.breaker.CircuitBreaker`; while it is open, polls are
skipped without I/O, and a half-open probe gets a single attempt. The first request that
fails ends the poll (the device is in trouble; the next slot tries again), samples of the
requests read before it are kept.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from common.backoff import Backoff
from common.clock import Clock
from drivers.breaker import BreakerState, CircuitBreaker
from drivers.contract import PollResult, Sample
from drivers.errors import DriverError
from drivers.modbus.block import PlanDecoder, flagged
from drivers.modbus.errors import DeviceTimeout, ModbusError
from drivers.modbus.plan import ReadRequest, plan_reads
from drivers.modbus.profiles import RegisterField, select_fields

SAMPLE_SOURCE = "modbus"
__all__ = ["SAMPLE_SOURCE", "ModbusSource", "ReadPolicy", "RegisterReader", "describe", "flagged"]


class RegisterReader(Protocol):
    """Transport of one device. ``read`` returns the registers, or for function 1/2 the bits
    as 0/1, one per address; it raises :class:`ModbusError` (never for cancellation)."""

    label: str  # e.g. "tcp 10.0.0.7:502"

    async def read(self, request: ReadRequest) -> list[int]: ...

    async def reset(self) -> None:
        """Drop the connection after a failure; the next read reconnects."""
        ...

    async def aclose(self) -> None: ...


class ReadPolicy(BaseModel):
    """Deadline, retries, backoff and breaker settings of one device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(default=3.0, gt=0, le=60, description="per request attempt, wall seconds")
    retries: int = Field(default=1, ge=0, le=5)
    backoff_base_s: float = Field(default=0.2, ge=0, description="clock seconds")
    backoff_max_s: float = Field(default=10.0, ge=0)
    breaker_threshold: int = Field(default=3, ge=1, description="consecutive failed polls that open it")
    breaker_cooldown_s: float = Field(default=60.0, ge=0, description="clock seconds before a probe")


def describe(request: ReadRequest) -> str:
    """``unit 1 fc4 0x0000..0x004B`` — the address range a request covers (bits for fc 1/2)."""
    last = request.address + request.count - 1
    return f"unit {request.unit} fc{request.function} 0x{request.address:04X}..0x{last:04X}"


class ModbusSource:
    """One Modbus device's fields as samples (async context manager; closes the reader)."""

    def __init__(
        self,
        meter: str,
        fields: Sequence[RegisterField],
        reader: RegisterReader,
        clock: Clock,
        *,
        unit: int,
        policy: ReadPolicy | None = None,
        max_gap: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.meter = meter
        self.unit = unit
        self.fields = tuple(fields)
        self.policy = policy or ReadPolicy()
        self.breaker = CircuitBreaker(
            clock, threshold=self.policy.breaker_threshold, cooldown_s=self.policy.breaker_cooldown_s
        )
        self._reader = reader
        self._clock = clock
        self._max_gap = max_gap
        self._backoff = Backoff(
            self.policy.backoff_base_s, self.policy.backoff_max_s, rng=rng or random.Random()
        )
        self._plans: dict[frozenset[str], PlanDecoder] = {}
        self._groups = frozenset(f.poll_group for f in self.fields)
        self._sent = 0

    async def __aenter__(self) -> ModbusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._reader.aclose()

    @property
    def groups(self) -> frozenset[str]:
        """The poll groups of this device's fields."""
        return self._groups

    def plan(self, groups: Iterable[str]) -> list[ReadRequest]:
        """The requests that read the fields of ``groups`` (cached per group set)."""
        return list(self._compiled(groups).requests)

    def _compiled(self, groups: Iterable[str]) -> PlanDecoder:
        key = groups if isinstance(groups, frozenset) else frozenset(groups)
        compiled = self._plans.get(key)
        if compiled is None:
            chosen = select_fields(self.fields, key)
            requests = plan_reads((f.span(self.unit) for f in chosen), max_gap=self._max_gap)
            compiled = self._plans[key] = PlanDecoder(requests, self.fields)
        return compiled

    async def poll(self, groups: Collection[str] | None = None, *, slot: float | None = None) -> PollResult:
        """Read the fields of ``groups`` (default: all). Reports failures, never raises them.
        The samples carry ``slot`` (the poller's slot they were read for; see ``Sample``)."""
        started, t0 = self._clock.now(), asyncio.get_running_loop().time()
        if not self.breaker.allows():
            return self._result(started, t0, (), "circuit breaker open", skipped=True)
        self._sent = 0
        compiled = self._compiled(self._groups if groups is None else groups)
        responses: list[tuple[Sequence[int], float]] = []
        error: str | None = None
        try:
            for request, block in zip(compiled.requests, compiled.blocks, strict=True):
                words = await self._read_with_retries(request)
                block.check(words)
                responses.append((words, self._clock.now()))
        except DriverError as exc:
            error = f"{self.meter} ({self._reader.label}): {exc}"
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        samples = compiled.samples(self.meter, responses, slot, SAMPLE_SOURCE)
        return self._result(started, t0, samples, error)

    async def _read_with_retries(self, request: ReadRequest) -> list[int]:
        probing = self.breaker.state is BreakerState.HALF_OPEN
        attempts = 1 if probing else 1 + self.policy.retries
        for attempt in range(attempts):
            self._sent += 1
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    return await self._reader.read(request)
            except ModbusError as exc:
                error: ModbusError = exc
            except TimeoutError as exc:
                error = DeviceTimeout(f"{describe(request)}: no answer within {self.policy.timeout_s} s")
                error.__cause__ = exc
            await self._reader.reset()
            if attempt + 1 < attempts:
                await self._clock.sleep(self._backoff.delay(attempt))
        raise error

    def _result(
        self, started: float, t0: float, samples: tuple[Sample, ...], error: str | None, skipped: bool = False
    ) -> PollResult:
        latency = asyncio.get_running_loop().time() - t0
        return PollResult(
            self.meter, error is None, samples, started, latency, 0 if skipped else self._sent,
            self.breaker.state, error, skipped,
        )  # fmt: skip
