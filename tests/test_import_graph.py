"""The package's imports: no cycle anywhere in ``src/metalab``, and the layers point one way.

Every module under ``src/metalab`` is parsed with :mod:`ast` (nothing is imported), and
every ``import metalab...`` / ``from metalab... import`` / relative import becomes an edge
from the importing module to the imported module.

Which imports count: ALL of them, at module level and inside functions alike (only those
under ``if TYPE_CHECKING:`` are skipped, as they never run). A function-level import does
not fail at import time, but it is still a dependency of the design: the cycle issue 12
names (``datasets/registry.py`` importing the datasets, which imported ``registry.build``
back inside their functions) was made of function-level imports, and deferring an import is
the usual way a cycle or an upward dependency hides. So deferring an import is no excuse.

An edge goes to the module named by the import: ``from metalab.datasets import build`` is an
edge to the package index ``metalab.datasets`` (``build`` is not a module), ``from
metalab.train import distributed`` one to ``metalab.train.distributed`` (a module). The
parent packages Python initialises on the way are not edges (they would make every
submodule depend on its own index and every package a cycle, which is how Python works,
not a design fault).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "metalab"

# DESIGN.md: cli -> train -> algorithms -> functional/nn/combiners/rl -> tasks -> datasets,
# with the validators at the bottom. A module may import from its own layer or below.
LAYERS = {
    "metalab": 7,  # the package index: the public facade (``metalab.load_run``)
    "metalab.__main__": 7,
    "metalab.cli": 6,
    "metalab.train": 5,
    "metalab.algorithms": 4,
    "metalab.functional": 3,
    "metalab.nn": 3,
    "metalab.combiners": 3,
    "metalab.rl": 3,
    "metalab.tasks": 2,
    "metalab.datasets": 1,
    "metalab.validation": 0,
    "metalab.profiling": 0,
}

# Edges (importer, imported) that break the rules today, in code another change is
# rewriting: to be removed by the issue-12 refactor (the lead empties this list).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__.py``)."""
    found = {module_name(path): path for path in (SRC / PACKAGE).rglob("*.py")}
    assert found, f"no modules found under {SRC / PACKAGE}"
    return found


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def resolve(importer: str, level: int, module: str | None) -> str:
    """Absolute name of a (possibly relative) ``from`` target seen in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if is_package(importer) else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(name: str) -> set[str]:
    """The package's modules that module ``name`` imports (see the module docstring)."""
    tree = ast.parse(modules()[name].read_text(), filename=str(modules()[name]))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    targets: set[str] = set()
    for node in ast.walk(tree):
        if _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = resolve(name, node.level, node.module)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules() else source)
    return {_known(target) for target in targets if _known(target)} - {name}


def _known(target: str) -> str:
    """The longest prefix of ``target`` that is one of the package's modules ('' if none)."""
    parts = target.split(".")
    while parts and ".".join(parts) not in modules():
        parts.pop()
    return ".".join(parts)


@cache
def graph() -> dict[str, set[str]]:
    return {name: imported_modules(name) for name in sorted(modules())}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def layer(name: str) -> tuple[str, int]:
    """The layer prefix of ``name`` and its rank (higher depends on lower)."""
    parts = name.split(".")
    while ".".join(parts) not in LAYERS:
        parts.pop()
        assert parts, f"{name} is in no layer of LAYERS; add its package there"
    prefix = ".".join(parts)
    return prefix, LAYERS[prefix]


def without_known(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in targets if (a, b) not in KNOWN_VIOLATIONS}
            for a, targets in edges.items()}


def test_the_walker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    edges = graph()
    # function-level (cli/data.py imports the datasets inside its commands)
    assert "metalab.datasets.registry" in edges["metalab.cli.data"] or \
        "metalab.datasets" in edges["metalab.cli.data"]
    # relative ``from .base import`` inside the datasets package
    assert "metalab.datasets.base" in edges["metalab.datasets.digits"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(without_known(graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_dependencies_point_down_the_layers() -> None:
    upward = sorted(
        (a, b) for a, targets in without_known(graph()).items() for b in targets
        if layer(b)[1] > layer(a)[1]
    )
    assert not upward, "imports from a higher layer (DESIGN.md: cli -> train -> algorithms " \
        "-> functional/nn/combiners -> tasks -> datasets -> validation): " + ", ".join(
            f"{a} -> {b}" for a, b in upward)


def test_known_violations_are_still_real() -> None:
    """An entry fixed by the refactor must leave the list (so the list only shrinks)."""
    stale = sorted(edge for edge in KNOWN_VIOLATIONS if edge[1] not in graph().get(edge[0], ()))
    assert not stale, f"remove from KNOWN_VIOLATIONS, these imports are gone: {stale}"


@pytest.mark.parametrize("package", ["datasets", "tasks", "combiners", "nn"])
def test_no_module_imports_its_own_package_index(package: str) -> None:
    index = f"{PACKAGE}.{package}"
    offenders = sorted(name for name, targets in graph().items()
                       if name.startswith(index + ".") and index in targets)
    assert not offenders, f"{offenders} import their package index {index} back"


def test_datasets_never_call_back_into_the_registry() -> None:
    """Composite datasets build their bases directly (issue 12): only the package index
    imports the registry."""
    importers = sorted(name for name, targets in graph().items()
                       if name.startswith("metalab.datasets.")
                       and "metalab.datasets.registry" in targets)
    assert not importers, f"{importers} import the registry back"


def test_validation_is_the_bottom_layer() -> None:
    assert graph()["metalab.validation"] == set()
