"""What a computation is about: a reporting period and a gateway's meters grouped into units."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from aggregator.methodology.errors import ComputationError

CHINA_TZ = timezone(timedelta(hours=8))  # programme years are calendar years in China


@dataclass(frozen=True, slots=True)
class Period:
    """A reporting period ``[start, end)`` in POSIX seconds."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ComputationError(f"period end {self.end} is not after start {self.start}")

    @property
    def seconds(self) -> int:
        return self.end - self.start

    @property
    def year(self) -> int:
        """Calendar year (China time) of the period's start: the EV baseline year."""
        return datetime.fromtimestamp(self.start, CHINA_TZ).year


@dataclass(frozen=True, slots=True)
class Unit:
    """What earns as one: a PV or EV meter, or one house's heat and electricity meters."""

    id: str
    meters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Subject:
    """The meters of one gateway a statement is for, grouped into units."""

    gateway: str
    units: tuple[Unit, ...]

    @classmethod
    def of_meters(cls, gateway: str, meters: Sequence[str]) -> Subject:
        """One unit per meter."""
        return cls(gateway, tuple(Unit(m, (m,)) for m in meters))

    @property
    def meters(self) -> tuple[str, ...]:
        return tuple(m for u in self.units for m in u.meters)

    def __post_init__(self) -> None:
        meters = self.meters
        if not meters:
            raise ComputationError("a subject needs at least one meter")
        dup = sorted(m for m, n in Counter(meters).items() if n > 1)
        if dup:
            raise ComputationError(f"meters {dup} appear in more than one unit")
