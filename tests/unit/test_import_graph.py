"""The engine's modules point strictly down: no import cycle, no function-local import.

The graph is read from the source with ``ast`` (no import runs): module-level imports
and imports under ``if TYPE_CHECKING:`` count alike, since a cycle hidden behind
TYPE_CHECKING is still a cycle a reader has to untangle. Then every engine module is
imported on its own, in a fresh interpreter, to prove that no import order is needed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shardflow"
ENGINE = "shardflow.engine"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run at import time or named for the type checker: the module body,
    ``if TYPE_CHECKING:`` blocks, and ``try:`` blocks at module level."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            # ``if TYPE_CHECKING:`` and any other module-level condition alike.
            pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body)
            for handler in node.handlers:
                pending.extend(handler.body)
            pending.extend(node.orelse)
            pending.extend(node.finalbody)


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> set[str]:
    """The shardflow modules an import statement depends on."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")
            if not is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # ``from pkg import mod`` names a submodule; ``from mod import name`` the module.
        names = [
            f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in known else prefix
            for alias in node.names
        ]
    return {n for n in names if n in known}


def import_graph() -> dict[str, set[str]]:
    """Module -> the shardflow modules it imports (module level or TYPE_CHECKING)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _top_level_imports(tree):
            edges |= _targets(node, name, is_package, known)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path whose last module imports the first; else None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if color.get(nxt, black) == grey:
                return stack[stack.index(nxt) :]
            if color.get(nxt) == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = black
        return None

    for node in sorted(graph):
        if color[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def _engine_subgraph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between engine modules. A package's ``__init__`` re-exports its parts (it
    imports them all); a part importing a sibling is not an import of the package, so
    the package node is left out rather than closing a false cycle through it."""
    inside = {m for m in graph if m.startswith(ENGINE + ".")}
    return {m: {t for t in graph[m] if t in inside} for m in inside}


def test_cycle_finder_reports_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_reads_type_checking_imports() -> None:
    graph = import_graph()
    # A known edge, to prove the graph is not empty by mistake.
    assert "shardflow.engine.records" in graph["shardflow.engine.runner"]


def test_no_import_cycle_among_engine_modules() -> None:
    cycle = find_cycle(_engine_subgraph(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join([*cycle, cycle[0]])


def _local_imports() -> Iterator[str]:
    for name, path in _modules().items():
        if not name.startswith(ENGINE):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    mods = ["." if node.level else node.module or ""]
                else:
                    continue
                for mod in mods:
                    if mod == "." or mod == "shardflow" or mod.startswith("shardflow."):
                        rel = path.relative_to(ROOT)
                        yield f"{rel}:{node.lineno} in {func.name}(): imports {mod}"


def test_no_function_local_import_of_shardflow_in_the_engine() -> None:
    found = sorted(set(_local_imports()))
    assert not found, "function-local imports:\n" + "\n".join(found)


ENGINE_MODULES = sorted(m for m in _modules() if m == ENGINE or m.startswith(ENGINE + "."))


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_module_imports_alone(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    last = done.stderr.strip().splitlines()[-1:] or [""]
    assert done.returncode == 0, f"`python -c 'import {module}'` failed: {last[0]}"
