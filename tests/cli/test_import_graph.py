"""The import graph of `qlens_jax`'s modules has no cycles, and only the command-line package
imports `qlens_jax.cli` (the library never depends on its command line). The benchmarks'
modules have no cycles either: shapes, builders and machine facts sit below the benchmarks that
use them.

The graph is read from the source (`ast`), lazy imports inside functions included: a cycle
through a function-level import still ties the modules together. An edge goes to the module
named (`from a.b import c` goes to `a.b.c` when that is a module, else to `a.b`), not to the
packages above it, which Python imports first but which do not depend on the importer.
"""

import ast
from pathlib import Path

import benchmarks
import qlens_jax

PACKAGE = Path(qlens_jax.__file__).parent
BENCHMARKS = Path(benchmarks.__file__).parent


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of `package` (by default `qlens_jax`) it imports."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "qlens_jax.job.inputs" in graph["qlens_jax.job.run"]
    assert "qlens_jax.channels.labels" in graph["qlens_jax.channels.plots"]
    assert "qlens_jax.cli" in graph["qlens_jax.cli.demo"]  # a function-level import


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_qlens_jax_modules():
    assert cycles(import_graph()) == []


def test_only_the_cli_package_imports_the_cli():
    importers = sorted(
        name
        for name, targets in import_graph().items()
        if any(t == "qlens_jax.cli" or t.startswith("qlens_jax.cli.") for t in targets)
        and name != "qlens_jax.cli"
        and not name.startswith("qlens_jax.cli.")
    )
    assert importers == []


def test_the_benchmarks_graph_sees_imports():
    graph = import_graph(BENCHMARKS)
    assert "benchmarks.sizes" in graph["benchmarks.roofline"]
    assert "benchmarks.reference_torch" in graph["benchmarks.contestant"]  # a function-level import


def test_no_import_cycles_among_the_benchmarks():
    assert cycles(import_graph(BENCHMARKS)) == []
