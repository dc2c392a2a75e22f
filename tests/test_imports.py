"""No import circles inside ``nla``: a static graph over the package's modules.

An edge A -> B means module A imports module B anywhere in its source: at the top, inside a function
(a lazy import hides a circle from Python but not from the reader), or inside ``if TYPE_CHECKING``.
``from X import Y`` is an edge to ``X.Y`` when that is a module of ours, else to ``X``. A package's
``__init__`` is only reached by importing the package itself, so importing ``nla.a.b`` is no edge to
``nla.a``: a package that gathers its submodules' names is not a circle with them.
"""

from __future__ import annotations

import ast
from pathlib import Path
from tests.fixtures.paths import ROOT



def module_names(package: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module under ``package`` (a package is its ``__init__``)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``name`` (whose source is ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph(package: Path) -> dict[str, set[str]]:
    files = module_names(package)
    return {name: imported(name, path, set(files)) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), each listed
    from its smallest name, so a failure names the modules to untangle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_graph_sees_lazy_relative_and_from_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import thing\n")
    (package / "a.py").write_text("thing = 1\ndef f():\n    from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from ..c import other\n")
    (package / "c.py").write_text("import json\nfrom pkg import a\nother = 2\n")
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.c"},
                     "pkg.c": {"pkg.a"}}
    assert circles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (package / "c.py").write_text("other = 2\n")
    assert circles(import_graph(package)) == []


def test_nla_has_no_import_circles():
    assert circles(import_graph(ROOT / "nla")) == []


LAYERS = ("nla.core", "nla.models", "nla.data", "nla.evaluation", "nla.modules", "nla.commands")
"""The packages of ``nla`` from the bottom up: each imports only itself and the ones before it."""


def layer(module: str) -> int | None:
    """Index of ``module``'s layer in ``LAYERS`` (None for ``nla`` itself and its entry point)."""
    return next((index for index, package in enumerate(LAYERS)
                 if module == package or module.startswith(package + ".")), None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import edge that goes from a layer to a later one, as ``importer -> imported``."""
    found = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = layer(name), layer(target)
            if here is not None and there is not None and there > here:
                found.append(f"{name} -> {target}")
    return found


def test_upward_imports_are_found():
    graph = {"nla.core.maths": set(), "nla.models.pair": {"nla.core.maths"},
             "nla.data.datamodule": {"nla.models.pair", "nla.commands.preflight"},
             "nla.commands.preflight": {"nla.data.datamodule"}, "nla.__main__": {"nla.commands.cli"}}
    assert upward_imports(graph) == ["nla.data.datamodule -> nla.commands.preflight"]


def test_nla_layers_import_only_downwards():
    graph = import_graph(ROOT / "nla")
    assert {name.split(".")[1] for name in graph if name.count(".") >= 1 and name != "nla.__main__"} == \
        {package.split(".")[1] for package in LAYERS}, "every package of nla has its place in LAYERS"
    assert upward_imports(graph) == []


def test_tests_import_only_fixtures_of_the_suite():
    """No test module imports another test module or a conftest: what tests share is in tests/fixtures."""
    tests = ROOT / "tests"
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [f"{path.relative_to(ROOT)}: {name}" for name in names
                      if (name == "tests" or name.startswith("tests.")) and not name.startswith("tests.fixtures")
                      or name.split(".")[-1] == "conftest"]
    assert wrong == []
