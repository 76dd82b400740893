"""The layout ARCHITECTURE.md promises, read from the code with ast: the import graph of
components/ has no cycle, no stage module imports another stage module (shared names live in
components/contract.py), nothing in components/ imports Prefect, and no module a stage loads
imports MLflow at its top level (only components/live_log.py, inside its functions, and the
served pyfunc, which only MLflow loads)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"
STAGES = {
    f"components.{name}" for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
}
MODULES = {
    ".".join(f.relative_to(ROOT).with_suffix("").parts): f
    for f in COMPONENTS.rglob("*.py")
    if f.name != "__init__.py"
}


def imported(tree: ast.AST, top_level_only: bool = False) -> set[str]:
    """Dotted names of what a module imports (every `from a import b` as a and a.b)."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def graph() -> dict[str, set[str]]:
    return {
        name: imported(ast.parse(file.read_text())) & MODULES.keys()
        for name, file in MODULES.items()
    }


def test_every_stage_of_dvc_yaml_is_a_flat_components_module():
    assert STAGES <= MODULES.keys()
    assert all(name.count(".") == 1 for name in STAGES)


def test_no_stage_imports_another_stage():
    offenders = {
        name: sorted(deps & STAGES - {name})
        for name, deps in graph().items()
        if deps & STAGES - {name}
    }
    assert not offenders, f"stage modules imported by other modules: {offenders}"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_components_never_import_prefect():
    users = [
        n
        for n, f in MODULES.items()
        if any(m.split(".")[0] == "prefect" for m in imported(ast.parse(f.read_text())))
    ]
    assert not users


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_module_a_stage_loads_imports_mlflow_at_top_level(stage):
    edges, seen, todo = graph(), set(), [stage]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    eager = sorted(
        n
        for n in seen
        if any(
            m.split(".")[0] == "mlflow"
            for m in imported(ast.parse(MODULES[n].read_text()), top_level_only=True)
        )
    )
    assert not eager, f"{stage} loads MLflow at import through {eager}"


def test_the_checks_see_a_planted_cycle_and_lazy_stage_import():
    """The checks above can fail: a cycle (train -> tune -> train, as before issue 16) is
    found, and an import inside a function counts."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    planted = {"components.train": {"components.tune"}, "components.tune": {"components.train"}}
    assert find_cycle(planted) == ["components.train", "components.tune", "components.train"]
    lazy = ast.parse("def f():\n    from components import train\n")
    assert "components.train" in imported(lazy)
    assert "components.train" not in imported(lazy, top_level_only=True)
