"""The import graph inside kardlite has no cycle, so any module can be read (and imported) on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import kardlite

PACKAGE_ROOT = Path(kardlite.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = ("kardlite", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str], *, everywhere: bool) -> set[str]:
    """kardlite modules ``module`` imports: module-level statements, or (``everywhere``) also function-local ones.

    ``if TYPE_CHECKING:`` blocks are never run, so they do not count. ``from a import b`` counts as an import of
    ``a.b`` when that is a module, else of ``a``. Relative imports are resolved against the package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
            if everywhere or isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if children:
                        visit([c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)])
            if isinstance(node, ast.ExceptHandler):
                visit(node.body)

    visit(tree.body)
    return {name for name in found if name in known and name != module}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def _graph(*, everywhere: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules), everywhere=everywhere) for name, path in modules.items()}


def test_graph_sees_real_edges() -> None:
    graph = _graph(everywhere=False)
    assert len(graph) > 40
    assert "kardlite.errors" in graph["kardlite._io"]  # a module-level import
    assert "kardlite.kb.encoder" in graph["kardlite.kb.base"]  # "from kardlite.kb import encoder"


def test_no_import_cycle_at_module_level() -> None:
    assert _find_cycle(_graph(everywhere=False)) is None


def test_no_import_cycle_in_the_reranker_counting_function_local_imports() -> None:
    # Stricter, for kardlite.rerank: a lazy import inside a function still makes two modules depend on each other
    # (the reranker's base class once imported its subclass that way; now a kind registry).
    graph = {name: {m for m in deps if m.startswith("kardlite.rerank.")}
             for name, deps in _graph(everywhere=True).items() if name.startswith("kardlite.rerank.")}
    assert len(graph) >= 10
    assert _find_cycle(graph) is None


def test_no_import_cycle_anywhere_counting_function_local_imports() -> None:
    # A lazy import inside a function still makes two modules depend on each other: no two kardlite modules may
    # need each other, by any import.
    cycle = _find_cycle(_graph(everywhere=True))
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
