"""Versioned parameter sets: every factor and default a methodology uses, with its source.

A parameter set is one YAML file in ``config/methodologies/`` validated by the closed models
below (``extra="forbid"``: a typo is an error naming the file and the path inside it). A
statement names the exact set by ``id``, ``version`` and ``sha256``, the SHA-256 of the
file's exact bytes (what ``sha256sum FILE`` prints): any edit, even to a comment, is a new
parameter set.

Every factor carries ``value``, ``unit``, ``source`` and ``confidence``: ``documented`` (seen
in the official text), ``secondary`` (seen only in a transcription) or ``assumed`` (an
engineering default without an official source), as in the project's methodology reference.

Sections added with the 2.0.0 sets are optional, so every older file still loads (a statement
signed with it stays verifiable): ``scope`` (regions a programme credits, and the grid
factors that may apply in each), ``meter_accuracy`` (calibration and permissible error),
``method.transmission_loss``, ``method.historical_coal_ncv`` and ``alternatives`` (the
published values the set did not choose: tests/aggregator/methodology/test_conservative.py).
``filing`` (optional, issue 18) records the set's filing (备案) with an authority and the tier of
the standard it implements; :mod:`.filing` holds the production check and the precedence rule.
``refused_assurance`` (optional, issue 24) lists the evidence assurance levels
(evidence/assurance.py) the set does not credit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aggregator.methodology.errors import ParameterSetError
from common.yaml_models import parse_yaml
from evidence.assurance import Assurance
from evidence.records import FLAGS

FORMAT = "puhui-methodology-params/1"
PARAMS_DIR = Path(__file__).resolve().parents[2] / "config" / "methodologies"
HASH_DEFINITION = "sha256 of the parameter file's exact bytes"
Confidence = Literal["documented", "secondary", "assumed"]
FlagPolicy = Literal["credit", "exclude"]
# The reference's data-quality rules: data that are missing, rejected or of unknown time
# never earn anything. A parameter set may not credit these flags.
MUST_EXCLUDE = frozenset({"gap", "reset", "invalid_value", "clock_jump", "estimated"})


EV_UNITS = {
    "fuel_emission_factor": "kgCO2/L",
    "fuel_consumption": "L/km",
    "ev_consumption": "kWh/km",
    "baseline_improvement_per_year": "1",
    "grid_loss_fraction": "1",
    "leakage_fraction": "1",
}
HEATING_UNITS = {
    "baseline_efficiency": "1",
    "coal_emission_factor": "tCO2/TJ",
    "estimated_cop": "1",
    "cop_min": "1",
    "cop_max": "1",
    "leakage_fraction": "1",
}
OPTIONAL_UNITS = {"transmission_loss": "1", "historical_coal_ncv": "GJ/t"}
REGION = r"^[a-z][a-z0-9_]*$"  # as gateway.grid_region and the enrolment's region spell it
MAX_LOSS = 0.5
MAX_MPE = 0.2


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sourced(_Closed):
    """Where a value comes from and how sure we are of it."""

    source: str = Field(min_length=3)
    confidence: Confidence
    note: str = ""


class Factor(Sourced):
    """One numeric parameter with its unit and source."""

    value: float
    unit: str = Field(min_length=1)

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class AverageSeries(Sourced):
    """Average grid emission factors by region and data year (e.g. the MEE/NBS notices)."""

    kind: Literal["average"]
    unit: Literal["tCO2/MWh"]
    values: dict[str, dict[int, Annotated[float, Field(gt=0, lt=3)]]]


class CombinedMarginSeries(Sourced):
    """Operating and build margins by regional grid; EF = w_om x OM + w_bm x BM."""

    kind: Literal["combined_margin"]
    unit: Literal["tCO2/MWh"]
    year: int
    om: dict[str, Annotated[float, Field(gt=0, lt=3)]]
    bm: dict[str, Annotated[float, Field(gt=0, lt=3)]]
    weight_om: Factor
    weight_bm: Factor

    @model_validator(mode="after")
    def _consistent(self) -> CombinedMarginSeries:
        if set(self.om) != set(self.bm):
            raise ValueError(f"om and bm must name the same regions: {sorted(set(self.om) ^ set(self.bm))}")
        if not math.isclose(self.weight_om.value + self.weight_bm.value, 1.0, abs_tol=1e-9):
            raise ValueError("weight_om + weight_bm must be 1")
        return self


class FixedSeries(Sourced):
    """One programme-specific factor (e.g. Shanghai's 0.42 kgCO2/kWh)."""

    kind: Literal["fixed"]
    unit: Literal["tCO2/MWh"]
    region: str
    value: float = Field(gt=0, lt=3)


GridSeries = Annotated[AverageSeries | CombinedMarginSeries | FixedSeries, Field(discriminator="kind")]


class GridFactorChoice(_Closed):
    """Which series, region and data year a statement uses; a meter's enrolled region wins."""

    series: str
    region: str
    year: int | None = None
    use_meter_region: bool = True


class Completeness(Sourced):
    threshold: float = Field(ge=0, le=1)


class DataPolicy(Sourced):
    """What each record flag means for crediting: ``credit`` or ``exclude`` (earns nothing)."""

    flags: dict[str, FlagPolicy]

    @field_validator("flags")
    @classmethod
    def _all_flags(cls, flags: dict[str, FlagPolicy]) -> dict[str, FlagPolicy]:
        missing, unknown = FLAGS - set(flags), set(flags) - FLAGS
        if missing or unknown:
            raise ValueError(f"must decide every flag: missing {sorted(missing)}, unknown {sorted(unknown)}")
        credited = sorted(f for f in MUST_EXCLUDE if flags[f] == "credit")
        if credited:
            raise ValueError(f"{credited} must be 'exclude' (data-quality rules: no interpolation)")
        return flags


class Eligibility(_Closed):
    max_rated_power_kw: Factor | None = None
    crediting_life_years: Factor | None = None


def _expect_units(model: BaseModel, units: dict[str, str]) -> None:
    units = {**units, **{k: u for k, u in OPTIONAL_UNITS.items() if getattr(model, k, None) is not None}}
    wrong = [
        f"{name}.unit must be {unit!r}, got {getattr(model, name).unit!r}"
        for name, unit in units.items()
        if getattr(model, name).unit != unit
    ]
    if wrong:
        raise ValueError("; ".join(wrong))


def _check_loss(loss: Factor | None) -> None:
    if loss is not None and not 0 <= loss.value < MAX_LOSS:
        raise ValueError(f"transmission_loss must be in [0, {MAX_LOSS})")


class PVMethod(_Closed):
    """BE = EG x EF_grid; PE = LE = 0. EG is the quantity the programme credits."""

    scenario: Literal["pv"]
    credited_quantity: Literal["energy_export", "energy_generated"]
    credited_quantity_basis: Sourced


class EVMethod(_Closed):
    """BE = E / EC_ev x SFC x EF_fuel x improvement^(year - base); PE = E x EF_grid x (1 + loss),
    or with ``transmission_loss``: PE = E / (1 - loss) x EF_grid."""

    scenario: Literal["ev_charging"]
    lifetime_quantities: list[str] = Field(min_length=1)
    per_session_quantities: list[str]
    per_session_counters: Literal["refuse", "convert"]
    fuel_emission_factor: Factor
    fuel_consumption: Factor
    ev_consumption: Factor
    baseline_improvement_per_year: Factor
    improvement_base_year: int
    grid_loss_fraction: Factor
    leakage_fraction: Factor
    transmission_loss: Factor | None = None

    @model_validator(mode="after")
    def _units(self) -> EVMethod:
        _expect_units(self, EV_UNITS)
        _check_loss(self.transmission_loss)
        if self.transmission_loss is not None and self.grid_loss_fraction.value != 0:
            raise ValueError("grid_loss_fraction must be 0 when transmission_loss is set (one loss term)")
        return self


class HeatingMethod(_Closed):
    """BE = Q / eta_BL x EF_coal (capped by the household's recorded coal use, with
    ``historical_coal_ncv``); PE = E x EF_grid (/ (1 - transmission_loss)); LE = leakage x BE."""

    scenario: Literal["clean_heating"]
    heat_quantities: list[str] = Field(min_length=1)
    electricity_quantities: list[str] = Field(min_length=1)
    baseline_efficiency: Factor
    coal_emission_factor: Factor
    estimated_cop: Factor
    cop_min: Factor
    cop_max: Factor
    leakage_fraction: Factor
    transmission_loss: Factor | None = None
    historical_coal_ncv: Factor | None = None

    @model_validator(mode="after")
    def _units(self) -> HeatingMethod:
        _expect_units(self, HEATING_UNITS)
        _check_loss(self.transmission_loss)
        if self.historical_coal_ncv is not None and self.historical_coal_ncv.value <= 0:
            raise ValueError("historical_coal_ncv must be > 0")
        if not 0 < self.cop_min.value <= self.estimated_cop.value <= self.cop_max.value:
            raise ValueError("need 0 < cop_min <= estimated_cop <= cop_max")
        if not 0 < self.baseline_efficiency.value <= 1:
            raise ValueError("baseline_efficiency must be in (0, 1]")
        return self


Method = Annotated[PVMethod | EVMethod | HeatingMethod, Field(discriminator="scenario")]


class ScopeRegion(_Closed):
    """A region the programme credits: its GB/T 2260 code and the grid factors (regions of the
    chosen series) that may apply to electricity there."""

    code: str = Field(pattern=r"^\d{6}$")
    grid: list[str] = Field(min_length=1)


class ProgrammeScope(Sourced):
    """The enrolment regions whose meters the programme may credit; any other is refused.

    Where a region lists several grid factors, the conservative one is used: the largest for
    electricity a project consumes (EV charging, heat pumps: project emissions), the smallest
    for electricity it displaces (PV: baseline emissions)."""

    regions: dict[Annotated[str, Field(pattern=REGION)], ScopeRegion] = Field(min_length=1)


class MeterAccuracy(Sourced):
    """Calibration and accuracy: readings after a meter's calibration date earn nothing; with
    ``discount``, activity feeding BE is taken x (1 - MPE) and activity feeding PE x (1 + MPE),
    MPE being the maximum permissible error of the meter's class."""

    require_calibration_date: bool
    discount: bool
    mpe: dict[str, Factor] = Field(min_length=1)

    @field_validator("mpe")
    @classmethod
    def _fractions(cls, mpe: dict[str, Factor]) -> dict[str, Factor]:
        wrong = sorted(c for c, f in mpe.items() if f.unit != "1" or not 0 <= f.value < MAX_MPE)
        if wrong:
            raise ValueError(f"classes {wrong}: an MPE is a fraction (unit '1') in [0, {MAX_MPE})")
        return mpe


class Alternative(_Closed):
    """A published value the set could have used instead of its own (the conservativeness
    table): ``changes`` maps dotted paths in the file to that value. The chosen value must not
    give the larger ER unless ``chosen_because`` names the source that requires it."""

    changes: dict[str, Any] = Field(min_length=1)
    region: Annotated[str, Field(pattern=REGION)] | None = None
    source: str = Field(min_length=3)
    chosen_because: str | None = None


FilingStatus = Literal["unfiled", "pending", "filed", "withdrawn"]
StandardTier = Literal["national", "local", "group", "international", "none"]
NEEDS_NUMBER: frozenset[str] = frozenset({"filed", "withdrawn"})


class Filing(_Closed):
    """Where the set stands with the authority that files (备案) methodologies, and the tier of
    the standard it implements: ``national`` (GB, MEE), ``local`` (DB, a province's own; names
    its ``regions``), ``group`` (T/ 团体标准), ``international`` (CDM, Verra) or ``none``
    (puhui's own reading). ``status`` is the filing's state now: ``unfiled``, ``pending``
    (submitted, no number yet), ``filed`` (in force from ``valid_from`` through ``valid_to``,
    China time) or ``withdrawn``. docs/methodologies.md, *Filing and precedence*."""

    status: FilingStatus
    tier: StandardTier
    standard: str | None = Field(default=None, min_length=3)  # e.g. DB11/T 3043-2024
    authority: str | None = Field(default=None, min_length=2)  # e.g. 河北省生态环境厅
    number: str | None = Field(default=None, min_length=1)  # 备案号
    regions: list[Annotated[str, Field(pattern=REGION)]] = Field(default_factory=list)
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    source: str = Field(min_length=3)
    note: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Filing:
        problems = [*self._status_problems(), *self._tier_problems()]
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            problems.append(f"valid_to {self.valid_to} is before valid_from {self.valid_from}")
        if len(set(self.regions)) != len(self.regions):
            problems.append("regions: a region is named twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _status_problems(self) -> list[str]:
        s, out = self.status, []
        if s in NEEDS_NUMBER and self.number is None:
            out.append(f"number (备案号) is required when status is {s!r}")
        if s not in NEEDS_NUMBER and self.number is not None:
            out.append(f"number: a set with status {s!r} has no 备案号")
        if s != "unfiled" and self.authority is None:
            out.append(f"authority is required when status is {s!r}")
        if s == "filed" and self.valid_from is None:
            out.append("valid_from is required when status is 'filed'")
        return out

    def _tier_problems(self) -> list[str]:
        t, out = self.tier, []
        if t == "local" and not self.regions:
            out.append("regions: a local standard names the regions it applies in")
        if t == "national" and self.regions:
            out.append("regions: a national standard applies everywhere (leave regions out)")
        if t != "none" and self.standard is None:
            out.append(f"standard (the standard's code) is required for tier {t!r}")
        if t == "none" and self.standard is not None:
            out.append("standard: tier 'none' is puhui's own reading, it names no standard")
        return out


class ParameterSet(_Closed):
    """One versioned parameter set for one methodology."""

    format: Literal["puhui-methodology-params/1"]
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{2,63}$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    title: str
    programme: str
    method: Method
    grid_series: dict[str, GridSeries]
    grid_factor: GridFactorChoice
    completeness: Completeness
    data_policy: DataPolicy
    eligibility: Eligibility = Eligibility()
    scope: ProgrammeScope | None = None
    meter_accuracy: MeterAccuracy | None = None
    alternatives: list[Alternative] = Field(default_factory=list)
    filing: Filing | None = None
    refused_assurance: list[Assurance] = Field(default_factory=list)

    @field_validator("refused_assurance")
    @classmethod
    def _once_each(cls, levels: list[Assurance]) -> list[Assurance]:
        if len(set(levels)) != len(levels):
            raise ValueError("a level is named twice")
        return levels

    @model_validator(mode="after")
    def _filing_regions_in_scope(self) -> ParameterSet:
        if self.filing is None or self.scope is None:
            return self
        outside = sorted(set(self.filing.regions) - set(self.scope.regions))
        if outside:
            in_scope = sorted(self.scope.regions)
            raise ValueError(f"filing.regions {outside} are not in scope.regions ({in_scope})")
        return self

    @model_validator(mode="after")
    def _grid_choice_exists(self) -> ParameterSet:
        if self.grid_factor.series not in self.grid_series:
            raise ValueError(f"grid_factor.series {self.grid_factor.series!r} is not in grid_series")
        if self.scope is None:
            resolve_grid_factor(self, None)  # the default region/year must resolve
        for region in self.scope.regions if self.scope else ():
            resolve_grid_factor(self, region)  # every region's candidates must resolve
        return self

    @model_validator(mode="after")
    def _alternatives_name_this_file(self) -> ParameterSet:
        data = self.model_dump(mode="json")
        for i, alt in enumerate(self.alternatives):
            for path in alt.changes:
                if not _has_path(data, path):
                    raise ValueError(f"alternatives[{i}].changes: {path!r} is not a path in this file")
            if alt.region is not None and (self.scope is None or alt.region not in self.scope.regions):
                raise ValueError(f"alternatives[{i}].region {alt.region!r} is not in scope.regions")
        return self

    def consumes_grid_electricity(self) -> bool:
        """True when the grid factor prices electricity the project consumes (PE), False when it
        prices electricity the project displaces (PV: BE)."""
        return self.method.scenario != "pv"


def _has_path(data: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


@dataclass(frozen=True, slots=True)
class GridFactor:
    """The grid factor one meter gets: value in tCO2/MWh and where it comes from. With a
    programme scope, ``candidates`` are the factors that could apply and ``rule`` says which
    one was taken (absent for sets without a scope, whose statements keep their old form)."""

    value: float
    series: str
    region: str
    year: int | None
    source: str
    confidence: str
    candidates: tuple[tuple[str, float], ...] | None = None
    rule: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "unit": "tCO2/MWh",
            "series": self.series,
            "region": self.region,
            "year": self.year,
            "source": self.source,
            "confidence": self.confidence,
        }
        if self.candidates is not None:
            out["candidates"] = dict(self.candidates)
            out["rule"] = self.rule
        return out


CONSUMED_RULE = "largest candidate: electricity the project consumes (project emissions)"
DISPLACED_RULE = "smallest candidate: electricity the project displaces (baseline emissions)"


def resolve_grid_factor(params: ParameterSet, meter_region: str | None) -> GridFactor:
    """The grid factor for a meter's region (or the set's default region). Raises ValueError
    when the region or year is not in the series: no silent fallback to another region.

    With a programme scope the region must be in it, and the conservative one of the region's
    candidate factors is taken (:class:`ProgrammeScope`)."""
    if params.scope is not None:
        return _scoped_grid_factor(params, params.scope, (meter_region or "").lower())
    choice = params.grid_factor
    region = meter_region if (meter_region and choice.use_meter_region) else choice.region
    s = params.grid_series[choice.series]
    if isinstance(s, FixedSeries):
        return GridFactor(s.value, choice.series, s.region, None, s.source, s.confidence)
    if isinstance(s, CombinedMarginSeries):
        if region not in s.om:
            raise ValueError(f"region {region!r} is not in series {choice.series!r} ({sorted(s.om)})")
        value = s.weight_om.value * s.om[region] + s.weight_bm.value * s.bm[region]
        conf = "assumed" if "assumed" in (s.weight_om.confidence, s.weight_bm.confidence) else s.confidence
        source = f"{s.source}; weights: {s.weight_om.source}"
        return GridFactor(value, choice.series, region, s.year, source, conf)
    years = s.values.get(region)
    if years is None:
        raise ValueError(f"region {region!r} is not in series {choice.series!r} ({sorted(s.values)})")
    if choice.year not in years:
        raise ValueError(f"series {choice.series!r} has no year {choice.year} for {region!r}")
    return GridFactor(years[choice.year], choice.series, region, choice.year, s.source, s.confidence)


def _scoped_grid_factor(params: ParameterSet, scope: ProgrammeScope, region: str) -> GridFactor:
    entry = scope.regions.get(region)
    if entry is None:
        raise ValueError(
            f"region {region or None!r} is outside the programme's scope ({sorted(scope.regions)})"
        )
    found = [_series_factor(params, g) for g in entry.grid]
    pick = max if params.consumes_grid_electricity() else min
    best = pick(found, key=lambda g: g.value)
    rule = CONSUMED_RULE if params.consumes_grid_electricity() else DISPLACED_RULE
    candidates = tuple((g.region, g.value) for g in found)
    return GridFactor(
        best.value, best.series, best.region, best.year, best.source, best.confidence, candidates, rule
    )


def _series_factor(params: ParameterSet, region: str) -> GridFactor:
    """The chosen series' factor for one region, exactly (no default region, no meter region)."""
    name, year = params.grid_factor.series, params.grid_factor.year
    s = params.grid_series[name]
    if isinstance(s, FixedSeries):
        if region != s.region:
            raise ValueError(f"series {name!r} is for {s.region!r} only, not {region!r}")
        return GridFactor(s.value, name, region, None, s.source, s.confidence)
    if isinstance(s, CombinedMarginSeries):
        if region not in s.om:
            raise ValueError(f"region {region!r} is not in series {name!r} ({sorted(s.om)})")
        value = s.weight_om.value * s.om[region] + s.weight_bm.value * s.bm[region]
        conf = "assumed" if "assumed" in (s.weight_om.confidence, s.weight_bm.confidence) else s.confidence
        return GridFactor(value, name, region, s.year, f"{s.source}; weights: {s.weight_om.source}", conf)
    years = s.values.get(region)
    if years is None:
        raise ValueError(f"region {region!r} is not in series {name!r} ({sorted(s.values)})")
    if year not in years:
        raise ValueError(f"series {name!r} has no year {year} for {region!r}")
    return GridFactor(years[year], name, region, year, s.source, s.confidence)


@dataclass(frozen=True, slots=True)
class LoadedParameterSet:
    """A validated parameter set with the hash of the bytes it was read from."""

    params: ParameterSet
    sha256: str
    path: Path | None = None

    @property
    def id(self) -> str:
        return self.params.id

    @property
    def version(self) -> str:
        return self.params.version

    def reference(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "sha256": self.sha256, "hash": HASH_DEFINITION}


def parse_parameter_set(data: bytes, name: str = "<parameters>") -> LoadedParameterSet:
    """Validate parameter-file bytes; errors name ``name`` and every failing path."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParameterSetError(f"{name}: not valid YAML: not UTF-8 text (byte {exc.start})") from exc
    raw, issues = parse_yaml(text)  # the bounded loader: no recursion, alias bombs or odd values
    if issues:
        raise ParameterSetError("\n".join(i.render(name) for i in issues))
    try:
        params = ParameterSet.model_validate(raw)
    except ValidationError as exc:
        raise ParameterSetError("\n".join(validation_issues(exc, name))) from exc
    return LoadedParameterSet(params, hashlib.sha256(data).hexdigest())


def load_parameter_set(path: str | Path) -> LoadedParameterSet:
    """Read and validate one parameter file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ParameterSetError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    loaded = parse_parameter_set(data, str(p))
    return LoadedParameterSet(loaded.params, loaded.sha256, p)


def find_parameter_set(
    set_id: str, version: str, sha256: str | None = None, directory: Path = PARAMS_DIR
) -> LoadedParameterSet:
    """The parameter set ``id``/``version`` in ``directory``; with ``sha256``, exactly those bytes."""
    for path in sorted(directory.glob("*.yaml")):
        loaded = load_parameter_set(path)
        if loaded.id == set_id and loaded.version == version:
            if sha256 is not None and loaded.sha256 != sha256:
                raise ParameterSetError(
                    f"{path}: parameter set {set_id} {version} has sha256 {loaded.sha256}, "
                    f"the statement names {sha256}: the file was changed"
                )
            return loaded
    raise ParameterSetError(f"{directory}: no parameter set {set_id} version {version}")


def list_parameter_sets(directory: Path = PARAMS_DIR) -> list[LoadedParameterSet]:
    """Every parameter set of ``directory`` (``*.yaml``, all versions), in file-name order.
    Two files claiming one id and version are an error naming both."""
    if not directory.is_dir():
        raise ParameterSetError(f"{directory}: not a directory of parameter sets")
    out: list[LoadedParameterSet] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        loaded = load_parameter_set(path)
        other = seen.setdefault((loaded.id, loaded.version), path)
        if other != path:
            raise ParameterSetError(f"{path}: parameter set {loaded.id} {loaded.version} is also {other}")
        out.append(loaded)
    return out


def validation_issues(exc: ValidationError, name: str) -> list[str]:
    """One line per problem: ``NAME: path.in.file: what is wrong``."""
    out = []
    for err in exc.errors(include_url=False):
        path = _format_path([p for p in err["loc"] if not _is_tag(p)])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required, missing"
        out.append(f"{name}: {path}: {msg}" if path else f"{name}: {msg}")
    return out


_TAGS = {"pv", "ev_charging", "clean_heating", "average", "combined_margin", "fixed"}


def _is_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in _TAGS or part.startswith("function-"))


def _format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
