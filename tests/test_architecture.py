"""The floor plan holds: named layers with no upward imports, a library that never prints, and
no import circles.

The layers and the faces' monopoly on ``rich`` and ``tqdm`` are import-linter contracts in
pyproject.toml; this file runs them. The rest is read straight from the source with ``ast``
(nothing here imports clipsearch), and counts imports inside functions too: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "clipsearch"
FACES = ("cli", "server")
PROGRESS_LIBRARIES = ("rich", "tqdm")


# -- reading the source ----------------------------------------------------------------------


def module_files() -> dict[str, Path]:
    """Every module of clipsearch by dotted name (a package by its own name, for its __init__)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``: imports only a type checker runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` that can run: all but the body of ``if TYPE_CHECKING:`` blocks
    (their ``else`` branch runs, so it is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if is_type_checking_block(node):
            stack.extend(reversed(node.orelse))  # type: ignore[attr-defined]
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def imported_names(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement in ``module`` reaches, relative imports resolved:
    ``from . import a`` in ``clipsearch.x.y`` reaches ``clipsearch.x.a``: the submodule when
    there is one, else the name ``a`` of the package ``clipsearch.x`` (see :func:`owning_module`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of clipsearch (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, within clipsearch."""
    modules = module_files()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in runtime_nodes(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in imported_names(name, is_package, node):
                if not target.startswith("clipsearch"):
                    continue
                owner = owning_module(target, modules)
                if owner is not None and owner != name:
                    graph[name].setdefault(owner, node.lineno)
    return graph


# -- (a) the import-linter contracts ------------------------------------------------------------


def test_import_contracts_hold() -> None:
    """The layers and the forbidden-imports contracts of pyproject.toml, on this checkout's code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            "--no-cache",
            "--no-logo",
            str(ROOT / "pyproject.toml"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"import-linter reports broken contracts:\n{result.stdout}{result.stderr}"


def test_the_forbidden_contract_names_every_library_package() -> None:
    """rich and tqdm are forbidden to every package but the faces: a new package must join the list."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    (forbidden,) = [c for c in contracts if c["type"] == "forbidden" and set(c["forbidden_modules"]) == set(PROGRESS_LIBRARIES)]
    children = {name for name in module_files() if name.count(".") == 1}
    library = children - {f"clipsearch.{face}" for face in FACES} - {"clipsearch.__main__"}
    assert set(forbidden["source_modules"]) == library


# -- (b) the library never prints ---------------------------------------------------------------


def test_only_the_faces_print_or_draw_progress() -> None:
    """Below cli/ and server/: no print() call and no rich or tqdm import, anywhere in a module
    (inside functions too). Progress leaves the library as events (clipsearch.events)."""
    found = []
    for name, path in module_files().items():
        parts = name.split(".")
        if len(parts) > 1 and parts[1] in FACES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{where}:{node.lineno}: print(...)")
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}:{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in PROGRESS_LIBRARIES
                ]
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in PROGRESS_LIBRARIES:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
    assert not found, "the library prints or draws progress itself:\n" + "\n".join(found)


# -- (c) no import circles ----------------------------------------------------------------------


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for start in sorted(graph):
        if start in index:
            continue
        # iterative depth-first search: (node, iterator over its successors)
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def one_circle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest circle through the first module of ``component``, as ``a -> b (line) -> ... -> a``."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        next_frontier = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ in members and succ not in previous:
                    previous[succ] = node
                    next_frontier.append(succ)
        frontier = next_frontier
    path = [start]
    node = previous[start]
    while node != start:
        path.append(node)
        node = previous[node]
    path.append(start)
    path.reverse()
    return [f"{a} -> {b} (line {graph[a][b]})" for a, b in zip(path, path[1:])]


def test_no_import_circles() -> None:
    """No two modules import each other, directly or through others (lazy imports count;
    ``if TYPE_CHECKING:`` imports do not, as they never run)."""
    graph = import_graph()
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    report = [f"{len(c)} modules in a circle: {', '.join(c)}\n    " + "\n    ".join(one_circle(graph, c)) for c in circles]
    assert not circles, "import circles:\n" + "\n".join(report)


def test_the_circle_finder_finds_circles() -> None:
    """The checker itself: a circle through three modules is found and shown; a chain is not."""
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]
    assert one_circle(graph, ["a", "b", "c"]) == ["a -> b (line 1)", "b -> c (line 2)", "c -> a (line 3)"]
    assert all(len(c) == 1 for c in strongly_connected({"a": {"b": 1}, "b": {}}))


def test_relative_imports_resolve_and_type_checking_imports_are_skipped() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from . import schema\n"
        "from .. import errors\n"
        "if TYPE_CHECKING:\n"
        "    from clipsearch.cli import main\n"
        "def f():\n"
        "    from clipsearch.models.base import Encoder\n"
    )
    names = [
        name
        for node in runtime_nodes(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in imported_names("clipsearch.store.lance_store", False, node)
    ]
    assert "clipsearch.store.schema" in names and "clipsearch.errors" in names
    assert "clipsearch.models.base.Encoder" in names  # owning_module maps it to clipsearch.models.base
    assert not any(name.startswith("clipsearch.cli") for name in names)
