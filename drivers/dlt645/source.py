"""A DL/T 645-2007 meter as a sample source (:class:`~drivers.contract.PollSource`).

A poll reads each configured :class:`~drivers.dlt645.identifiers.DataItem` of the due
groups, one "read data" exchange per identifier, through the line's owner. A timeout or
an unreachable line ends the poll (the meter is in trouble; the next slot tries again);
an error answer (0xD1) for one identifier is reported and the poll goes on with the next
(the meter is alive, it lacks that value). Samples of the answers read are kept. One
:class:`~drivers.breaker.CircuitBreaker` per meter: while open, polls are skipped without
I/O, so a dead meter costs the line one timeout per cool-down, not one per poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from common.clock import Clock
from drivers.breaker import CircuitBreaker
from drivers.contract import PollResult, Sample
from drivers.dlt645.errors import ErrorAnswer
from drivers.dlt645.frame import decode, read_data_request, read_data_value, read_frame
from drivers.dlt645.identifiers import DataItem
from drivers.errors import DriverError
from drivers.line.contract import Line

SAMPLE_SOURCE = "dlt645"


async def read_data(line: Line, address: str, di: int, *, timeout_s: float, label: str) -> bytes:
    """The value bytes of identifier ``di`` of the meter at ``address`` (one exchange).
    Raises :class:`~drivers.line.contract.LineError` or :class:`~drivers.dlt645.errors.Dlt645Error`."""
    raw = await line.exchange(read_data_request(address, di), read_frame, timeout_s=timeout_s, label=label)
    value, _follow_up = read_data_value(decode(raw), address, di)  # the identifiers read here fit one frame
    return value


class Dlt645Source:
    """One DL/T 645 meter's data items as samples (async context manager; the line is the
    owner's to close)."""

    def __init__(
        self,
        meter: str,
        address: str,
        items: Sequence[DataItem],
        line: Line,
        clock: Clock,
        *,
        timeout_s: float,
        breaker_threshold: int = 3,
        breaker_cooldown_s: float = 60.0,
    ) -> None:
        self.meter = meter
        self.address = address
        self.items = tuple(items)
        self.timeout_s = timeout_s
        self.breaker = CircuitBreaker(clock, threshold=breaker_threshold, cooldown_s=breaker_cooldown_s)
        self._line = line
        self._clock = clock
        self._sent = 0

    async def __aenter__(self) -> Dlt645Source:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(i.group for i in self.items)

    async def poll(self, groups: Collection[str] | None = None, *, slot: float | None = None) -> PollResult:
        """Read the items of ``groups`` (default: all). Reports failures, never raises them."""
        started, t0 = self._clock.now(), asyncio.get_running_loop().time()
        if not self.breaker.allows():
            return self._result(started, t0, (), "circuit breaker open", skipped=True)
        self._sent = 0
        samples: list[Sample] = []
        errors: list[str] = []
        try:
            for item in (i for i in self.items if groups is None or i.group in groups):
                try:
                    samples += await self._read_item(item, slot)
                except ErrorAnswer as exc:
                    errors.append(str(exc))
        except DriverError as exc:
            errors.append(str(exc))
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        error = f"{self.meter} (dlt645): {'; '.join(errors)}" if errors else None
        return self._result(started, t0, tuple(samples), error)

    async def _read_item(self, item: DataItem, slot: float | None) -> list[Sample]:
        values = []
        for di in item.dis:
            self._sent += 1
            label = f"meter {self.address} DI {di:08X}"
            values.append(
                await read_data(self._line, self.address, di, timeout_s=self.timeout_s, label=label)
            )
        now = self._clock.now()
        decoded = item.decode(values)
        return [Sample(self.meter, q, v, now, SAMPLE_SOURCE, slot) for q, v in decoded.items()]

    def _result(
        self, started: float, t0: float, samples: tuple[Sample, ...], error: str | None, skipped: bool = False
    ) -> PollResult:
        latency = asyncio.get_running_loop().time() - t0
        return PollResult(
            self.meter, error is None, samples, started, latency, 0 if skipped else self._sent,
            self.breaker.state, error, skipped,
        )  # fmt: skip
