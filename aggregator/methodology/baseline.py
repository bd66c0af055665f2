"""A heated house's recorded coal use before the switch: the cap on its heating baseline.

The file given to ``puhui aggregator reductions compute --baseline FILE`` (closed model)::

    format: puhui-heating-baseline/1
    units:
      hp-01: {coal_t: 3.2, first_day: 2019-11-01, last_day: 2020-03-31,
              source: "coal-to-electricity household survey, record 0417"}

For such a unit the engine caps BE at the coal of the record pro-rated to the period by
time: ``cap = coal_t x period / (last_day - first_day + 1 day) x NCV x EF_coal``, NCV being the
set's ``method.historical_coal_ncv``. The inputs and the cap are written into the statement
(``units[].baseline_cap``), so a verifier recomputes it from the signed statement and checks
the record it names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aggregator.methodology.errors import BaselineFileError, ComputationError
from aggregator.methodology.params import HeatingMethod, ParameterSet, validation_issues
from aggregator.methodology.subject import Period, Subject

DAY_S = 86_400


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Record(_Closed):
    coal_t: float = Field(ge=0, allow_inf_nan=False)
    first_day: dt.date
    last_day: dt.date
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _ordered(self) -> _Record:
        if self.last_day < self.first_day:
            raise ValueError("last_day is before first_day")
        return self


class _BaselineFile(_Closed):
    format: Literal["puhui-heating-baseline/1"]
    units: dict[str, _Record] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class HistoricalUse:
    """Coal a household burnt from ``first_day`` to ``last_day`` (inclusive), and the record."""

    coal_t: float
    first_day: dt.date
    last_day: dt.date
    source: str

    @property
    def seconds(self) -> int:
        return ((self.last_day - self.first_day).days + 1) * DAY_S

    def to_json(self) -> dict[str, Any]:
        return {
            "coal_t": self.coal_t,
            "first_day": self.first_day.isoformat(),
            "last_day": self.last_day.isoformat(),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HistoricalUse:
        return cls(
            float(obj["coal_t"]),
            dt.date.fromisoformat(obj["first_day"]),
            dt.date.fromisoformat(obj["last_day"]),
            str(obj["source"]),
        )


def load_baselines(path: str | Path) -> dict[str, HistoricalUse]:
    """Read a ``puhui-heating-baseline/1`` file; errors name the file and the field."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineFileError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BaselineFileError(f"{p}: not valid YAML: {exc}") from exc
    try:
        model = _BaselineFile.model_validate(raw)
    except ValidationError as exc:
        raise BaselineFileError("\n".join(validation_issues(exc, str(p)))) from exc
    return {u: HistoricalUse(r.coal_t, r.first_day, r.last_day, r.source) for u, r in model.units.items()}


def cap_tco2(params: ParameterSet, use: HistoricalUse, period: Period) -> float:
    """The BE cap (tCO2) for one unit over the period."""
    m = params.method
    assert isinstance(m, HeatingMethod) and m.historical_coal_ncv is not None
    coal_gj = use.coal_t * period.seconds / use.seconds * m.historical_coal_ncv.value
    return coal_gj * m.coal_emission_factor.value / 1000.0


def baseline_caps(
    params: ParameterSet, subject: Subject, period: Period, baselines: Mapping[str, HistoricalUse]
) -> np.ndarray | None:
    """Per unit of the subject, its BE cap (inf without a record); None without any record."""
    if not baselines:
        return None
    m = params.method
    if not isinstance(m, HeatingMethod) or m.historical_coal_ncv is None:
        raise ComputationError(
            f"{params.id} {params.version}: a baseline cap needs a clean-heating parameter set with "
            "method.historical_coal_ncv"
        )
    ids = [u.id for u in subject.units]
    unknown = sorted(set(baselines) - set(ids))
    if unknown:
        raise ComputationError(f"baseline records for {unknown}: not units of this statement ({ids})")
    return np.array([cap_tco2(params, baselines[u], period) if u in baselines else np.inf for u in ids])
