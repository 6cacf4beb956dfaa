"""The import graph of the product: no import circles, and layers import only downward.

faces (cli/, server/) -> engine/ -> training/, indexer/, evaluation/ -> retrieval/;
retrieval/ imports none of the others and nothing in the product imports benchmarks/.
A face reaches the rest through the engine alone: it may import the engine package and
the core's error and result types (`cli/` also training/, for train-* and make-corpus).
Read from the source with `ast` (imports inside functions count too), so the check needs
no import of its own.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

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

# What a face may import: whole packages, and of the core only these modules' names
# (None: any name of it). `cli` imports `server` to run it (`xmr serve`).
FACES = {
    "cli": {"cli", "server", "engine", "training"},
    "server": {"server", "engine"},
}
FACE_CORE = {
    "retrieval.errors": None,  # the typed errors every face translates
    "retrieval.searcher": {"Answer", "Hit"},  # what a search returns
}


def _product_packages() -> list[str]:
    """The folders pyproject.toml installs as `xmr.NAME` ("xmr.retrieval" = "retrieval")."""
    text = (
        REPO / "pyproject.toml"
    ).read_text()  # [tool.setuptools.package-dir] (no tomllib in 3.10)
    return sorted(re.findall(r'^"xmr\.(\w+)" = "\1"$', text, re.M))


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(packages, root: Path = REPO) -> dict[str, dict[str, set[str | None]]]:
    """module -> {module of `packages` (or benchmarks) it imports: the names it takes from
    it (None: the module itself)}."""
    files = {
        _module_name(path, root): path
        for package in [*packages, "benchmarks"]
        for path in (root / package).rglob("*.py")
    }

    def known(name: str) -> str | None:  # the longest module prefix of `name` that exists
        name = name.removeprefix("xmr.")  # installed as xmr.retrieval, kept in retrieval/
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    found: dict[str, dict[str, set[str | None]]] = {}
    for module, path in files.items():
        targets: dict[str, set[str | None]] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets.setdefault(known(alias.name), set()).add(None)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from package import module` names a module
                    submodule = known(f"{node.module}.{alias.name}")
                    if submodule and submodule != known(node.module):
                        targets.setdefault(submodule, set()).add(None)
                    else:
                        targets.setdefault(known(node.module), set()).add(alias.name)
        targets.pop(None, None)
        targets.pop(module, None)
        found[module] = targets
    return found


def import_graph(packages, root: Path = REPO) -> dict[str, set[str]]:
    """module -> the modules of `packages` (and benchmarks) it imports."""
    return {module: set(targets) for module, targets in imported_names(packages, root).items()}


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


def face_violations(names: dict[str, dict[str, set[str | None]]]) -> list[str]:
    """`module -> target` for each import of a face beyond the engine and the core's
    error and result types."""
    found = []
    for module, targets in names.items():
        allowed = FACES.get(module.split(".")[0])
        if allowed is None:
            continue
        for target, taken in sorted(targets.items()):
            if target.split(".")[0] in allowed:
                continue
            core = FACE_CORE.get(target, set())
            if target in FACE_CORE and (core is None or None not in taken and taken <= core):
                continue
            found.append(f"{module} -> {target}")
    return sorted(found)


def test_the_product_has_no_import_circles():
    graph = import_graph(_product_packages())
    assert len(graph) > 40  # the walk found the product, not an empty folder
    assert cycles(graph) == []


def test_layers_import_only_downward_and_never_benchmarks():
    packages = _product_packages()
    assert {"retrieval", "evaluation", "indexer", "training", "cli"} <= set(packages)
    assert upward_imports(import_graph(packages), packages) == []


def test_faces_reach_the_core_only_through_the_engine():
    names = imported_names(_product_packages())
    assert {"cli.main", "server.app"} <= set(names)
    assert face_violations(names) == []


def test_a_face_importing_the_database_is_reported(tmp_path):
    """Plant a lazy `from xmr.retrieval.db import Database` in a copy of cli/: reported;
    a face taking a core module's other names (not its result types) too."""
    packages = _product_packages()
    for package in [*packages, "benchmarks"]:
        shutil.copytree(REPO / package, tmp_path / package)
    output = tmp_path / "cli" / "output.py"
    output.write_text(
        output.read_text() + "\n\ndef _rows(d):\n    from xmr.retrieval.db import Database\n"
        "\n    return Database(d)\n"
    )
    assert face_violations(imported_names(packages, tmp_path)) == ["cli.output -> retrieval.db"]
    (tmp_path / "server" / "peek.py").write_text(
        "from xmr.retrieval.searcher import Hit, Searcher\nimport xmr.retrieval.errors\n"
    )
    assert "server.peek -> retrieval.searcher" in face_violations(
        imported_names(packages, tmp_path)
    )
    (tmp_path / "server" / "peek.py").write_text("from xmr.retrieval.searcher import Hit\n")
    assert "server.peek -> retrieval.searcher" not in face_violations(
        imported_names(packages, tmp_path)
    )


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
