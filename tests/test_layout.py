"""The house's shape, read from the source: imports run one way and in no circle.

Every import counts, lazy ones inside functions and TYPE_CHECKING ones included: a circle hidden in
a function is still a circle to a reader."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "data_prep", "jobs")
CLUSTER_SIDE = ("jobs.launch.entry", "jobs.launch.trainer", "jobs.launch.preemption", "jobs.launch.credentials",
                "jobs.launch.ray_internals")
LAPTOP_SIDE = ("jobs.cli", "jobs.launch.submit")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (a `from package import name` counts the submodule when
    `name` is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in modules} - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {name: imports_of(path, modules) for name, path in modules.items()}
    # importing a package's module runs the package's __init__ first, but that is no edge of ours
    return {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def edges_from(graph, sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    def under(name, roots):
        return any(name == r or name.startswith(r + ".") for r in roots)
    return sorted(f"{a} -> {b}" for a, deps in graph.items() if under(a, sources)
                  for b in deps if under(b, targets))


def test_the_project_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_imports_run_jobs_to_data_prep_to_pipeline():
    graph = import_graph()
    assert edges_from(graph, ("pipeline",), ("data_prep", "jobs")) == []
    assert edges_from(graph, ("data_prep",), ("jobs",)) == []


def test_cluster_side_code_never_imports_laptop_side_code():
    assert edges_from(import_graph(), CLUSTER_SIDE, LAPTOP_SIDE) == []


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_package_says_what_it_owns():
    for init in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
