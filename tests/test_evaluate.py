"""Stage `evaluate`, the count baselines and scoring, on the tiny project of tests/test_train.py
(module-scoped: trained once more here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from components import evaluate
from components.contract import BOS, PAD
from components.errors import GruflowError
from components.lm.model import build_model
from components.lm.windows import make_windows, read_stream, unigram_log_probs
from components.params import load_params
from tests.test_train import ROOT, train_tiny_project, with_paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    yield from train_tiny_project(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(trained):
    p, _, _ = trained
    return evaluate.run(p)


def test_evaluate_run_writes_metrics_and_beats_unigram(trained, evaluated):
    p, _, _ = trained
    m = evaluated
    saved = json.loads((Path(p.paths.reports) / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for key in ("perplexity", "bits_per_byte", "token_accuracy", "baseline_perplexity",
                "bigram_perplexity"):
        assert key in saved and math.isfinite(saved[key])
    tokens = Path(p.paths.tokens)
    test = read_stream(tokens / "test.parquet")
    n_bytes = pq.read_table(tokens / "test.parquet").column("n_bytes").to_pylist()
    assert saved["test_tokens"] == test.size - 1
    assert saved["test_bytes"] == sum(n_bytes) + len(n_bytes)
    nll = math.log(saved["perplexity"]) * saved["test_tokens"]
    assert saved["bits_per_byte"] == pytest.approx(nll / math.log(2) / saved["test_bytes"],
                                                   rel=1e-6)
    assert 0.0 <= saved["token_accuracy"] <= saved["top5_accuracy"] <= 1.0
    # The cycle is learnable: the model and the bigram both beat the unigram baseline.
    assert saved["perplexity"] < saved["baseline_perplexity"]
    assert saved["bigram_perplexity"] < saved["baseline_perplexity"]


def test_evaluate_uses_the_tuned_seq_len(trained, tmp_path):
    """Issue 16 (b): a tuned train.seq_len (artifacts/best_params.json) reaches evaluate, as it
    reaches train: windows of 6 tokens, so the last position bucket is 4-5, not 8-11."""
    p, _, _ = trained
    best = tmp_path / "best_params.json"
    best.write_text(json.dumps({"train.seq_len": 6}))
    tuned = with_paths(p, best_params=str(best), reports=str(tmp_path / "reports")).model_copy(
        update={"tune": p.tune.model_copy(update={"n_trials": 1, "space": {}})})
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "train_history.csv").write_bytes(
        (Path(p.paths.reports) / "train_history.csv").read_bytes())
    metrics = evaluate.run(tuned)
    assert list(metrics["loss_by_position"])[-1] == "4-5"


def test_evaluate_missing_model_raises(trained, tmp_path):
    p, _, _ = trained
    bad = with_paths(p, model=str(tmp_path / "nope.keras"), reports=str(tmp_path / "r"))
    with pytest.raises(GruflowError, match="nope.keras"):
        evaluate.run(bad)


def _witten_bell_table(train_stream: np.ndarray, vocab: int) -> np.ndarray:
    """P(w | v) for every (v, w), from bigram_log_probs one pair at a time."""
    table = np.zeros((vocab, vocab))
    for v in range(vocab):
        for w in range(vocab):
            lp = evaluate.bigram_log_probs(train_stream, np.array([v, w], np.int32), vocab)
            assert lp.shape == (1,)
            table[v, w] = math.exp(lp[0])
    return table


def test_bigram_log_probs_normalise_for_seen_and_unseen_contexts():
    vocab = 9
    train_stream = np.array([2, 4, 5, 4, 5, 4, 6, 7, 4, 5, 3, 8], np.int32)
    table = _witten_bell_table(train_stream, vocab)
    seen, unseen = 4, 1  # 4 is followed by 5, 5, 6, 5; 1 never occurs (8 only as last token)
    np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(table[seen].sum(), 1.0, atol=1e-6)
    uni = np.exp(unigram_log_probs(train_stream, vocab).astype(np.float64))
    np.testing.assert_allclose(table[unseen], uni, rtol=1e-6)
    np.testing.assert_allclose(table[8], uni, rtol=1e-6)  # 8 is never a context
    # Witten-Bell by hand for context 4: c(4)=4, T(4)=2 distinct successors {5, 6}.
    np.testing.assert_allclose(table[seen, 5], (3 + 2 * uni[5]) / (4 + 2), rtol=1e-6)
    np.testing.assert_allclose(table[seen, 0], (0 + 2 * uni[0]) / (4 + 2), rtol=1e-6)
    assert table[seen, 5] > table[seen, 6] > uni[6]
    # A longer test stream gives one log-probability per transition, matching the table.
    test = np.array([4, 5, 4, 6, 1, 0, 8], np.int32)
    lp = evaluate.bigram_log_probs(train_stream, test, vocab)
    np.testing.assert_allclose(np.exp(lp), table[test[:-1], test[1:]], rtol=1e-6)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def test_score_model_nll_matches_manual_computation():
    vocab, seq_len = 20, 8
    cfg = load_params(ROOT / "params.yaml").model.model_copy(
        update={"units": 8, "embedding_dim": 8, "gru_layers": 1, "dropout": 0.0})
    keras.utils.set_random_seed(0)
    model = build_model(cfg, vocab)
    stream = np.random.default_rng(9).integers(4, vocab, size=30).astype(np.int32)
    stream[0] = BOS
    s = evaluate.score_model(model, stream, seq_len, batch_size=2)
    # By hand: window k reads stream[k*T : k*T+T] (the last one shorter, unpadded) and
    # predicts the next token at every position.
    nll, hits1, n = 0.0, 0, 0
    for start in range(0, stream.size - 1, seq_len):
        x = stream[start:start + seq_len][: stream.size - 1 - start]
        y = stream[start + 1:start + 1 + x.size]
        logp = _log_softmax(np.asarray(model(x[None], training=False))[0])
        nll -= float(logp[np.arange(x.size), y].sum())
        hits1 += int((logp.argmax(-1) == y).sum())
        n += x.size
    assert n == stream.size - 1
    assert s["tokens"] == n
    assert s["nll"] == pytest.approx(nll, rel=1e-5)
    assert s["top1"] == pytest.approx(hits1 / n)
    assert s["top1"] <= s["top5"] <= 1.0
    # Same answer whatever the batch size.
    assert evaluate.score_model(model, stream, seq_len, 64)["nll"] == pytest.approx(nll, rel=1e-5)


def test_score_model_counts_each_target_once_with_padding():
    x, y, w = make_windows(np.arange(4, 4 + 21, dtype=np.int32), 6)
    assert x.shape == (4, 6) and w.sum() == 20
    assert (y[w == 0] == PAD).all()


