"""What a source (driver) hands to the interval builder: one reading of one quantity."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.decode import Invalid


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
