"""dvc.yaml lists, for every stage, the code that shapes its outputs: each components module
its command imports is a dependency, so `dvc repro` re-runs a stage whose rules changed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Imports whose code does not shape a stage's outputs: error types and the params model
# (values are tracked through `params:`) everywhere; elsewhere only JSON/atomic-write helpers
# (artifacts) or a constant (clean.SPLITS, tokenize.PAD).
INFRASTRUCTURE = {"errors", "params"}
NOT_SHAPING = {"tokenize": {"artifacts", "clean"}, "embed": {"artifacts", "tokenize"},
               "tune": {"artifacts"}, "train": {"artifacts"}, "evaluate": {"artifacts"}}


def direct_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "components" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "components":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("components."):
            found.add(node.module.split(".")[1])
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(stage):
    cmd = STAGES[stage]["cmd"]
    module = cmd.removeprefix("python -m components.").split()[0]
    deps = set(STAGES[stage]["deps"])
    needed = {module} | direct_imports(module) - INFRASTRUCTURE - NOT_SHAPING.get(stage, set())
    missing = sorted(f"components/{m}.py" for m in needed if f"components/{m}.py" not in deps)
    assert not missing, f"dvc.yaml stage {stage} should depend on {missing}"
