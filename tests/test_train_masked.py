"""Stages train and evaluate with `train.objective: masked` on the tiny project of
tests/test_train.py (its cyclic pattern shifted past the special ids, <mask> included)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from components import evaluate, train  # noqa: E402
from components.contract import BOS, EOS, MASKED_HEADLINE_KEYS, SPECIALS  # noqa: E402
from components.errors import GruflowError  # noqa: E402
from tests.test_train import DOCS, make_project, with_train, write_tokens  # noqa: E402

PATTERN = np.random.default_rng(0).permutation(np.arange(len(SPECIALS), 25)).astype(np.int32)


def masked_project(root: Path):
    p, vocab = make_project(root)
    offset = 0
    for split, (n, length) in DOCS.items():  # the same documents, no token is <mask>
        docs = [
            [
                BOS,
                *(int(PATTERN[((offset + i) * 7 + j) % PATTERN.size]) for j in range(length)),
                EOS,
            ]
            for i in range(n)
        ]
        write_tokens(Path(p.paths.tokens) / f"{split}.parquet", docs)
        offset += n
    return with_train(p, objective="masked", epochs=3, mask_fraction=0.2), vocab


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
        p, vocab = masked_project(tmp_path_factory.mktemp("masked"))
        summary = train.run(p)
        metrics = evaluate.run(p)
        yield p, summary, metrics


def test_masked_training_saves_a_bidirectional_model(masked):
    p, summary, _ = masked
    assert summary["objective"] == "masked" and summary["epochs_run"] >= 1
    model = keras.saving.load_model(p.paths.model, safe_mode=True)
    assert model.name == "gruflow_mlm" and len(model.inputs) == 1
    assert type(model.get_layer("gru_0")).__name__ == "Bidirectional"


def test_evaluate_reports_masked_metrics_and_beats_the_unigram_baseline(masked):
    p, _, m = masked
    saved = json.loads((Path(p.paths.reports) / "metrics.json").read_text())
    assert saved == m
    head = json.loads((Path(p.paths.reports) / "headline.json").read_text())
    assert head == {k: m[k] for k in MASKED_HEADLINE_KEYS}
    for key in ("masked_accuracy", "masked_top5_accuracy"):
        assert 0.0 <= m[key] <= 1.0
    assert m["masked_top5_accuracy"] >= m["masked_accuracy"]
    assert m["masked_tokens"] > 50 and m["objective"] == "masked"
    # both sides of a cyclic pattern give the hidden token away; the unigram cannot see them
    assert m["masked_perplexity"] < m["masked_baseline_perplexity"]
    assert m["masked_perplexity"] >= 1.0
    samples = (Path(p.paths.reports) / "samples.md").read_text()
    assert "<mask>" in samples
    for name in ("attention.png", "perplexity_by_length.png", "learning_curves.png"):
        assert (Path(p.paths.reports) / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_masked_training_is_deterministic_to_the_byte(masked, tmp_path):
    p, _, m = masked
    again, _ = masked_project(tmp_path / "again")
    train.run(again)
    assert Path(again.paths.model).read_bytes() == Path(p.paths.model).read_bytes()
    assert evaluate.run(again) == m


def test_evaluate_refuses_a_model_of_the_other_objective(masked):
    p, _, _ = masked
    with pytest.raises(GruflowError, match="trained with objective masked.*train.objective causal"):
        evaluate.run(with_train(p, objective="causal"))
