"""components/tuning/best.py: the effective parameters (best_params.json over params.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.errors import GruflowError
from components.tuning.best import effective_params, load_best, merge_best
from tests.test_tune import make_params


def test_merge_best_applies_and_validates(tmp_path):
    p = make_params(tmp_path)
    merged, changed = merge_best(p, {"model.units": 8, "train.learning_rate": 0.02})
    assert merged.model.units == 8 and merged.train.learning_rate == 0.02
    assert changed == {"model.units": 8}  # the learning rate is the params.yaml value
    assert merged.embed == p.embed and merged.paths == p.paths
    with pytest.raises(GruflowError, match="model.units"):
        merge_best(p, {"model.units": -8})
    with pytest.raises(GruflowError, match="unknown parameter 'paths.model'"):
        merge_best(p, {"paths.model": "elsewhere.keras"})
    best_file = Path(p.paths.best_params)
    with pytest.raises(GruflowError, match="run the tune stage first"):
        load_best(p)
    best_file.parent.mkdir(parents=True, exist_ok=True)
    best_file.write_text('{"model.units": 8}')
    assert merge_best(p, load_best(p))[0].model.units == 8
    assert load_best(make_params(tmp_path, n_trials=0)) == {}  # tuning off: no file needed


def test_effective_params_is_params_yaml_with_the_tuned_values(tmp_path):
    p = make_params(tmp_path)
    Path(p.paths.best_params).parent.mkdir(parents=True, exist_ok=True)
    Path(p.paths.best_params).write_text('{"train.seq_len": 6, "model.units": 16}')
    merged, tuned = effective_params(p)
    assert merged.train.seq_len == 6 and tuned == {"train.seq_len": 6}  # units: unchanged
    relative = p.model_copy(
        update={
            "paths": p.paths.model_copy(
                update={"best_params": Path(p.paths.best_params).relative_to(tmp_path).as_posix()}
            )
        }
    )
    assert effective_params(relative, tmp_path)[0].train.seq_len == 6  # under a project root
