"""dvc.yaml lists, for every stage, exactly the code that shapes its outputs: each components
module its command imports, directly or through another module (sub-packages included), is a
dependency and nothing else is, so `dvc repro` re-runs a stage whose rules changed and only
then. The import graph itself (no cycle, no stage importing a stage) is tests/test_layout.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Imports whose code does not shape any stage's outputs: error types, the params model (values
# are tracked through `params:`), live MLflow logging (it writes nothing a stage outputs) and the
# console: quiet library logging and fit progress lines.
INFRASTRUCTURE = {
    "components/errors.py",
    "components/params.py",
    "components/live_log.py",
    "components/verbosity.py",
    "components/lm/progress.py",
}
# Per stage, a module it imports only for atomic JSON writes, whose framing the outputs do not
# depend on (the data stages do list it: its Parquet codec shapes their files).
NOT_SHAPING = {
    stage: {"components/artifacts.py"} for stage in ("tokenize", "embed", "tune", "evaluate")
}


def module_file(dotted: str) -> Path | None:
    """components.a.b -> components/a/b.py (or the package's __init__.py); None otherwise."""
    path = ROOT / Path(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def direct_imports(file: Path) -> set[Path]:
    """The components modules `file` imports anywhere in its body (lazy imports included)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from components.lm import model` names a module; `from x import f` a function
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            target = module_file(name) if name.startswith("components") else None
            if target is not None and target.name != "__init__.py":
                found.add(target)
    return found


def shaping_imports(start: Path, skip: set[str]) -> set[str]:
    """`start` and every components module it imports, directly or through another, without
    walking into the skipped ones; as paths relative to the project root."""
    found: set[str] = set()
    todo = [start]
    while todo:
        file = todo.pop()
        rel = file.relative_to(ROOT).as_posix()
        if rel not in found and rel not in skip:
            found.add(rel)
            todo.extend(direct_imports(file))
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_exactly_the_code_it_imports(stage):
    cmd = STAGES[stage]["cmd"]
    module = cmd.removeprefix("python -m ").split()[0]
    needed = shaping_imports(module_file(module), INFRASTRUCTURE | NOT_SHAPING.get(stage, set()))
    code = {d for d in STAGES[stage]["deps"] if d.startswith("components/")}
    assert not needed - code, f"dvc.yaml stage {stage} should depend on {sorted(needed - code)}"
    assert not code - needed, (
        f"dvc.yaml stage {stage} lists code it does not import: {sorted(code - needed)}"
    )


def test_direct_imports_follow_sub_packages(tmp_path):
    """The walk sees `from components.lm import model`, dotted and lazy imports alike."""
    found = direct_imports(ROOT / "components" / "evaluate.py")
    assert {
        ROOT / "components" / "lm" / "model.py",
        ROOT / "components" / "lm" / "plots.py",
        ROOT / "components" / "tuning" / "best.py",
    } <= found


def test_tune_depends_on_every_train_field_its_trials_use():
    """Trials train by train's recipe (components/lm/fit.py): every train field is a tune param
    but epochs (trials use tune.max_epochs) and patience (trials are pruned instead)."""
    from components.params import Train

    tune = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["tune"]["params"]
    listed = {p.removeprefix("train.") for p in tune if isinstance(p, str)}
    assert "train" not in listed
    assert set(Train.model_fields) - {"epochs", "patience"} <= listed
