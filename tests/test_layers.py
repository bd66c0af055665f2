"""The house's layers, read from the source with ``ast``: imports run downwards only, no circles.

Layers (docs/architecture.md)::

    puhui (application: cli, demo, sitegen)          testbed (private servers: tests, demo)
      gateway                  aggregator
      drivers     firmware_sim      |
      evidence ---------------------+
      common (clock, asyncio and MQTT helpers, backoff, closed YAML models)

Within drivers/, the contract (``drivers.contract``, ``drivers.breaker``, ``drivers.errors``)
imports no protocol folder, and no protocol folder imports another (``modbus_tcp`` and
``modbus_rtu`` share ``drivers.modbus``). The gateway's generic modules import the driver
contract only. Every import counts, ``TYPE_CHECKING`` and function-level ones included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "evidence", "drivers", "firmware_sim", "gateway", "aggregator", "testbed", "puhui")

# package -> the packages it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "common": frozenset(),
    "evidence": frozenset({"common"}),
    "drivers": frozenset({"common", "evidence"}),
    "firmware_sim": frozenset({"common", "evidence"}),
    "gateway": frozenset({"common", "evidence", "drivers"}),
    "aggregator": frozenset({"common", "evidence"}),
    "testbed": frozenset({"common"}),
    "puhui": frozenset(PACKAGES) - {"puhui"},
}
DRIVER_CONTRACT = ("drivers.contract", "drivers.breaker", "drivers.errors")
DRIVER_FOLDERS = {  # protocol folder -> the other driver folders it may use
    "drivers.modbus": frozenset(),
    "drivers.modbus_tcp": frozenset({"drivers.modbus"}),
    "drivers.modbus_rtu": frozenset({"drivers.modbus", "drivers.modbus_tcp", "drivers.line"}),
    "drivers.mqtt": frozenset(),
    "drivers.line": frozenset(),  # the shared line: below every line protocol
    "drivers.dlt645": frozenset({"drivers.line"}),
    "drivers.cjt188": frozenset({"drivers.line"}),
    "drivers.mbus": frozenset({"drivers.line"}),
    "drivers.ocpp": frozenset(),  # OCPP tap and local controller, OCMF
}
# The gateway's generic machinery: it works for any driver, so it sees the contract only.
GENERIC_GATEWAY = (
    "gateway.poller",
    "gateway.intervals",
    "gateway.sealer",
    "gateway.pipeline",
    "gateway.uplink",
    "gateway.store",
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (a submodule where ``from pkg import sub`` names one)
    path: Path  # relative to the tree's root
    line: int

    def where(self) -> str:
        return f"{self.path.as_posix()}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> Iterator[Import]:
    """Every import of one of ``packages`` from a module of theirs."""
    known = modules(root, packages)
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, name, is_package, known):
                if target.split(".")[0] in packages and target != name:
                    yield Import(name, target, path.relative_to(root), node.lineno)


def _targets(node: ast.AST, name: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    # ``from pkg import sub`` imports the submodule pkg.sub; ``from mod import name`` the module
    subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
    return subs if subs and len(subs) == len(node.names) else [module, *subs]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(found: list[Import]) -> list[str]:
    """Each import that runs against the layers, as ``path:line: what and why``."""
    out: list[str] = []
    for imp in found:
        src, dst = imp.module.split(".")[0], imp.target.split(".")[0]
        if src != dst and dst not in ALLOWED.get(src, frozenset()):
            out.append(f"{imp.where()}: {imp.module} imports {imp.target} ({src} may not import {dst})")
        elif src == dst == "drivers":
            out.extend(_driver_rule(imp))
        elif (
            imp.module in GENERIC_GATEWAY and dst == "drivers" and not imp.target.startswith(DRIVER_CONTRACT)
        ):
            out.append(
                f"{imp.where()}: {imp.module} imports {imp.target} "
                "(the gateway's generic modules use the driver contract only)"
            )
    return out


def _driver_rule(imp: Import) -> list[str]:
    if imp.module.startswith(DRIVER_CONTRACT) and not imp.target.startswith(DRIVER_CONTRACT):
        return [f"{imp.where()}: {imp.module} imports {imp.target} (the driver contract imports no driver)"]
    for folder, may in DRIVER_FOLDERS.items():
        if not _within(imp.module, folder):
            continue
        for other in DRIVER_FOLDERS:
            if other != folder and other not in may and _within(imp.target, other):
                return [f"{imp.where()}: {imp.module} imports {imp.target} ({folder} may not use {other})"]
    return []


def cycles(found: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in found:
        graph.setdefault(imp.module, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _describe(component: list[str], found: list[Import]) -> str:
    members = set(component)
    lines = [
        f"{i.where()}: {i.module} -> {i.target}" for i in found if i.module in members and i.target in members
    ]
    return "circle " + " <-> ".join(component) + "\n    " + "\n    ".join(lines)


# -- the house ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def house() -> list[Import]:
    return list(imports(ROOT))


def test_imports_run_downwards_only(house: list[Import]) -> None:
    bad = violations(house)
    assert not bad, "imports against the layers:\n  " + "\n  ".join(bad)


def test_no_import_circles(house: list[Import]) -> None:
    found = cycles(house)
    assert not found, "\n".join(_describe(c, house) for c in found)


def test_the_checker_sees_the_house(house: list[Import]) -> None:
    """The scan is not vacuous: it sees the imports everyone knows are there."""
    pairs = {(i.module, i.target) for i in house}
    assert ("gateway.poller", "drivers.contract") in pairs
    assert ("aggregator.ingest", "common.clock") in pairs
    assert ("puhui.demo.run", "puhui.demo.report") in pairs
    assert len(house) > 300


# -- the checker itself, on small made-up trees ---------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_an_upward_import_is_named_with_its_line(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "common/__init__.py": "from common import clock\n",
            "common/clock.py": "import os\n\nfrom gateway.sealer import Sealer\n",
            "gateway/__init__.py": "",
            "gateway/sealer.py": "Sealer = 1\n",
        },
    )
    found = list(imports(root))
    [bad] = violations(found)
    assert bad.startswith("common/clock.py:3: common.clock imports gateway.sealer")
    assert ("common", "common.clock") in {(i.module, i.target) for i in found}
    assert [i.where() for i in found if i.module == "common"] == ["common/__init__.py:1"]


def test_a_lazy_import_in_a_function_counts(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "aggregator/__init__.py": "",
            "aggregator/x.py": "def f():\n    from drivers.contract import Sample\n    return Sample\n",
            "drivers/__init__.py": "",
            "drivers/contract.py": "Sample = 1\n",
        },
    )
    [bad] = violations(list(imports(root)))
    assert "aggregator/x.py:2" in bad and "aggregator may not import drivers" in bad


def test_generic_gateway_modules_see_only_the_driver_contract(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "gateway/__init__.py": "",
            "gateway/poller.py": "from drivers.contract import Sample\nfrom drivers.modbus.source import X\n",
            "drivers/__init__.py": "",
            "drivers/contract.py": "",
            "drivers/modbus/__init__.py": "",
            "drivers/modbus/source.py": "",
            "drivers/mqtt/__init__.py": "",
            "drivers/mqtt/driver.py": "from drivers.modbus import source\n",
        },
    )
    bad = violations(list(imports(root)))
    assert len(bad) == 2
    assert any(b.startswith("gateway/poller.py:2:") for b in bad)
    assert any(b.startswith("drivers/mqtt/driver.py:1:") and "drivers.mqtt may not use" in b for b in bad)


def test_a_circle_is_found_through_from_package_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "aggregator/__init__.py": "",
            "aggregator/m/__init__.py": "",
            "aggregator/m/engine.py": "from aggregator.m import series\n",
            "aggregator/m/series.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from .engine import Period\n",
            "aggregator/m/other.py": "from aggregator.m.series import x\n",
        },
    )
    found = list(imports(root))
    assert cycles(found) == [["aggregator.m.engine", "aggregator.m.series"]]
    assert "aggregator/m/series.py:3" in _describe(cycles(found)[0], found)
