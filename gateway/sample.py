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
    """

    meter: str
    quantity: str
    value: float | Invalid
    time: float
    source: str = ""
