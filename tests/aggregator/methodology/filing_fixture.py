"""Filed parameter sets for the filing tests: a shipped set's bytes with another id or version
and a ``filing`` section appended.

Every filing number made here is FICTITIOUS (it says so in the number itself); authorities
and standard codes are real names, used only to make the precedence cases readable. The
shipped sets in config/methodologies/ stay unfiled: their 备案号 are not known.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from aggregator.methodology.params import PARAMS_DIR, LoadedParameterSet, parse_parameter_set

EV_V2 = PARAMS_DIR / "ev-charging-jjj-2.0.0.yaml"  # scope: beijing, hebei
EV_V1 = PARAMS_DIR / "ev-charging-jjj.yaml"  # no scope: any region

STANDARD = {
    "national": "GB/T 99999-2099 (fictitious national standard)",
    "local": "DB11/T 3043-2024",
    "group": "T/CSAE 235-2021",
    "international": "CDM AMS-III.C v15",
}
AUTHORITY = {"beijing": "北京市生态环境局", "hebei": "河北省生态环境厅"}


@dataclass(frozen=True)
class Spec:
    """One hand-made candidate: what a row of a golden table says about a set."""

    id: str
    tier: str = "none"
    status: str = "filed"
    regions: tuple[str, ...] = ()
    since: str | None = "2024-01-01"
    until: str | None = None
    version: str = "2.0.0"
    base: Path = EV_V2
    standard: str | None = None

    def filing(self) -> dict[str, object] | None:
        if self.status == "absent":
            return None
        out: dict[str, object] = {"status": self.status, "tier": self.tier, "source": "test fixture"}
        if self.tier != "none":
            out["standard"] = self.standard or STANDARD[self.tier]
        if self.status != "unfiled":
            out["authority"] = AUTHORITY.get(self.regions[0] if self.regions else "", "生态环境部")
        if self.status in ("filed", "withdrawn"):
            out["number"] = f"TEST-{self.id}-{self.version} (fictitious)"
        if self.regions:
            out["regions"] = list(self.regions)
        if self.since and self.status != "unfiled":
            out["valid_from"] = dt.date.fromisoformat(self.since)
        if self.until:
            out["valid_to"] = dt.date.fromisoformat(self.until)
        return out


def filed_bytes(spec: Spec) -> bytes:
    """The base file's bytes under the spec's id and version, with its filing appended."""
    text = spec.base.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^id: .*$", f"id: {spec.id}", text, count=1)
    text = re.sub(r"(?m)^version: .*$", f"version: {spec.version}", text, count=1)
    filing = spec.filing()
    if filing is not None:
        text += yaml.safe_dump({"filing": filing}, allow_unicode=True, sort_keys=False)
    return text.encode("utf-8")


def filed_set(spec: Spec) -> LoadedParameterSet:
    return parse_parameter_set(filed_bytes(spec), f"<{spec.id} {spec.version}>")


def write_sets(directory: Path, *specs: Spec) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = directory / f"{spec.id}-{spec.version}.yaml"
        path.write_bytes(filed_bytes(spec))
        paths.append(path)
    return paths
