"""The effective parameters: the tune stage's best values (artifacts/best_params.json) merged
over params.yaml.

Usage: `params, tuned = effective_params(load_params())`. Every reader of a tunable value —
train, evaluate, the flow's MLflow logging and the registered model's info.json (hence
serving) — goes through this one function, so a tuned `train.seq_len` is the one everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.errors import GruflowError
from components.params import Params, with_overrides
from components.sizing import sized_params


def load_best(p: Params, root: Path = Path(".")) -> dict:
    """The tune stage's best values; {} when tuning is off (tune.n_trials: 0)."""
    path = root / p.paths.best_params
    if p.tune.n_trials == 0:
        return {}
    if not path.is_file():
        raise GruflowError(
            f"{path}: missing — run the tune stage first (dvc repro tune), "
            "or set tune.n_trials: 0 to train with params.yaml as is"
        )
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        best = None
    if not isinstance(best, dict):
        raise GruflowError(f"{path}: expected a JSON object of dotted names — rerun tune")
    return best


def merge_best(params: Params, best: dict) -> tuple[Params, dict]:
    """params with the tuned values applied and validated again, and the overrides that
    changed a params.yaml value (name -> tuned value)."""
    if not best:
        return params, {}
    merged = with_overrides(params, best, params.paths.best_params)
    changed = {
        name: value
        for name, value in best.items()
        if getattr(getattr(params, name.split(".")[0]), name.split(".")[1]) != value
    }
    return merged, changed


def effective_params(p: Params, root: Path = Path(".")) -> tuple[Params, dict]:
    """(params.yaml with model.size auto's sizes and then the tuned values applied, the
    values tuning changed)."""
    return merge_best(sized_params(p, root), load_best(p, root))
