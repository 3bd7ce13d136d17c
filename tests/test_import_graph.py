"""The package's import graph: no cycle (function-level imports included), and no module over 800
lines. (That loading the shipped ``world_pref`` critic imports no training code is checked in a
fresh process by ``tests/test_critic_api.py``.)

Every module of the installed ``milr`` package and of the folders mapped into it (``milr.critics``,
``milr.search``, ``milr.models``, ``milr.recipes``) is read with :mod:`ast` -- not imported -- so
imports inside functions count exactly like module-level ones; imports under ``if TYPE_CHECKING:``
never run and are skipped.
"""

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

ROOTS = ("milr", "milr.critics", "milr.search", "milr.models", "milr.recipes")
MAX_LINES = 800


def package_modules() -> dict[str, Path]:
    """Module name -> source file, for every module under the package roots."""
    out: dict[str, Path] = {}
    for root in ROOTS:
        pkg = importlib.import_module(root)
        out[root] = Path(pkg.__file__)
        for info in pkgutil.walk_packages(pkg.__path__, root + ".", onerror=lambda name: pytest.fail(f"cannot walk {name}")):
            spec = importlib.util.find_spec(info.name)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                out[info.name] = Path(spec.origin)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree (function bodies too), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            # importlib.import_module("milr.x") with a literal name is an import too
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                yield ast.Import(names=[ast.alias(name=node.args[0].value)])
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, known: set[str]) -> str | None:
    """The longest known module name that ``name`` starts with (``milr.world.render`` -> ``milr.world``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges module -> milr modules it imports (a ``from P import m`` of a submodule points at ``P.m``)."""
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for t in targets:
                owner = _owner(t, known)
                if owner is not None and owner != mod:
                    edges.add(owner)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_walk_sees_every_package_folder():
    modules = package_modules()
    for must in ("milr.runner", "milr.world.scenes", "milr.training.module", "milr.critics.trained",
                 "milr.search.reinforce", "milr.models.minimug.train"):
        assert must in modules


def test_cycle_finder_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_relative_and_function_level_imports_are_edges(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("x = 1\ndef f():\n    from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p import a\n")
    graph = import_graph({"p": pkg / "__init__.py", "p.a": pkg / "a.py", "p.b": pkg / "b.py"})
    assert graph == {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": set()}


def test_no_import_cycle_lazy_imports_included():
    graph = import_graph(package_modules())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_800_lines():
    too_long = {m: n for m, p in package_modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"

