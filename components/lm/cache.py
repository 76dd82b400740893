"""Continuous cache pointer (Grave et al. 2017, "Improving Neural Language Models with a
Continuous Cache") over a trained LM: an inference-time gain, reported next to the static
numbers, never instead of them.

Usage: `nll, w = cache_nll(model, x, y, w, size, theta, lam)` on (K, S, T) streams from
make_streams; `choose(...)` picks (θ, λ) on the val split; `cache_metrics(...)` is evaluate's,
`score_texts_cache(...)` the `score` mode's (pyfunc and `gruflow score`).

    p(w | t) = (1 - λ) p_model(w | t) + λ p_cache(w | t)
    p_cache(w | t) = Σ_{i ∈ cache(t), y_i = w} exp(θ h_t·h_i) / Σ_{i ∈ cache(t)} exp(θ h_t·h_i)

h_t is the vector the output layer reads at position t (the `combine` layer's output), y_i the
target read at i, cache(t) the last `size` real targets (never `<bos>`/`<pad>`) before t in the
same stream — across window boundaries, as the GRU state is carried. With an empty cache (the
first position of a stream) p = p_model. Both parts are distributions, so p is one.
"""

from __future__ import annotations

import math

import numpy as np

from components.contract import encode, text_bytes
from components.lm.inference import score_texts, text_streams, zero_states
from components.lm.windows import make_streams, stream_count

CHUNK = 256  # rows of the (rows, rows + size) score matrix computed at once: bounded memory


def feature_model(model):
    """A view of the LM: (ids, h_0...) -> (logits, h_t fed to the output layer, h_T...)."""
    import keras

    features = model.get_layer("combine").output  # (B, T, H)
    return keras.Model(model.inputs, [model.outputs[0], features, *model.outputs[1:]])


def stream_features(model, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(-log p_model(y) (K, S, T), features (K, S, T, H)) of (K, S, T) windows read with the
    GRU state carried from window k - 1 to window k (as components/lm/inference.stream_stats)."""
    view = feature_model(model)
    states = zero_states(model, x.shape[1])
    nll, feats = [], []
    for k in range(len(x)):
        out = view.predict_on_batch([x[k], *states] if states else x[k])
        logits = np.asarray(out[0], np.float64)  # (S, T, V)
        m = logits.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]  # (S, T)
        nll.append(logz - np.take_along_axis(logits, y[k][..., None], -1)[..., 0])
        feats.append(np.asarray(out[1], np.float32))
        states = [np.asarray(s, np.float32) for s in out[2:]]
    return np.stack(nll), np.stack(feats)


def in_stream_order(a: np.ndarray) -> np.ndarray:
    """(K, S, T, ...) -> (S, K*T, ...): each stream's positions in reading order."""
    K, S, T = a.shape[:3]
    return np.swapaxes(a, 0, 1).reshape(S, K * T, *a.shape[3:])


def cache_probs(
    feats: np.ndarray, targets: np.ndarray, weights: np.ndarray, size: int, theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """(p_cache(targets[s, t]) (S, L), whether position t had a non-empty cache (S, L)) for
    streams of features (S, L, H), targets and weights (S, L)."""
    S, L = targets.shape
    p = np.zeros((S, L))
    has = np.zeros((S, L), bool)
    for s in range(S):
        h = feats[s].astype(np.float64)
        for a in range(0, L, CHUNK):
            b, lo = min(a + CHUNK, L), max(a - size, 0)
            t = np.arange(a, b)[:, None]
            i = np.arange(lo, b)[None, :]
            allowed = (i < t) & (i >= t - size) & (weights[s, lo:b][None, :] > 0)
            dots = np.where(allowed, h[a:b] @ h[lo:b].T, -np.inf)  # (rows, cols): h_t·h_i
            m = dots.max(1, keepdims=True)
            # θ (h_t·h_i - max) <= 0: a huge θ (a request may send 1e308) gives 0 or -inf,
            # i.e. all weight on the nearest states, where θ h_t·h_i - θ max would be inf - inf
            with np.errstate(over="ignore"):
                scores = theta * (dots - np.where(np.isfinite(m), m, 0.0))
            e = np.where(allowed, np.exp(scores), 0.0)
            match = targets[s, lo:b][None, :] == targets[s, a:b][:, None]
            den = e.sum(1)
            has[s, a:b] = den > 0
            p[s, a:b] = np.where(den > 0, (e * match).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    return p, has


def mix(nll: np.ndarray, p_cache: np.ndarray, has: np.ndarray, lam: float) -> np.ndarray:
    """-log((1 - λ) p_model + λ p_cache) where the cache had entries, else -log p_model."""
    with np.errstate(divide="ignore"):  # λ = 1 and a target not in the cache: infinite NLL
        mixed = -np.log((1.0 - lam) * np.exp(-nll) + lam * p_cache)
    return np.where(has, mixed, nll)


def cache_nll(
    model, x: np.ndarray, y: np.ndarray, w: np.ndarray, size: int, theta: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """(per-position NLL with the cache, weights), both (S, K*T) in stream order."""
    nll, feats = stream_features(model, x, y)
    y, w = in_stream_order(y), in_stream_order(w)
    p, has = cache_probs(in_stream_order(feats), y, w, size, theta)
    return np.where(w > 0, mix(in_stream_order(nll), p, has, lam), 0.0), w


def choose(
    nll: np.ndarray,
    feats: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    size: int,
    thetas: list[float],
    lambdas: list[float],
) -> tuple[float, float, float]:
    """(θ, λ, mean NLL) with the lowest mean NLL over the grid; ties go to the first pair."""
    best = (thetas[0], lambdas[0], math.inf)
    for theta in thetas:
        p, has = cache_probs(feats, y, w, size, theta)
        for lam in lambdas:
            mean = float(np.where(w > 0, mix(nll, p, has, lam), 0.0).sum() / w.sum())
            if mean < best[2]:
                best = (theta, lam, mean)
    return best


def cache_metrics(
    model,
    val: np.ndarray,
    test: np.ndarray,
    seq_len: int,
    batch_size: int,
    cache,
    words: int,
    n_bytes: int,
) -> dict:
    """Evaluate's `*_cache` keys: (θ, λ) chosen on val from the evaluate.cache grids, then
    test read as the static numbers read it (same streams, targets and denominators)."""
    x, y, w = make_streams(val, stream_count(val.size, seq_len, batch_size), seq_len)
    nll, feats = stream_features(model, x, y)
    theta, lam, val_nll = choose(
        in_stream_order(nll),
        in_stream_order(feats),
        in_stream_order(y),
        in_stream_order(w),
        cache.size,
        cache.thetas,
        cache.lambdas,
    )
    x, y, w = make_streams(test, stream_count(test.size, seq_len, batch_size), seq_len)
    per_pos, weight = cache_nll(model, x, y, w, cache.size, theta, lam)
    total, n = float(per_pos.sum()), float(weight.sum())
    return {
        "perplexity_cache": math.exp(total / n),
        "word_perplexity_cache": math.exp(total / words),
        "bits_per_byte_cache": total / math.log(2) / n_bytes,
        "val_perplexity_cache": math.exp(val_nll),
        "cache_size": cache.size,
        "cache_theta": theta,
        "cache_lambda": lam,
    }


def score_texts_cache(
    model,
    tokenizer,
    texts: list[str],
    seq_len: int,
    cache: tuple[int, float, float],
    batch_size: int = 64,
) -> list[dict]:
    """inference.score_texts' rows, plus `nll_cache`, `perplexity_cache` and
    `bits_per_byte_cache` when cache = (size, θ, λ) has size > 0. The static columns come from
    score_texts itself, so they are the same with or without the cache."""
    rows = score_texts(model, tokenizer, texts, seq_len, batch_size)
    size, theta, lam = cache
    if not size:
        return rows
    ids = encode(tokenizer, texts)
    for lo in range(0, len(texts), batch_size):
        x, y, w = text_streams(ids[lo : lo + batch_size], seq_len)  # (K, S, T)
        totals = cache_nll(model, x, y, w, size, theta, lam)[0].sum(axis=1)  # (S,)
        for row, text, total in zip(
            rows[lo : lo + batch_size], texts[lo : lo + batch_size], totals, strict=True
        ):
            row |= {
                "nll_cache": float(total),
                "perplexity_cache": math.exp(min(total / row["tokens"], 700.0)),
                "bits_per_byte_cache": total / math.log(2) / text_bytes(text),
            }
    return rows
