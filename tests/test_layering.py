"""The import graph of the product: no import circles, and layers import only downward.

faces (cli/, server/) -> engine/ -> training/, indexer/, evaluation/ -> retrieval/;
retrieval/ imports none of the others and nothing in the product imports benchmarks/.
Read from the source
with `ast` (imports inside functions count too), so the check needs no import of its own.
"""

from __future__ import annotations

import ast
import re

from conftest import REPO

# What each layer may import; a product package not named here is a face (anything but
# benchmarks).
ALLOWED = {
    "retrieval": {"retrieval"},
    "evaluation": {"evaluation", "retrieval"},
    "indexer": {"indexer", "retrieval"},
    "training": {"training", "evaluation", "indexer", "retrieval"},
    "engine": {"engine", "training", "evaluation", "indexer", "retrieval"},
}


def _product_packages() -> list[str]:
    """The folders pyproject.toml installs as `xmr.NAME` ("xmr.retrieval" = "retrieval")."""
    text = (
        REPO / "pyproject.toml"
    ).read_text()  # [tool.setuptools.package-dir] (no tomllib in 3.10)
    return sorted(re.findall(r'^"xmr\.(\w+)" = "\1"$', text, re.M))


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(packages) -> dict[str, set[str]]:
    """module -> the modules of `packages` (and benchmarks) it imports."""
    files = {
        _module_name(path): path
        for package in [*packages, "benchmarks"]
        for path in (REPO / package).rglob("*.py")
    }

    def known(name: str) -> str | None:  # the longest module prefix of `name` that exists
        name = name.removeprefix("xmr.")  # installed as xmr.retrieval, kept in retrieval/
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from package import module` names a module
                    targets.add(known(f"{node.module}.{alias.name}") or known(node.module))
        graph[module] = targets - {None, module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]], packages) -> list[str]:
    """`module -> target` for each import a module's layer may not make."""
    found = []
    for module, targets in graph.items():
        layer = module.split(".")[0]
        if layer == "benchmarks":
            continue
        allowed = ALLOWED.get(layer, set(packages))
        found += [f"{module} -> {t}" for t in sorted(targets) if t.split(".")[0] not in allowed]
    return sorted(found)


def test_the_product_has_no_import_circles():
    graph = import_graph(_product_packages())
    assert len(graph) > 40  # the walk found the product, not an empty folder
    assert cycles(graph) == []


def test_layers_import_only_downward_and_never_benchmarks():
    packages = _product_packages()
    assert {"retrieval", "evaluation", "indexer", "training", "cli"} <= set(packages)
    assert upward_imports(import_graph(packages), packages) == []


def test_the_checks_find_a_circle_and_upward_imports():
    graph = {
        "retrieval.a": {"retrieval.b"},
        "retrieval.b": {"retrieval.a", "evaluation.c"},
        "evaluation.c": {"retrieval.a"},
        "cli.d": {"benchmarks.common", "training.e"},
    }
    packages = ["retrieval", "evaluation", "training", "cli"]
    assert cycles(graph) == [["evaluation.c", "retrieval.a", "retrieval.b"]]
    assert upward_imports(graph, packages) == [
        "cli.d -> benchmarks.common",
        "retrieval.b -> evaluation.c",
    ]
