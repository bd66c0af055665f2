"""Meter calibration and accuracy, as a parameter set's ``meter_accuracy`` section says.

- A meter's calibration is valid through its ``calibrated_until`` day, China time: an
  interval ending after that earns nothing (``calibration_expired``); a meter whose
  calibration ended before the period, or that has no date where the set requires one, or
  whose class has no maximum permissible error (MPE) in the set, is refused.
- With ``discount``, each series row carries its meter's MPE: the engine takes activity
  feeding BE x (1 - MPE) and activity feeding PE x (1 + MPE) (:func:`engine.evaluate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta

import numpy as np

from aggregator.methodology.errors import IneligibleSubject
from aggregator.methodology.params import ParameterSet
from aggregator.methodology.series import SeriesKey
from aggregator.methodology.subject import CHINA_TZ, Period
from aggregator.view import MeterInfo


def calibration_end(day: date) -> int:
    """POSIX seconds at which a calibration valid through ``day`` (China time) ends."""
    return int(datetime.combine(day + timedelta(days=1), time(), CHINA_TZ).timestamp())


def valid_until(params: ParameterSet, infos: Mapping[str, MeterInfo]) -> dict[str, int]:
    """Per meter with a calibration date: the end of its validity (empty without the section)."""
    if params.meter_accuracy is None:
        return {}
    return {m: calibration_end(i.calibrated_until) for m, i in infos.items() if i.calibrated_until}


def row_mpe(
    params: ParameterSet, infos: Mapping[str, MeterInfo], keys: Sequence[SeriesKey]
) -> np.ndarray | None:
    """Per series row, the MPE of its meter's class; None when the set applies no discount."""
    acc = params.meter_accuracy
    if acc is None or not acc.discount:
        return None
    unknown = sorted({k.meter for k in keys if infos[k.meter].meter_class not in acc.mpe})
    if unknown:
        raise IneligibleSubject(_no_mpe(params, unknown, infos))
    return np.array([acc.mpe[infos[k.meter].meter_class].value for k in keys], dtype=float)


def check_calibration(params: ParameterSet, infos: Mapping[str, MeterInfo], period: Period) -> None:
    """Refuse meters without a required calibration date, with a calibration that ended before
    the period, or of a class without an MPE in the set (:class:`IneligibleSubject`)."""
    acc = params.meter_accuracy
    if acc is None:
        return
    problems = []
    for meter, info in sorted(infos.items()):
        if info.calibrated_until is None:
            if acc.require_calibration_date:
                problems.append(
                    f"{meter}: its enrolment names no calibration date (nameplate.calibrated_until)"
                )
        elif calibration_end(info.calibrated_until) <= period.start:
            problems.append(
                f"{meter}: calibration valid until {info.calibrated_until.isoformat()} (China time), "
                "before the period starts: recalibrate the meter and enrol it again"
            )
    if problems:
        raise IneligibleSubject(f"{params.id} {params.version}: " + "; ".join(problems) + f" ({acc.source})")
    if acc.discount:
        unknown = sorted(m for m, i in infos.items() if i.meter_class not in acc.mpe)
        if unknown:
            raise IneligibleSubject(_no_mpe(params, unknown, infos))


def _no_mpe(params: ParameterSet, meters: list[str], infos: Mapping[str, MeterInfo]) -> str:
    assert params.meter_accuracy is not None
    named = ", ".join(f"{m} (class {infos[m].meter_class!r})" for m in meters)
    return (
        f"{params.id} {params.version}: {named}: no maximum permissible error for the class in this "
        f"parameter set (classes {sorted(params.meter_accuracy.mpe)})"
    )
