"""The package's layout: one wing per stage, imports flowing one way (DESIGN.md, "Layout").

Walks every module's imports with `ast` (function bodies included, so a circle cannot hide in
a lazy import) and fails on an import circle, on a lower wing importing a higher one, on a
framework import outside the wings allowed to train, and on printing or exiting outside cli.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "shardfeed"

# Lower wings never import higher ones; wings of one rank (writing, feed) never import each other.
RANKS = {
    "errors": 0, "version": 0, "gcpause": 0,
    "urls": 1,
    "inputs": 2,
    "storage": 3,
    "writing": 4, "feed": 4,
    "bench": 5,
    "cli": 6, "__init__": 6, "torch": 6, "grain": 6,
}  # fmt: skip
# Public modules named after the framework they serve; they only re-export the feed's adapters.
ADAPTER_MODULES = ("shardfeed.torch", "shardfeed.grain")
# The feed trains; the benchmark, above it, times `model.fit` against the tutorial's generator.
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch", "grain")
FRAMEWORK_WINGS = ("feed", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(shardfeed modules, other top-level packages) that module `name` imports anywhere in it."""
    path = MODULES[name]
    package = name if is_package(path) else name.rpartition(".")[0]
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.startswith("shardfeed") else others).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            if not target.startswith("shardfeed"):
                others.add(target)
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}"
                ours.add(sub if sub in MODULES else target)
    return {m for m in ours if m != name}, {o.split(".")[0] for o in others}


GRAPH = {name: imports_of(name)[0] for name in MODULES}


def wing(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_known_wing():
    assert {wing(m) for m in MODULES} <= set(RANKS)
    assert {"inputs", "storage", "writing", "feed", "bench"} <= {wing(m) for m in MODULES}


def test_no_import_circles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif state.get(nxt) is None and nxt in GRAPH:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_wings_import_only_wings_below_them():
    bad = []
    for name, targets in GRAPH.items():
        for target in targets:
            here, there = wing(name), wing(target)
            if here == there or (here == "__init__" and name == "shardfeed"):
                continue
            if RANKS[there] >= RANKS[here]:
                bad.append(f"{name} -> {target}")
    assert bad == [], "imports against the flow: " + ", ".join(sorted(bad))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_frameworks_are_imported_only_where_training_happens(name):
    frameworks = imports_of(name)[1] & set(FRAMEWORKS)
    if wing(name) not in FRAMEWORK_WINGS:
        assert frameworks == set(), f"{name} imports {sorted(frameworks)}"


@pytest.mark.parametrize("name", ADAPTER_MODULES)
def test_adapter_modules_import_only_the_feed(name):
    ours, others = imports_of(name)
    assert ours and all(m.startswith("shardfeed.feed.") for m in ours), sorted(ours)
    assert others <= {"__future__"}, sorted(others)


def test_only_the_storage_backends_import_h5py_and_zarr():
    users = {name for name in MODULES if imports_of(name)[1] & {"h5py", "zarr", "numcodecs"}}
    assert users and all(name.startswith("shardfeed.storage.backends.") for name in users), sorted(users)


def _prints_or_exits(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in ("print", "exit", "quit")
    return isinstance(func, ast.Attribute) and func.attr == "exit" and getattr(func.value, "id", "") == "sys"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_cli_prints_or_exits(name):
    if name == "shardfeed.cli":
        return
    tree = ast.parse(MODULES[name].read_text())
    lines = [node.lineno for node in ast.walk(tree) if _prints_or_exits(node)]
    assert lines == [], f"{name} prints or exits at lines {lines}"


def test_the_walk_sees_imports_in_function_bodies():
    """The checks above are only as good as the graph: it must include lazy imports."""
    assert "shardfeed.writing.convert" in GRAPH["shardfeed.cli"]  # imported inside _cmd_convert
    assert "shardfeed.bench.fit" in GRAPH["shardfeed.bench.store"]  # imported for --fit only
