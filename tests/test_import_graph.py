"""The package's import graph has no cycles (read with ``ast``; nothing is imported).

An edge A -> B means that running module A may run module B first:

- every ``import`` or ``from ... import`` counts, at module level or inside a function (a
  deferred import hides a cycle from Python, not from the design); imports under
  ``if TYPE_CHECKING:`` do not run and do not count;
- ``from P import x`` depends on the module ``P.x`` when there is one, else on ``P`` itself
  (``x`` must already be defined there);
- importing a module runs its parent packages' ``__init__`` first, so those count too, except
  the packages that hold A itself: they are already running when A runs (this is why a
  package's ``__init__`` may import its own submodules, and why the top-level facade
  ``fusion_ui/__init__.py`` is not an edge of every module).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fusion_ui"

# Cycles that are known and owned elsewhere, each a sorted tuple of module names, with why.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _runs(target: str, importer: str, modules: dict[str, Path], *, explicit: bool) -> set[str]:
    """The modules that importing ``target`` from ``importer`` may run: ``target`` (or, for an
    attribute path, its module) and its parent packages, except those holding ``importer``
    (they already run), unless ``explicit``: an attribute of ``target`` itself is used."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    is_package = modules[importer].name == "__init__.py"
    parts = importer.split(".")
    holding = {".".join(parts[:k]) for k in range(1, len(parts) + is_package)}
    found = set()
    steps = target.split(".")
    for k in range(1, len(steps) + 1):
        mod = ".".join(steps[:k])
        last = k == len(steps)
        if mod in modules and mod != importer and (mod not in holding or (last and explicit)):
            found.add(mod)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules that running it may run first (see the module docstring)."""
    modules = module_files(package)
    root = package.name
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # relative imports' anchor
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == root:
                        graph[name] |= _runs(alias.name, name, modules, explicit=True)
                continue
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != root:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            for sub in submodules:
                graph[name] |= _runs(sub, name, modules, explicit=True)
            graph[name] |= _runs(base, name, modules, explicit=len(submodules) < len(names))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def describe(graph: dict[str, set[str]], component: tuple[str, ...]) -> str:
    inside = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & inside))}" for m in component)


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    found = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def test_the_rng_and_the_methods_do_not_depend_on_their_users() -> None:
    graph = import_graph()
    assert graph["fusion_ui.rng"] == set()  # the generator stands alone: kernels and methods use it
    assert "fusion_ui.rng" in graph["fusion_ui.kernels.cpu"]
    assert not any(m.startswith("fusion_ui.methods") for m in graph["fusion_ui.kernels.cpu"])
    assert "fusion_ui.recipe" not in graph["fusion_ui.mergekit_compat"]


def test_the_graph_sees_deferred_imports_parents_and_attributes_not_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "fusion_ui"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from fusion_ui.a import x\n")
    (pkg / "a.py").write_text("x = 1\ndef f():\n    from fusion_ui.sub.b import y\n")
    (pkg / "sub" / "__init__.py").write_text("from fusion_ui.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fusion_ui import c\n"
    )
    (pkg / "c.py").write_text("import fusion_ui.a\n")
    (pkg / "d.py").write_text("from fusion_ui import x\nfrom .sub import b\n")
    graph = import_graph(pkg)
    assert graph["fusion_ui.a"] == {"fusion_ui.sub", "fusion_ui.sub.b"}  # deferred, and its package
    assert graph["fusion_ui.sub"] == {"fusion_ui.sub.b"}  # a package importing its own submodule
    assert graph["fusion_ui.sub.b"] == set()  # TYPE_CHECKING only
    assert graph["fusion_ui.c"] == {"fusion_ui.a"}
    # an attribute of the top-level package is an edge to it; a submodule of a package runs both
    assert graph["fusion_ui.d"] == {"fusion_ui", "fusion_ui.sub", "fusion_ui.sub.b"}
    assert cycles(graph) == []
    (pkg / "sub" / "b.py").write_text("from fusion_ui.c import *\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [("fusion_ui.a", "fusion_ui.c", "fusion_ui.sub", "fusion_ui.sub.b")]
