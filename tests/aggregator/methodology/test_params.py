"""Parameter sets: every shipped file loads, every factor has a source, errors name paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aggregator.methodology import ParameterSetError, find_parameter_set, load_parameter_set
from aggregator.methodology.params import PARAMS_DIR, Factor, resolve_grid_factor

SHIPPED = sorted(PARAMS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_sets_load_with_sources(path: Path) -> None:
    loaded = load_parameter_set(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # 1.0.0 keeps its original file name (its bytes are signed); later versions are ID-VERSION.yaml
    assert path.stem == (loaded.id if loaded.version == "1.0.0" else f"{loaded.id}-{loaded.version}")
    for name, value in loaded.params.method:
        if isinstance(value, Factor):
            assert value.source and value.confidence in ("documented", "secondary", "assumed"), name
    assert find_parameter_set(loaded.id, loaded.version, loaded.sha256).path == path


def test_every_version_stays_beside_the_others() -> None:
    versions = sorted((load_parameter_set(p).id, load_parameter_set(p).version) for p in SHIPPED)
    assert len(set(versions)) == len(versions)  # no two files claim one id and version
    ids = {i for i, _ in versions}
    assert {(i, v) for i in ids for v in ("1.0.0", "2.0.0")} <= set(versions)


def test_grid_series_match_the_reference_in_every_file() -> None:
    by_name: dict[str, set[str]] = {}
    for p in SHIPPED:
        for name, series in load_parameter_set(p).params.grid_series.items():
            by_name.setdefault(name.removesuffix("_superseded"), set()).add(
                repr(series.model_dump(exclude={"source", "note"}))
            )
    assert {n: len(v) for n, v in by_name.items()} == dict.fromkeys(by_name, 1)  # same values everywhere
    params = load_parameter_set(PARAMS_DIR / "pv-guangdong-2019cm.yaml").params
    assert resolve_grid_factor(params, None).value == pytest.approx(0.75 * 0.8042 + 0.25 * 0.2135)
    heat = load_parameter_set(PARAMS_DIR / "clean-heating-hebei.yaml").params
    assert resolve_grid_factor(heat, "beijing").value == 0.5554  # the meter's region wins
    with pytest.raises(ValueError, match="region 'mars' is not in series"):
        resolve_grid_factor(heat, "mars")


def test_errors_name_file_and_path(tmp_path: Path) -> None:
    text = (PARAMS_DIR / "ev-charging-jjj.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace("fuel_consumption:", "fuel_consumptoin:")
        .replace("unit: kWh/km", "unit: kWh/100km")
        .replace("gap: exclude", "gap: credit")
    )
    with pytest.raises(ParameterSetError) as err:
        load_parameter_set(bad)
    msg = str(err.value)
    assert f"{bad}: method.fuel_consumptoin: unknown key" in msg
    assert f"{bad}: method.fuel_consumption: required, missing" in msg
    assert f"{bad}: data_policy.flags: ['gap'] must be 'exclude'" in msg


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("id: [")
    with pytest.raises(ParameterSetError, match=r"x\.yaml: (line \d+, column \d+: )?not valid YAML"):
        load_parameter_set(tmp_path / "x.yaml")
    with pytest.raises(ParameterSetError, match="cannot read"):
        load_parameter_set(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"id: " + b"[" * 5000, "nested deeper than 50 levels"),  # was a RecursionError traceback
        (b"id: [\xff\xfe\n", "not UTF-8 text"),
        (b"a: &a [*a, *a]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b]\n", ""),
    ],
    ids=["deep", "not-utf8", "aliases"],
)
def test_a_hostile_parameter_file_is_a_clear_error(tmp_path: Path, content: bytes, expected: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ParameterSetError) as err:
        load_parameter_set(bad)
    assert str(err.value).startswith(f"{bad}: ") and expected in str(err.value)
