"""A SunSpec device as a poll source: discover the model chain, then poll its fields.

Discovery (:class:`drivers.modbus.sunspec.ChainWalk`) runs on the first poll and again after any
failed discovery, through the same register reader the polls use; until it succeeds each
poll reports the failure (counted by the poller, never raised). Once the chain is known
the device is an ordinary :class:`drivers.modbus.source.ModbusSource` over
:func:`drivers.modbus.sunspec.chain_fields`.

:func:`template_fields` gives the fields a chain *would* produce for each mapped model
family, without I/O, so the interval builder's series (units, kinds, poll groups) are
known before the device has ever answered.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence

from common.clock import Clock
from drivers.breaker import BreakerState
from drivers.contract import PollResult
from drivers.errors import DriverError
from drivers.modbus.errors import DeviceExceptionReply, DeviceTimeout
from drivers.modbus.plan import ReadRequest
from drivers.modbus.profiles import RegisterField, SunSpecMapping
from drivers.modbus.source import ModbusSource, ReadPolicy, RegisterReader
from drivers.modbus.sunspec import (
    ChainWalk,
    ModelBlock,
    SunSpecChain,
    block_fields,
    chain_fields,
    load_model,
    model_ids,
)


def template_fields(mapping: SunSpecMapping) -> tuple[RegisterField, ...]:
    """Fields of the first supported model of every mapped family (addresses meaningless)."""
    fields: list[RegisterField] = []
    taken: set[str] = set()
    for key, points in mapping.points.items():
        ids = model_ids(key)
        model_id = next((m for m in mapping.models if m in ids), None)
        if model_id is None:
            continue
        definition = load_model(model_id)
        block = ModelBlock(model_id, 0, definition.length)
        fields.extend(block_fields(block, f"m{model_id}", points, taken))
    return tuple(fields)


class SunSpecSource:
    """Poll source for a SunSpec device (async context manager; closes the reader)."""

    def __init__(
        self,
        meter: str,
        reader: RegisterReader,
        clock: Clock,
        *,
        unit: int,
        mapping: SunSpecMapping,
        policy: ReadPolicy | None = None,
        max_gap: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self.meter = meter
        self.unit = unit
        self.policy = policy or ReadPolicy()
        self.chain: SunSpecChain | None = None
        self._reader, self._clock, self._mapping = reader, clock, mapping
        self._max_gap, self._rng = max_gap, rng
        self._inner: ModbusSource | None = None
        self._sent = 0

    async def __aenter__(self) -> SunSpecSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._reader.aclose()

    @property
    def fields(self) -> tuple[RegisterField, ...]:
        return self._inner.fields if self._inner is not None else ()

    async def poll(self, groups: Collection[str] | None = None, *, slot: float | None = None) -> PollResult:
        if self._inner is None:
            started, t0 = self._clock.now(), asyncio.get_running_loop().time()
            try:
                self.chain = await self._discover()
            except DriverError as exc:
                await self._reader.reset()
                latency = asyncio.get_running_loop().time() - t0
                error = f"{self.meter} ({self._reader.label}): SunSpec discovery failed: {exc}"
                closed = BreakerState.CLOSED
                return PollResult(self.meter, False, (), started, latency, self._sent, closed, error)
            fields = chain_fields(self.chain, self._mapping)
            self._inner = ModbusSource(
                self.meter, fields, self._reader, self._clock,
                unit=self.unit, policy=self.policy, max_gap=self._max_gap, rng=self._rng,
            )  # fmt: skip
        return await self._inner.poll(groups, slot=slot)

    async def _discover(self) -> SunSpecChain:
        walk = ChainWalk(self._mapping.bases)
        self._sent = 0
        while (req := walk.request()) is not None:
            address, count = req
            self._sent += 1
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    words: Sequence[int] | None = await self._reader.read(
                        ReadRequest(self.unit, 3, address, count, ())
                    )
            except DeviceExceptionReply:
                words = None  # unmapped base address
            except TimeoutError as exc:
                msg = f"unit {self.unit} @{address}: no answer within {self.policy.timeout_s} s"
                raise DeviceTimeout(msg) from exc
            walk.feed(words)
        return walk.chain
