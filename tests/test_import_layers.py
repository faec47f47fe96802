"""The package's import graph only looks down (docs/architecture.md's data flow).

Every import counts as an edge: module-level ones, those under ``if TYPE_CHECKING:`` and
those inside functions (a deferred import still couples the two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "easel"

ROUTERS = (
    "easel.server.native",
    "easel.server.a1111",
    "easel.server.openai",
    "easel.server.a1111_options",
    "easel.server.a1111_info",
    "easel.server.upscaling",
    "easel.ui",
)

# Cycles (strongly connected components of more than one module) still present, each
# with the reason it stays. Empty: the package has none.
ALLOWED_CYCLES: list[frozenset[str]] = []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        # the longest known module prefix of the name
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in known:
                found.add(candidate)
                return
            parts.pop()

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve_relative(module, is_package, node.level, node.module)
            else:
                target = node.module or ""
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                else:
                    add(target)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm (iterative): the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(frozenset(component))
    return result


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        for child in graph.get(node, ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return False


def _cycle_between(graph: dict[str, set[str]], a: str, b: str) -> bool:
    return _reaches(graph, a, b) and _reaches(graph, b, a)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_sees_the_package(graph):
    assert "easel.engine" in graph
    assert "easel.models.cache" in graph["easel.engine"]
    # a from-import of a module resolves to that module, not its package
    assert "easel.storage.metadata" in graph["easel.storage.outputs"]


def test_families_and_model_cache_form_no_cycle(graph):
    families = sorted(m for m in graph if m.startswith("easel.families"))
    assert families
    tied = [f for f in families if _cycle_between(graph, f, "easel.models.cache")]
    assert tied == []


def test_result_and_metadata_form_no_cycle(graph):
    assert not _cycle_between(graph, "easel.result", "easel.storage.metadata")


def test_server_app_and_routers_form_no_cycle(graph):
    routers = [r for r in ROUTERS if r in graph]
    assert len(routers) == len(ROUTERS)
    tied = [r for r in routers if _cycle_between(graph, "easel.server.app", r)]
    assert tied == []
    # routers and the app both import the shared server state, never the app
    for router in routers:
        assert "easel.server.app" not in graph[router], router


def test_storage_imports_no_models(graph):
    wrong = {
        module: sorted(t for t in targets if t.startswith("easel.models"))
        for module, targets in graph.items()
        if module.startswith("easel.storage")
    }
    assert {m: t for m, t in wrong.items() if t} == {}


def test_no_import_cycles(graph):
    cycles = [c for c in strongly_connected(graph) if c not in ALLOWED_CYCLES]
    assert [sorted(c) for c in cycles] == []
