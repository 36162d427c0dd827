"""The import graph of cnnlab has no cycles, counting every import statement, also those inside
functions (a lazy import that dodges a cycle is still a cycle); the layer contracts are import-linter's
(pyproject.toml, `make lint`)."""

from __future__ import annotations

import ast
from pathlib import Path

import cnnlab

ROOT = Path(cnnlab.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the cnnlab modules it imports anywhere in its file (a child importing its own
    package is not an edge: Python runs the package first anyway)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = m.split(".")
                if node.level:
                    keep = len(base) - node.level + (1 if f.name == "__init__.py" else 0)
                    prefix = ".".join(base[:keep] + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_cnnlab_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "cnnlab.engine.trainer" in graph and "cnnlab.errors" in graph["cnnlab.engine.trainer"]
    assert cycles(graph) == []


def test_nothing_inside_cnnlab_imports_the_api() -> None:
    importers = {m for m, targets in import_graph().items() if "cnnlab.api" in targets}
    outside_cli = {m for m in importers if m != "cnnlab.cli" and not m.startswith("cnnlab.cli.")}
    assert outside_cli <= {"cnnlab.__main__"}
    assert "cnnlab.cli" in importers  # a control: the graph sees the import (cli.load_api)
