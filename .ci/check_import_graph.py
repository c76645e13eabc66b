"""The import graph of ``vicinal.experiments``, counting imports inside functions; fails on a cycle.

Reads every module of the package with :mod:`ast` (nothing is imported or run) and
draws an edge A -> B for each ``import``/``from ... import`` in A that names module B of
the package, wherever it stands (module level, function, class, ``try``). Imports under
``if TYPE_CHECKING:`` are left out: they never run. ``from P import name``, where P is a
package and ``name`` one of its submodules, is an edge to that submodule; importing a
submodule also runs its packages' ``__init__``, so an edge to ``a.b.c`` is also one to
``a.b`` and ``a`` (the packages of ``vicinal.experiments``), except to the importer's own
packages, which are always initialised before it.

    python .ci/check_import_graph.py [--src src] [--package vicinal.experiments] [--print]

The graph is checked twice: between modules, and between the package's parts (each
subpackage, such as ``training``, taken as one node, each top-level module as its own),
so that no two parts import each other even through different modules. Prints the
edges with ``--print``; always prints a one-line summary (modules, edges, imports inside
functions). Exits 1 and prints each cycle when there is one.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Graph", "find_cycles", "import_graph", "main", "parts_graph"]

Graph = dict[str, set[str]]


def _modules(src: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of ``package`` under ``src``."""
    root = src / package.replace(".", "/")
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run, and whether it is inside a function."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for orelse in child.orelse:
                    yield from walk(orelse, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from walk(tree, False)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(src: Path, package: str) -> tuple[Graph, int]:
    """The graph ``module -> modules of package it imports`` and the number of function-level imports."""
    modules = _modules(src, package)
    graph: Graph = {name: set() for name in modules}
    in_functions = 0

    def targets(name: str) -> Iterator[str]:
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in modules and (prefix == name or prefix.startswith(package)):
                yield prefix

    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, in_function in _imports(tree):
            named: list[str] = []
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                named = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            hits = {
                t
                for n in named
                for t in targets(n)
                if t != name and t.startswith(package) and not name.startswith(t + ".")
            }
            if hits and in_function:
                in_functions += 1
            graph[name] |= hits
    return graph, in_functions


def parts_graph(graph: Graph, package: str) -> Graph:
    """``graph`` with each module replaced by its part: ``package.<first name>`` (self-edges dropped)."""

    def part(module: str) -> str:
        rest = module[len(package) + 1 :].split(".")[0] if module != package else ""
        return f"{package}.{rest}" if rest else package

    out: Graph = {}
    for module, targets in graph.items():
        node = part(module)
        out.setdefault(node, set()).update(t for t in map(part, targets) if t != node and t != package)
    return out


def find_cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-loop), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(1000, 4 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    parser.add_argument("--package", default="vicinal.experiments")
    parser.add_argument("--print", action="store_true", help="print every edge")
    args = parser.parse_args(argv)
    graph, in_functions = import_graph(Path(args.src), args.package)
    if args.print:
        for module in sorted(graph):
            for target in sorted(graph[module]):
                print(f"{module} -> {target}")
    parts = parts_graph(graph, args.package)
    cycles = find_cycles(graph)
    part_cycles = find_cycles(parts)
    edges = sum(len(v) for v in graph.values())
    print(
        f"{args.package}: {len(graph)} modules, {edges} import edges within the package "
        f"({in_functions} of the imports inside functions), {len(cycles)} cycles between modules; "
        f"{len(parts)} parts, {len(part_cycles)} cycles between parts"
    )
    for cycle in cycles:
        print("cycle between modules: " + " <-> ".join(cycle))
    for cycle in part_cycles:
        print("cycle between parts: " + " <-> ".join(cycle))
    return 1 if cycles or part_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
