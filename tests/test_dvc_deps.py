"""dvc.yaml lists, for every stage, the code that shapes its outputs: each components module
its command imports (directly or through another module) is a dependency, so `dvc repro`
re-runs a stage whose rules changed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Imports whose code does not shape a stage's outputs: error types and the params model
# (values are tracked through `params:`) everywhere; the upstream stages' modules, which later
# stages import for constants and framing (clean.SPLITS, tokenize.PAD/BOS/EOS/encode) and whose
# work reaches them through the files those stages write; per stage, helpers that only write
# JSON atomically (artifacts) or parts of an imported module the stage does not call.
INFRASTRUCTURE = {"errors", "params"}
UPSTREAM = {"clean", "tokenize"}
NOT_SHAPING = {"tokenize": {"artifacts"}, "embed": {"artifacts"},
               "tune": {"artifacts", "checkpoint"},  # tune calls train's dataset/optimizer only
               "train": {"artifacts", "tune_report", "tune_study"},  # tune.merge_best only
               "evaluate": {"artifacts"}}

def direct_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "components" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "components":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("components."):
            found.add(node.module.split(".")[1])
    return found


def shaping_imports(module: str, skip: set[str]) -> set[str]:
    """`module` and every components module it imports, directly or through another, without
    walking into the skipped ones."""
    found, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in found and name not in skip:
            found.add(name)
            todo.extend(direct_imports(name))
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(stage):
    cmd = STAGES[stage]["cmd"]
    module = cmd.removeprefix("python -m components.").split()[0]
    deps = set(STAGES[stage]["deps"])
    skip = INFRASTRUCTURE | (UPSTREAM - {module}) | NOT_SHAPING.get(stage, set())
    needed = shaping_imports(module, skip)
    missing = sorted(f"components/{m}.py" for m in needed if f"components/{m}.py" not in deps)
    assert not missing, f"dvc.yaml stage {stage} should depend on {missing}"
