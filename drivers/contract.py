"""The driver contract: what every driver hands to the gateway, and what the gateway asks of it.

- :class:`Sample`: one reading of one quantity (a value, or :class:`Invalid` and why).
- :class:`PollResult`: what one poll of one device produced and how it went.
- :class:`PollSource`: the Protocol a polled driver implements (the poller drives it).
- :class:`DeviceHealth`: the counters and last outcome the gateway keeps per device.

The gateway imports this module; nothing here imports the gateway or a protocol module.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol

from drivers.breaker import BreakerState

log = logging.getLogger(__name__)

InvalidReason = Literal[
    "not_implemented",
    "nan",
    "infinite",
    "not_ascii",
    "scale_factor",
    "not_bcd",
    "unknown_unit",
    "flagged",  # the device's own status says this reading is wrong (Modbus ``invalid_when``)
]


@dataclass(frozen=True, slots=True)
class Invalid:
    """A decoded field that is not a usable value, and why."""

    reason: InvalidReason
    detail: str = ""

    def __str__(self) -> str:
        return f"invalid ({self.reason}{': ' + self.detail if self.detail else ''})"


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading: meter id, quantity name, value (or why there is none), clock time.

    ``time`` is clock time in POSIX seconds (the injected clock's, or the payload's own
    timestamp for MQTT sources). ``source`` says where the time came from, e.g.
    ``"modbus"``, ``"mqtt:payload"``, ``"mqtt:receipt"``.

    ``slot`` is the poll slot (clock time) the reading was requested for, set by the poller;
    None for readings a device pushes (MQTT). The answer comes ``time - slot`` later (request
    latency, a shared bus, a busy CPU); the interval builder closes an interval with the
    reading of the boundary slot whatever that latency, and keeps ``time`` as its time.
    """

    meter: str
    quantity: str
    value: float | Invalid
    time: float
    source: str = ""
    slot: float | None = None


_new = object.__new__
_set_meter = vars(Sample)["meter"].__set__  # the slots' member descriptors
_set_quantity = vars(Sample)["quantity"].__set__
_set_value = vars(Sample)["value"].__set__
_set_time = vars(Sample)["time"].__set__
_set_source = vars(Sample)["source"].__set__
_set_slot = vars(Sample)["slot"].__set__


def new_sample(
    meter: str,
    quantity: str,
    value: float | Invalid,
    time: float,
    source: str = "",
    slot: float | None = None,
) -> Sample:
    """``Sample(meter, quantity, value, time, source, slot)``, built about four times faster,
    for drivers that make thousands a second: a frozen dataclass' ``__init__`` calls
    ``object.__setattr__`` per field; this sets the slots directly. The same object
    (equal, same hash and repr, still frozen)."""
    sample: Sample = _new(Sample)
    _set_meter(sample, meter)
    _set_quantity(sample, quantity)
    _set_value(sample, value)
    _set_time(sample, time)
    _set_source(sample, source)
    _set_slot(sample, slot)
    return sample


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of one device produced and how it went."""

    meter: str
    ok: bool
    samples: tuple[Sample, ...]
    started: float  # clock time
    latency_s: float  # wall seconds
    requests: int  # request attempts sent, retries included
    breaker: BreakerState  # after this poll
    error: str | None = None
    skipped: bool = False  # breaker open: no request sent


class PollSource(Protocol):
    """What the poller needs from a device source."""

    meter: str

    async def poll(self, groups: Collection[str] | None = None, *, slot: float | None = None) -> PollResult:
        """Read ``groups``; the samples carry ``slot``, the poll slot they were read for."""
        ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None, /
    ) -> bool | None: ...


@dataclass
class DeviceHealth:
    """Counters and last outcome of one device's polls."""

    meter: str
    polls: int = 0  # polls done (including skipped ones)
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # breaker open, no request sent
    missed_slots: int = 0  # slots passed while a poll was still running
    requests: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_ok_at: float | None = None
    last_latency_s: float | None = None
    breaker: BreakerState = BreakerState.CLOSED
    polls_by_group: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """``unknown`` (not polled yet), ``up``, ``failing`` or ``breaker_open``."""
        if self.breaker is BreakerState.OPEN:
            return "breaker_open"
        if self.consecutive_failures:
            return "failing"
        return "up" if self.ok else "unknown"

    def record(self, result: PollResult, groups: Iterable[str]) -> None:
        before = self.state
        self._count(result, groups)
        after = self.state
        if after != before:  # one log line per state change, not per failed poll
            if after == "up":
                log.info("device %s: %s -> up (latency %.3f s)", self.meter, before, result.latency_s)
            else:
                log.warning("device %s: %s -> %s: %s", self.meter, before, after, self.last_error)

    def _count(self, result: PollResult, groups: Iterable[str]) -> None:
        self.polls += 1
        self.requests += result.requests
        self.breaker = result.breaker
        self.last_latency_s = result.latency_s
        for g in groups:
            self.polls_by_group[g] = self.polls_by_group.get(g, 0) + 1
        if result.ok:
            self.ok += 1
            self.consecutive_failures = 0
            self.last_ok_at = result.started
            return
        self.skipped += result.skipped
        self.failed += not result.skipped
        self.consecutive_failures += 1
        self.last_error = result.error
