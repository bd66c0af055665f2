"""Every driver folder has a README with a sample config; the shared Modbus folder has a
README saying what lives there. Each sample config (the one ```yaml block of a driver's
README) is loaded through the gateway's site config model, as an installer's site.yaml is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import drivers
from drivers.modbus.profiles import load_profiles
from drivers.registry import CONNECTIONS
from gateway.config import parse_site
from gateway.errors import ConfigError

DRIVERS = Path(drivers.__file__).resolve().parent
REPO = DRIVERS.parent
FOLDERS = sorted(p for p in DRIVERS.iterdir() if (p / "__init__.py").is_file())


def sample_config(readme: Path) -> Any:
    """The one ```yaml block of ``readme``, parsed."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", readme.read_text(encoding="utf-8"), re.S | re.M)
    if len(blocks) != 1:
        pytest.fail(f"{readme.relative_to(REPO)}: expected one ```yaml sample config, found {len(blocks)}")
    return yaml.safe_load(blocks[0])


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_driver_folder_has_a_readme(folder: Path) -> None:
    assert (folder / "README.md").is_file(), f"{folder.relative_to(REPO)} has no README.md"


@pytest.mark.parametrize("driver", sorted(CONNECTIONS))
def test_readme_sample_config_is_a_valid_site_config(driver: str) -> None:
    readme = DRIVERS / driver / "README.md"
    sample = sample_config(readme)
    assert isinstance(sample, dict) and "gateway" not in sample, "a site.yaml fragment: meters, buses"
    site_data = {"gateway": {"id": "readme-gw", "site": "readme"}, **sample}
    try:
        site = parse_site(site_data, str(readme.relative_to(REPO)), load_profiles())
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    assert {m.driver for m in site.meters} == {driver}, "the sample shows this driver's meters"
