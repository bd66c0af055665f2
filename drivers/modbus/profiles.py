"""Device profiles: register maps as data (``config/profiles/*.yaml``), closed models.

A profile lists fields: a name, the quantity it measures (the name samples carry, e.g.
``energy_import``), its unit, where it lives (function code 1 coils, 2 discrete inputs,
3 holding or 4 input registers; 0-based address), how to decode it
(:class:`drivers.modbus.decode.FieldFormat`: type, order, scale, scale factor,
not-implemented markers, bit fields), whether it is a ``counter`` (cumulative, lifetime), a
``gauge`` (instantaneous), ``info`` (identity/state text) or ``status`` (a device state: a
coil, a discrete input, a bit field of a status or alarm word, a state code), its poll
group and, for chargers whose energy register restarts with every session,
``per_session: true``. ``info`` and ``status`` samples are never aggregated into intervals.

``invalid_when: [field, ...]`` names status fields that, when non-zero (or unreadable),
make this field's reading ``Invalid("flagged")``: a meter that flags its own value as
wrong does not move a counter with it.

A ``discovery: sunspec`` profile has no fixed fields: they come from walking the device's
SunSpec model chain (:mod:`drivers.modbus.sunspec`), and the profile maps SunSpec points to
quantities. Profiles also carry their ``source``: where the addresses come from, and
``unconfirmed`` (the profile's, and a field's): what the sources did not settle, said
plainly instead of guessed; ``puhui gateway check`` repeats it for counted quantities.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.yaml_models import Issue, issues_from, read_yaml, suggest
from drivers.errors import ProfileError, UnknownProfile
from drivers.modbus.decode import BIT_FIELD_TYPES, FieldFormat, RegisterType
from drivers.modbus.plan import BIT_FUNCTIONS, RegisterSpan

PROFILES_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.#-]*$"
QUANTITY_PATTERN = r"^[a-z][a-z0-9_]*$"

Kind = Literal["counter", "gauge", "info", "status"]
DEFAULT_GROUP: dict[str, str] = {"counter": "slow", "gauge": "fast", "info": "slow", "status": "fast"}
NOT_AGGREGATED = frozenset({"info", "status"})  # kinds that never become interval series


class RegisterField(FieldFormat):
    """One register field of a device: where it is, how to decode it, what it measures."""

    name: str = Field(pattern=NAME_PATTERN)
    quantity: str | None = Field(default=None, pattern=QUANTITY_PATTERN)
    unit: str = ""
    function: Literal[1, 2, 3, 4] = 3
    address: int = Field(ge=0, le=0xFFFF)
    kind: Kind = "gauge"
    group: str | None = Field(default=None, pattern=QUANTITY_PATTERN, description="poll group")
    per_session: bool = Field(default=False, description="counter restarts with every session")
    invalid_when: tuple[str, ...] = Field(default=(), description="status fields that flag it invalid")
    description: str = ""
    unconfirmed: str = Field(default="", description="what about this field the sources did not confirm")

    @model_validator(mode="before")
    @classmethod
    def _bit_defaults(cls, data: object) -> object:
        """Coils and discrete inputs are ``type: bit``; bits are ``kind: status`` unless told."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        function = out.get("function")
        if isinstance(function, int | str) and function in BIT_FUNCTIONS:  # the field check names others
            out.setdefault("type", RegisterType.BIT.value)
        if out.get("type") == RegisterType.BIT.value or out.get("bit") is not None:
            out.setdefault("kind", "status")
        return out

    @model_validator(mode="after")
    def _check_field(self) -> RegisterField:
        if self.address + self.registers > 0x10000:
            raise ValueError(f"field ends past register 65535 ({self.address}+{self.registers})")
        if self.per_session and self.kind != "counter":
            raise ValueError("per_session applies to counters only")
        if self.type is RegisterType.STRING and self.kind != "info":
            raise ValueError("a string field is kind info")
        self._check_bits_and_status()
        return self

    def _check_bits_and_status(self) -> None:
        coil = self.function in BIT_FUNCTIONS
        if coil != (self.type is RegisterType.BIT):
            raise ValueError(
                f"function {self.function} reads {'bits: type bit' if coil else 'registers'}"
                + ("" if coil else "; type bit is for function 1 (coils) or 2 (discrete inputs)")
            )
        if (coil or self.bit is not None) and self.kind != "status":
            raise ValueError(f"a coil, discrete input or bit field is kind status, not {self.kind}")
        if self.kind == "status" and not (coil or self.type in BIT_FIELD_TYPES):
            raise ValueError(f"a status field is a bit or an integer register, not {self.type.value}")
        if self.kind == "status" and (self.scale != 1.0 or self.scale_factor is not None):
            raise ValueError("a status field is not scaled")
        if self.invalid_when and self.kind in NOT_AGGREGATED:
            raise ValueError(f"invalid_when is for measured values, not {self.kind} fields")

    @property
    def poll_group(self) -> str:
        """The field's poll group (default: ``fast`` for gauges, ``slow`` otherwise)."""
        return self.group or DEFAULT_GROUP[self.kind]

    def span(self, unit: int, key: str | None = None) -> RegisterSpan:
        """What request planning needs to read this field from device ``unit``."""
        return RegisterSpan(key or self.name, unit, self.function, self.address, self.registers)


class SunSpecPoint(BaseModel):
    """A SunSpec point that counts as a quantity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantity: str = Field(pattern=QUANTITY_PATTERN)
    kind: Literal["counter", "gauge"] = "gauge"
    group: str | None = Field(default=None, pattern=QUANTITY_PATTERN)


class SunSpecMapping(BaseModel):
    """How a discovered SunSpec chain becomes quantities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bases: tuple[int, ...] = (40000, 0, 50000)
    models: tuple[int, ...] = (1, 101, 102, 103, 111, 112, 113, 201, 202, 203, 204)
    points: dict[str, dict[str, SunSpecPoint]] = Field(
        default_factory=dict, description="model id (as text) -> point name -> quantity"
    )


class Profile(BaseModel):
    """A device register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    source: str = Field(min_length=1, description="where the addresses come from")
    unconfirmed: tuple[str, ...] = Field(
        default=(), description="what could not be confirmed from the sources (said plainly, not guessed)"
    )
    discovery: Literal["static", "sunspec"] = "static"
    max_gap: int = Field(default=0, ge=0, le=124, description="registers a request may skip")
    default_unit_id: int | None = Field(default=None, ge=0, le=255)
    fields: tuple[RegisterField, ...] = ()
    sunspec: SunSpecMapping | None = None

    @model_validator(mode="after")
    def _check_profile(self) -> Profile:
        problems = check_fields(self.fields)
        if self.discovery == "sunspec" and self.sunspec is None:
            problems.append("a sunspec profile needs a sunspec section")
        if self.discovery == "static" and not self.fields:
            problems.append("a static profile needs fields")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def field(self, name: str) -> RegisterField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def quantities(self) -> dict[str, RegisterField]:
        """Fields that measure a quantity, by quantity."""
        return {f.quantity: f for f in self.fields if f.quantity}


def check_fields(fields: Iterable[RegisterField]) -> list[str]:
    """Cross-field problems: duplicate names/quantities, dangling scale-factor references."""
    problems: list[str] = []
    by_name: dict[str, RegisterField] = {}
    quantities: set[str] = set()
    for f in fields:
        if f.name in by_name:
            problems.append(f"field name {f.name!r} is used twice")
        by_name[f.name] = f
        if f.quantity and f.quantity in quantities:
            problems.append(f"quantity {f.quantity!r} is measured by two fields")
        quantities.add(f.quantity or "")
    for f in by_name.values():
        if f.scale_factor is None:
            continue
        ref = by_name.get(f.scale_factor)
        if ref is None:
            hint = suggest(f.scale_factor, list(by_name))
            problems.append(
                f"field {f.name!r}: scale_factor {f.scale_factor!r} is not a field"
                + (f" ({hint}?)" if hint else "")
            )
        elif ref.type is not RegisterType.SUNSSF:
            problems.append(f"field {f.name!r}: scale_factor {f.scale_factor!r} is not a sunssf field")
    for f in by_name.values():
        problems += _flag_problems(f, by_name)
    return problems


def _flag_problems(f: RegisterField, by_name: Mapping[str, RegisterField]) -> list[str]:
    out = []
    for name in f.invalid_when:
        ref = by_name.get(name)
        if ref is None:
            hint = suggest(name, list(by_name))
            suffix = f" ({hint}?)" if hint else ""
            out.append(f"field {f.name!r}: invalid_when {name!r} is not a field{suffix}")
        elif ref.kind != "status":
            out.append(f"field {f.name!r}: invalid_when {name!r} is not a status field (kind {ref.kind})")
    return out


def parse_profile(data: object, file: str) -> Profile:
    """Validate already-parsed profile data. Raises :class:`ProfileError` listing every issue."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise _profile_error(file, issues_from(exc, Profile)) from exc


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file; the profile name must match the file name."""
    data, issues = read_yaml(path)
    if issues:
        raise _profile_error(path.name, issues)
    profile = parse_profile(data, path.name)
    if profile.name != path.stem:
        raise _profile_error(path.name, [Issue(("name",), f"{profile.name!r} must match the file name")])
    return profile


def load_profiles(directory: Path = PROFILES_DIR) -> dict[str, Profile]:
    """Every ``*.yaml`` profile in ``directory``, by name (sorted, deterministic)."""
    return {p.stem: load_profile(p) for p in sorted(directory.glob("*.yaml"))}


def get_profile(profiles: Mapping[str, Profile], name: str) -> Profile:
    """A profile by name; :class:`UnknownProfile` with a suggestion otherwise."""
    try:
        return profiles[name]
    except KeyError:
        hint = suggest(name, list(profiles))
        extra = f" ({hint}?)" if hint else f"; known: {', '.join(sorted(profiles))}"
        raise UnknownProfile(f"no profile {name!r}{extra}") from None


def _profile_error(file: str, issues: list[Issue]) -> ProfileError:
    return ProfileError("\n".join(i.render(file) for i in issues))


def select_fields(fields: Iterable[RegisterField], groups: Iterable[str]) -> list[RegisterField]:
    """The fields of the given poll groups plus the scale-factor and ``invalid_when`` fields
    they need, so a field, its ``sunssf`` and its flags are read in the same cycle. Keeps the
    input order."""
    all_fields = list(fields)
    wanted = set(groups)
    chosen = {f.name for f in all_fields if f.poll_group in wanted}
    chosen |= {f.scale_factor for f in all_fields if f.name in chosen and f.scale_factor}
    chosen |= {flag for f in all_fields if f.name in chosen for flag in f.invalid_when}
    return [f for f in all_fields if f.name in chosen]
