"""What a physics model reports for one simulation step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Sample:
    """Constant values over one step ``[t, t + step)``.

    ``power_w`` is positive in the metered (forward) direction: consumption for an
    import meter, production for an inverter, delivery for a charger, heat for a heat
    meter. It is negative only for bidirectional meters exporting to the grid.
    """

    power_w: float
    outdoor_c: float | None = None
    flow_c: float | None = None
    return_c: float | None = None
    flow_m3h: float | None = None
    ev_state: str | None = None  # IEC 61851 state: "A" no car, "B1" connected idle, "C2" charging
    session: int | None = None  # charging session number (0 = none yet)


class PowerModel(Protocol):
    """A source of samples. ``sample`` is called once per step, in increasing time order."""

    def sample(self, t: float, step_s: float) -> Sample:
        """The sample for the step starting at simulated time ``t`` (POSIX seconds)."""
        ...
