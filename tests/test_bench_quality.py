"""bench/quality.py: the reference is the seed's plain model at gruflow's size, both sides are
scored by the evaluate stage's code, and the `quality` row has the floor `make bench` checks."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from bench.common import FLOORS, failures
from bench.quality import (
    ABLATIONS,
    gru_lm_parameters,
    measure,
    reference_models,
    reference_units,
    with_value,
)
from components.contract import BOS, EOS
from components.params import load_params, with_overrides


@pytest.mark.parametrize(("vocab", "dim", "units"), [(50, 8, 12), (4000, 64, 211)])
def test_the_parameter_formula_is_keras_own_count(vocab, dim, units):
    fit_model, scorer = reference_models(vocab, dim, units)
    assert fit_model.count_params() == gru_lm_parameters(vocab, dim, units)
    assert scorer.count_params() == fit_model.count_params()  # the same layers, shared


def test_the_reference_width_matches_gruflows_parameter_count():
    target = 879_392  # the default gruflow model on the built-in corpus (reports/train.json)
    units = reference_units(target, 4000, 64)
    best = gru_lm_parameters(4000, 64, units)
    assert abs(best - target) <= min(
        abs(gru_lm_parameters(4000, 64, h) - target) for h in (units - 1, units + 1)
    )
    assert abs(best - target) / target < 0.01


def test_the_reference_is_plain_keras_with_default_initialisers():
    fit_model, _ = reference_models(50, 8, 12)
    kinds = [type(layer).__name__ for layer in fit_model.layers]
    assert kinds == ["InputLayer", "Embedding", "GRU", "Dense"]  # no attention, no dropout
    gru = fit_model.layers[2]
    assert gru.get_config()["dropout"] == 0 and gru.get_config()["recurrent_dropout"] == 0
    default_dense = keras.layers.Dense(50)
    assert (
        fit_model.layers[3].get_config()["kernel_initializer"]
        == default_dense.get_config()["kernel_initializer"]
    )


def test_every_ablation_is_a_valid_params_change():
    p = load_params()
    for dotted, change, _ in ABLATIONS.values():
        section, field = dotted.split(".")
        value = change(getattr(getattr(p, section), field))
        assert value != getattr(getattr(p, section), field)
        q = with_value(p, dotted, value)
        assert with_overrides(p, {dotted: value}, "test") == q  # validates like params.yaml


def test_the_quality_row_on_a_tiny_corpus(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.r_[BOS, rng.integers(10, 40, 30), EOS] for _ in range(40)]
    stream = np.concatenate(docs).astype(np.int32)
    p = load_params()
    tiny = {
        "model.embedding_init": "random",
        "model.embedding_dim": 8,
        "model.units": 8,
        "train.seq_len": 8,
        "train.batch_size": 4,
    }  # outside tune.space: not validated
    for dotted, value in tiny.items():
        p = with_value(p, dotted, value)
    p = p.model_copy(
        update={
            "paths": p.paths.model_copy(update={"reports": str(tmp_path)}),
            "evaluate": p.evaluate.model_copy(update={"batch_size": 4}),
        }
    )
    data = {"train": stream[:800], "val": stream[800:1000], "test": stream[1000:], "bytes": 1000}
    rows = measure(p, 40, data, epochs=1, ablations=False)
    assert [r["name"] for r in rows] == ["quality"]
    row = rows[0]
    assert math.isclose(row["ratio"], row["value"] / row["raw_value"], rel_tol=1e-3)
    assert (
        abs(row["parameters"]["reference"] - row["parameters"]["gruflow"])
        < 0.05 * row["parameters"]["gruflow"]
    )
    assert row["train_tokens"] == 800 and row["epochs"] == 1
    assert row["cpu_seconds"]["gruflow"] > 0 and row["cpu_seconds"]["reference"] > 0
    assert "quality" in FLOORS
    assert failures([{**row, "ratio": 0.86}]) and not failures([{**row, "ratio": 0.84}])
