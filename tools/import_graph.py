"""Import cycles inside the greedyprune package, found by reading the source (nothing is imported).

    python tools/import_graph.py            # prints each cycle; exit status 1 if there is any, else 0
    python tools/import_graph.py --edges    # also prints every edge, "importer -> imported (line)"

Every ``import`` statement anywhere in a module counts: at module level, inside functions and methods, inside
``try`` blocks. Only statements under ``if TYPE_CHECKING:`` are left out (they never run). Followed forms:

* ``import greedyprune.a.b`` and ``from greedyprune.a import b`` (absolute);
* ``from .a import b``, ``from ..a.b import c`` (relative, any depth);
* ``from . import b`` and ``from .a import b`` where ``b`` is a submodule: an edge to the submodule;
* ``importlib.import_module("greedyprune.a")`` with a literal string.

A module name computed at run time (``greedyprune.studies.report``'s ``import_module(f"{__name__}.{...}")``)
is not followed.

An edge goes to the module named; importing ``a.b`` also runs ``a/__init__.py``, but that implied edge is not
drawn (every package's ``__init__`` imports its own submodules, so drawing it would make every package a
cycle). A cycle is a strongly connected component of two or more modules (a module importing itself is not counted);
one closed path through each is printed, with the lines of its edges.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

__all__ = ["cycles", "import_edges", "main", "modules"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "greedyprune"


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``root``: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST):
    """Every import statement and ``import_module`` call in ``tree``, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_edges(mods: dict[str, Path], package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """``{importer: {imported: first line}}`` over the modules of the package."""
    edges: dict[str, dict[str, int]] = {name: {} for name in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]  # the package a relative import starts in

        def add(target: str, line: int) -> None:
            while target and target not in mods:  # "a.b.func" -> "a.b"
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name][target] = min(line, edges[name].get(target, line))

        for node in _statements(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call):
                text = node.args[0].value
                if text == package or text.startswith(package + "."):
                    add(text, node.lineno)
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        add(alias.name, node.lineno)
                continue
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                source = ".".join(base + (node.module.split(".") if node.module else []))
            else:
                source = node.module or ""
                if not (source == package or source.startswith(package + ".")):
                    continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in mods:
                    add(submodule, node.lineno)  # "from . import x" / "from .a import x": x is a module
                elif source in mods and source != name:
                    add(source, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One closed path (first module repeated at the end) per strongly connected component that has a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's algorithm; the package is small enough for recursion
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
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
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    out = []
    for component in sorted(components):
        members = set(component)
        start = component[0]
        # shortest closed path from start back to itself inside the component (breadth first)
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = []
        v = found
        while v != start:
            path.append(v)
            v = previous[v]
        out.append([start] + path[::-1] + [start])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every edge too")
    parser.add_argument("--root", type=Path, default=ROOT, help="the folder holding the package (default: %(default)s)")
    args = parser.parse_args(argv)
    mods = modules(args.root)
    edges = import_edges(mods)
    if args.edges:
        for a in sorted(edges):
            for b, line in sorted(edges[a].items()):
                print(f"{a} -> {b} ({mods[a].relative_to(args.root)}:{line})")
    found = cycles(edges)
    for path in found:
        steps = " -> ".join(path)
        where = ", ".join(f"{mods[a].relative_to(args.root)}:{edges[a][b]}" for a, b in zip(path, path[1:]))
        print(f"cycle: {steps}  ({where})")
    n_edges = sum(len(v) for v in edges.values())
    print(f"{len(mods)} modules, {n_edges} imports between them, {len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
