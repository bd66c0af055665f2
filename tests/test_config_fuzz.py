"""Mutated site, fleet and aggregator configs: the loaders raise their config error, never
anything else, and every line of it names the file.

Issue 15 item 5: over 200 mutated site and 200 mutated fleet files, 11 + 11 ended in a
traceback: invalid UTF-8 (UnicodeDecodeError), a meter ``id`` given as a list (TypeError in
gateway/config.py), 5000-deep nesting (RecursionError), a 5000-digit integer (ValueError).
Mutations: on the bytes (flip a byte, delete or duplicate a line, splice in invalid UTF-8 or
hostile YAML text) and on the parsed tree (replace any value with a list, a map, a huge
number, deep nesting, a date that is no date, ...), run through the loaders in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.config import load_config
from aggregator.errors import ConfigError as AggregatorConfigError
from drivers.modbus.profiles import load_profiles
from firmware_sim.config import load_fleet
from firmware_sim.errors import FleetConfigError
from gateway.config import issue_paths, load_site
from gateway.errors import ConfigError as SiteConfigError

REPO = Path(__file__).resolve().parents[1]
SITES = sorted((REPO / "config" / "sites").glob("*.yaml"))
FLEETS = sorted((REPO / "config" / "fleets").glob("*.yaml"))
AGGREGATOR = b"""\
mqtt: {host: 127.0.0.1, port: 1883, client_id: agg-1, insecure: true}
store: {path: evidence.sqlite3}
influx: {url: http://127.0.0.1:8086, database: puhui, timeout_s: 10}
key_file: aggregator-key.pem
limits: {max_batch_bytes: 8000000, record_skew_s: 300, batch_ahead_s: 300}
ingest: {max_group_batches: 32, queue_batches: 16}
plausibility: {nameplate_factor: 1.2, min_coverage: 0.5, delta_tolerance_kwh: 1.0e-6}
"""
PROFILES = load_profiles()

Loader = Callable[[Path], object]
LOADERS: dict[str, tuple[Loader, type[Exception], list[bytes]]] = {
    "site": (lambda p: load_site(p, PROFILES), SiteConfigError, [f.read_bytes() for f in SITES]),
    "fleet": (load_fleet, FleetConfigError, [f.read_bytes() for f in FLEETS]),
    "aggregator": (load_config, AggregatorConfigError, [AGGREGATOR]),
}

HOSTILE_TEXT = [
    b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"[" * 5000, b"{a: " * 3000, b"9" * 5000, b"-1e999",
    b"&a [*a]", b"*nowhere", b"!!python/object/apply:os.system [true]", b"!!bool maybe",
    b"!!int 1.5", b"!!timestamp 2024", b"2024-13-45", b"\x00", b"\t", b": :", b"'", b'"\\ud800"',
    b"{{i}}", b"[1, {b: 2}]", b"~", b"<<: 5", b"? [1, 2]\n: 3", b"|\n", b"- - -",
]  # fmt: skip
HOSTILE_VALUES: list[Any] = [
    [1, 2], {"a": 1}, [], {}, None, True, -1, 0, 2**70, 10**300, "9" * 5000, 1e308, -1e308,
    float("inf"), float("nan"), "", "x" * 10_000, "{x}{}", "meter-{i[0]}", "2024-13-45", [[[[[[]]]]]],
    {"id": [1]}, {"driver": "mqtt"}, {"kind": "sdm630"}, "\U0001f600", "../../etc/passwd",
]  # fmt: skip


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# -- mutations ------------------------------------------------------------------------------


def _flip(data: bytes, at: int, byte: int) -> bytes:
    i = at % len(data)
    return data[:i] + bytes([byte]) + data[i + 1 :]


def _lines(data: bytes, at: int, op: str, text: bytes) -> bytes:
    lines = data.split(b"\n")
    i = at % len(lines)
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "value":  # replace what follows the line's first colon
        key, colon, _ = lines[i].partition(b":")
        lines[i] = key + b": " + text if colon else text
    else:  # indent
        lines[i] = b" " + lines[i]
    return b"\n".join(lines)


def _paths(
    node: Any, prefix: tuple[Any, ...] = (), seen: frozenset[int] = frozenset()
) -> list[tuple[Any, ...]]:
    """Every path into the tree; a node that contains itself (YAML ``&a [*a]``) is walked once."""
    out = [prefix]
    if id(node) in seen:
        return out
    inner = seen | {id(node)}
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key), inner)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index), inner)
    return out


def _replace(data: bytes, at: int, value: Any) -> bytes:
    """Replace one value of the parsed tree (data that an earlier mutation made unreadable
    YAML is left as it is: there is no tree to mutate)."""
    try:
        tree = yaml.safe_load(data)
    except Exception:  # noqa: BLE001 - whatever PyYAML raises, this mutation does not apply
        return data
    paths = _paths(tree)[1:]
    if not paths:
        return data
    path = paths[at % len(paths)]
    parent = tree
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    try:
        return yaml.safe_dump(tree, allow_unicode=True).encode()
    except (yaml.YAMLError, RecursionError):  # a tree that contains itself has no plain dump
        return data


_text_mutation = st.one_of(
    st.builds(lambda at, b: lambda d: _flip(d, at, b), st.integers(0, 10**6), st.integers(0, 255)),
    st.builds(
        lambda at, op, t: lambda d: _lines(d, at, op, t),
        st.integers(0, 10**4),
        st.sampled_from(["delete", "duplicate", "value", "indent"]),
        st.sampled_from(HOSTILE_TEXT),
    ),
)
_tree_mutation = st.builds(
    lambda at, v: lambda d: _replace(d, at, v),
    st.integers(0, 10**4),
    st.one_of(st.sampled_from(HOSTILE_VALUES), st.integers(40, 80).map(_deep)),
)


def _check(kind: str, source: int, mutations: list[Callable[[bytes], bytes]], tmp_path: Path) -> None:
    load, error, sources = LOADERS[kind]
    data = sources[source % len(sources)]
    for mutate in mutations:
        data = mutate(data)
    path = tmp_path / f"mutated-{kind}.yaml"
    path.write_bytes(data)
    try:
        load(path)
    except error as exc:  # anything else fails the test with its traceback
        lines = str(exc).splitlines()
        assert lines, exc
        for line in lines:
            named = next((f for f in (str(path), path.name) if line.startswith(f + ": ")), None)
            assert named is not None and line[len(named) + 2 :].strip(), line


@pytest.mark.parametrize("kind", list(LOADERS))
@given(
    source=st.integers(0, 10),
    mutations=st.lists(st.one_of(_text_mutation, _tree_mutation), min_size=1, max_size=3),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_configs_give_only_the_config_error(
    kind: str, source: int, mutations: list[Callable[[bytes], bytes]], tmp_path: Path
) -> None:
    _check(kind, source, mutations, tmp_path)


@pytest.mark.parametrize("kind", list(LOADERS))
@given(source=st.integers(0, 10), mutation=_tree_mutation)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_configs_with_one_value_replaced_give_only_the_config_error(
    kind: str, source: int, mutation: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    _check(kind, source, [mutation], tmp_path)


# -- the faults the outside tester found, one by one -------------------------------------------


def _site_text() -> str:
    return (REPO / "config" / "sites" / "inline-registers.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_site_text().replace("boiler-1", "b\udcc3oiler-1"), "line 7, column 10: not UTF-8 text (byte 0xc3)"),
        (_site_text().replace("id: boiler-1", "id: [b, 1]"), "meters[0].id: Input should be a valid string"),
        (_site_text().replace("unit_id: 3", "unit_id: " + "[" * 5000), "nested deeper than 50 levels"),
        (_site_text().replace("unit_id: 3", "unit_id: " + "9" * 5000), "an integer of 5000 characters"),
        (_site_text().replace("max_gap: 16", "max_gap: 2024-13-45"), "'2024-13-45' is not a valid timestamp"),
    ],
    ids=["utf8", "id-list", "nesting", "long-int", "bad-date"],
)
def test_found_faults_name_the_file_and_where(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(SiteConfigError) as caught:
        load_site(path, PROFILES)
    assert str(caught.value).startswith("site.yaml: ") and expected in str(caught.value)


def test_a_meter_id_given_as_a_list_is_a_field_error(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(_site_text().replace("id: boiler-1", "id: [b, 1]").replace("id: boiler-2", "id: [x]"))
    with pytest.raises(SiteConfigError) as caught:
        load_site(path, PROFILES)
    assert issue_paths(caught.value) == [("meters", 0, "id"), ("meters", 1, "id")]


def test_a_fleet_name_template_that_cannot_expand_is_a_field_error(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    text = (REPO / "config" / "fleets" / "load-200.yaml").read_text()
    path.write_text(text.replace("sdm630-{i:03d}", "sdm630-{i:03d}{x}"))
    with pytest.raises(FleetConfigError) as caught:
        load_fleet(path)
    assert "sites[0].devices[0]: name 'sdm630-{i:03d}{x}' is not a template" in str(caught.value)
