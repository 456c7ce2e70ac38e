"""The import structure of the toolchain and deploy packages: no module imports itself back
through a chain of others, and the task-agnostic stages import no task module.

Every import statement counts, at module level and inside functions (a lazy import is still a
dependency; it only hides a circle until the day someone hoists it), except those under
``if TYPE_CHECKING:``, which never run. ``from toolchain.x import y`` is an edge to
``toolchain.x``, or to ``toolchain.x.y`` when that is a module of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toolchain", "deploy")
# The stages that work on any task: they take what a task provides (scorer, label columns,
# batches) from their caller and must not reach for a task module themselves.
TASK_AGNOSTIC = ("toolchain.finetune", "toolchain.sensitivity", "toolchain.plan", "toolchain.retrain_free")
TASKS_PACKAGE = "toolchain.tasks"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Yield every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(node: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Return the package modules an import statement of ``module`` loads."""
    def ours(name: str) -> bool:
        return name.split(".")[0] in PACKAGES

    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if ours(alias.name):
                out.add(alias.name)
        return out
    assert isinstance(node, ast.ImportFrom)
    if node.level:  # relative import
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not ours(target):
        return out
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.add(sub if sub in known else target)
    return out


def import_graph() -> dict[str, set[str]]:
    """Return module -> the package modules it imports (anywhere but under TYPE_CHECKING)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _import_nodes(tree):
            edges |= _resolve(node, name, path.name == "__init__.py", known)
        graph[name] = {e for e in edges if e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import circle as [a, b, ..., a], or None when the graph has none."""
    white, grey, black = 0, 1, 2
    color = {n: white for n in graph}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in color:
                continue  # a module outside the walked files (e.g. a name that does not exist)
            if color[nxt] == grey:
                return stack[stack.index(nxt):] + [nxt]
            if color[nxt] == white:
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


def test_the_walk_sees_both_packages_and_lazy_imports():
    graph = import_graph()
    assert "toolchain.pipeline" in graph and "deploy.predict" in graph and "toolchain.cli.run" in graph
    # the pipeline's stages import finetune only inside functions: the walk must still see it
    assert "toolchain.finetune" in graph["toolchain.pipeline.stages"]


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_type_checking_imports_are_ignored():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import toolchain.x\n"
                     "def f():\n    from toolchain import y\n")
    names = {m for n in _import_nodes(tree) for m in _resolve(n, "toolchain.z", False, {"toolchain.y"})}
    assert names == {"toolchain.y"}


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", TASK_AGNOSTIC)
def test_task_agnostic_stages_import_no_task_module(module):
    graph = import_graph()
    assert module in graph, f"{module} is gone; update TASK_AGNOSTIC"
    bad = sorted(m for m in graph[module] if m == TASKS_PACKAGE or m.startswith(TASKS_PACKAGE + "."))
    assert not bad, f"{module} imports {', '.join(bad)}; pass what it needs from the caller instead"
