"""The import graph of ``harness``: no circles, and no import that climbs back up the layers.

Built from the source (imports inside functions included, ``if TYPE_CHECKING:`` blocks left
out because they never run), so a circle hidden in a deferred import is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "harness"

LAYERS: list[tuple[str, ...]] = [
    (
        "harness.errors",
        "harness.paths",
        "harness.adapter_names",
        "harness.optimizers",
        "harness.modules",
    ),
    ("harness.quant", "harness.data", "harness.measure", "harness.stats"),
    ("harness.schemes", "harness.models", "harness.workloads.settings"),
    ("harness.config", "harness.memory_model", "harness.memory_sim", "harness.memory_validation"),
    (
        "harness.adapters",
        "harness.workloads",
        "harness.results",
        "harness.results_dir",
        "harness.summary",
        "harness.budget",
        "harness.projection",
    ),
    ("harness.runner",),
    ("harness.report",),
    ("harness.commands", "harness.cli", "harness.__main__", "harness"),
]
"""Lowest first. A module may import from its own layer or any layer below, never above.
The longest matching prefix decides a module's layer."""


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that can run: everything outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> harness modules it imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def layer_of(module: str) -> int:
    best, layer = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            hit = module == prefix or module.startswith(prefix + ".")
            if hit and len(prefix) > best:
                best, layer = len(prefix), i
    return layer


def test_the_graph_sees_deferred_imports() -> None:
    graph = import_graph()
    assert "harness.schemes" in graph["harness.runner.cell"]  # imported inside run_cell
    assert "harness.quant.linear" not in graph["harness.quant.triton_linear"]  # TYPE_CHECKING


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer() -> None:
    assert [m for m in module_names() if layer_of(m) < 0] == []


def test_no_import_climbs_up_the_layers() -> None:
    graph = import_graph()
    climbs = sorted(
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in graph.items()
        for t in targets
        if layer_of(t) > layer_of(m)
    )
    assert climbs == []
