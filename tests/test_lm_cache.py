"""The continuous cache pointer (components/lm/cache.py): the definition checked by brute force,
the gain on repeating text, and `score`'s extra columns next to unchanged static ones."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from components.contract import BOS, EOS, PAD  # noqa: E402
from components.lm.cache import (  # noqa: E402
    cache_metrics,
    cache_probs,
    choose,
    mix,
    stream_features,
)
from components.lm.inference import (  # noqa: E402
    BadRequest,
    cache_choice,
    check_params,
    stream_stats,
)
from components.lm.model import build_model  # noqa: E402
from components.lm.windows import make_streams  # noqa: E402
from components.params import load_params  # noqa: E402
from tests.test_lm_model import ROOT  # noqa: E402

V = 40


def brute_force(feats, targets, weights, size, theta):
    """p_cache(target_t) straight from the definition, position by position."""
    feats = feats.astype(np.float64)
    S, L = targets.shape
    p, has = np.zeros((S, L)), np.zeros((S, L), bool)
    for s in range(S):
        for t in range(L):
            pool = [i for i in range(max(0, t - size), t) if weights[s, i] > 0]
            if not pool:
                continue
            e = np.array([math.exp(theta * float(feats[s, t] @ feats[s, i])) for i in pool])
            hit = np.array([targets[s, i] == targets[s, t] for i in pool])
            p[s, t], has[s, t] = e[hit].sum() / e.sum(), True
    return p, has


@pytest.mark.parametrize("size", [1, 3, 300])
def test_cache_probs_equal_the_definition(size):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 300, 5)).astype(np.float32)
    targets = rng.integers(4, 9, size=(2, 300))
    weights = (rng.random((2, 300)) > 0.2).astype(np.float32)  # some positions are no target
    got, has = cache_probs(feats, targets, weights, size, 0.7)
    want, want_has = brute_force(feats, targets, weights, size, 0.7)
    np.testing.assert_array_equal(has, want_has)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_mix_is_a_distribution_and_empty_cache_leaves_the_model_alone():
    nll = np.array([[2.0, 1.0, 3.0]])
    p = np.array([[0.0, 0.5, 0.0]])
    has = np.array([[False, True, True]])
    out = mix(nll, p, has, 0.25)
    assert out[0, 0] == nll[0, 0]  # empty cache: p_model
    assert out[0, 1] == pytest.approx(-math.log(0.75 * math.exp(-1.0) + 0.25 * 0.5))
    assert out[0, 2] == pytest.approx(nll[0, 2] - math.log(0.75))  # target not in the cache
    # over a whole vocabulary the mixture sums to one
    pm = np.random.default_rng(1).dirichlet(np.ones(6))
    pc = np.random.default_rng(2).dirichlet(np.ones(6))
    total = np.exp(-mix(-np.log(pm)[None], pc[None], np.ones((1, 6), bool), 0.3)).sum()
    assert total == pytest.approx(1.0)


def repeating(n_docs: int, period: int, reps: int, seed: int) -> np.ndarray:
    """Documents that each repeat one random phrase: the next token is in the recent past."""
    rng = np.random.default_rng(seed)
    docs = [[BOS, *np.tile(rng.integers(4, V, period), reps), EOS] for _ in range(n_docs)]
    return np.concatenate(docs).astype(np.int32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    cfg = load_params(ROOT / "params.yaml").model.model_copy(
        update={"units": 16, "embedding_dim": 8, "gru_layers": 1, "embedding_init": "random"}
    )
    return build_model(cfg, V)


def test_cache_must_help_on_repeating_text_and_theta_lambda_come_from_val(model):
    """An untrained model cannot know a phrase repeats; the cache sees it: test perplexity with
    the cache strictly lower. θ and λ are the grid's best on val."""
    val, test = repeating(4, 7, 12, seed=1), repeating(4, 9, 10, seed=2)
    cache = load_params(ROOT / "params.yaml").evaluate.cache.model_copy(
        update={"size": 100, "thetas": [0.1, 1.0], "lambdas": [0.05, 0.5]}
    )
    m = cache_metrics(
        model, val, test, seq_len=8, batch_size=4, cache=cache, words=100, n_bytes=1000
    )
    x, y, w = make_streams(test, 4, 8)
    static = float((stream_stats(model, x, y)[0] * w).sum())
    static_ppl = math.exp(static / w.sum())
    assert m["perplexity_cache"] < 0.8 * static_ppl
    assert m["bits_per_byte_cache"] < static / math.log(2) / 1000
    x, y, w = make_streams(val, 4, 8)
    nll, feats = stream_features(model, x, y)
    swap = lambda a: np.swapaxes(a, 0, 1).reshape(4, -1, *a.shape[3:])  # noqa: E731
    theta, lam, best = choose(
        swap(nll), swap(feats), swap(y), swap(w), 100, [0.1, 1.0], [0.05, 0.5]
    )
    assert (m["cache_theta"], m["cache_lambda"]) == (theta, lam)
    assert m["val_perplexity_cache"] == pytest.approx(math.exp(best))
    # the view's static NLL is the static path's: same model, same streams
    np.testing.assert_allclose(nll, stream_stats(model, x, y)[0], rtol=1e-6)


def test_padding_and_bos_never_enter_the_cache():
    feats = np.ones((1, 4, 2), np.float32)
    targets = np.array([[BOS, PAD, 5, 5]])
    weights = np.array([[0.0, 0.0, 1.0, 1.0]])
    p, has = cache_probs(feats, targets, weights, 10, 1.0)
    assert not has[0, :3].any() and has[0, 3] and p[0, 3] == 1.0


def test_score_cache_params_checked_and_model_choice_by_default():
    assert cache_choice(check_params({"mode": "score"}), None)[0] == 0  # no choice: off
    own = {"size": 200, "theta": 0.3, "lambda": 0.2}
    assert cache_choice(check_params({"mode": "score"}), own) == (200, 0.3, 0.2)
    assert cache_choice(check_params({"cache_size": 0}), own)[0] == 0
    assert cache_choice(check_params({"cache_lambda": 0.5}), own) == (200, 0.3, 0.5)
    for bad in (
        {"cache_size": -2},
        {"cache_size": 10**6},
        {"cache_theta": 0},
        {"cache_lambda": 1.5},
        {"cache_lambda": 1},  # the cache alone: an unseen token's NLL is inf, not JSON
        {"cache_theta": float("nan")},
        {"cache_size": True},
    ):
        with pytest.raises(BadRequest, match=next(iter(bad))):
            check_params(bad)


def test_a_huge_theta_is_the_nearest_state_not_nan():
    """θ is only bounded below (a served `cache_theta` may be 1e308): θ h_t·h_i then overflows,
    and the cache must become the limit of the definition (all weight on the largest h_t·h_i),
    never NaN."""
    rng = np.random.default_rng(0)
    feats = (rng.normal(size=(1, 40, 5)) * 3).astype(np.float32)
    targets = rng.integers(4, 9, size=(1, 40))
    weights = np.ones((1, 40), np.float32)
    with np.errstate(over="ignore"):
        got, has = cache_probs(feats, targets, weights, 10, 1.7e308)
    assert np.isfinite(got).all()
    h = feats[0].astype(np.float64)
    for t in range(1, 40):
        pool = np.arange(max(0, t - 10), t)
        nearest = pool[np.argmax(h[pool] @ h[t])]
        assert got[0, t] == float(targets[0, nearest] == targets[0, t]) and has[0, t]
    np.testing.assert_allclose(got, cache_probs(feats, targets, weights, 10, 1e6)[0])


def test_an_evaluate_grid_with_lambda_one_is_refused_naming_the_key():
    """λ = 1 drops the model: every target the cache has not seen gets infinite NLL, and
    metrics.json would hold `Infinity` (not JSON)."""
    from pydantic import ValidationError

    from components.params import Cache

    with pytest.raises(ValidationError, match="lambdas"):
        Cache.model_validate({"size": 10, "thetas": [0.3], "lambdas": [0.1, 1.0]})
