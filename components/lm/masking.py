"""The masked-LM objective's data side (pure NumPy): windows of a token stream, the seeded
choice of positions to predict and their 80/10/10 corruption, and the unigram baseline.

Usage: `x, y, w = mask_windows(token_windows(stream, T), 0.15, [seed, epoch], vocab)`.

A window's candidates are its real tokens: `<pad>` and `<bos>` are never chosen (a `<bos>` is
free to predict: it always follows `<eos>`), nor is an `<eos>` followed by `<bos>` or `<pad>`
in its window (the model sees both sides, so that next token gives it away: a free target
would inflate masked accuracy and perplexity); an `<eos>` at a window's last position is.
Of a window's n candidates exactly max(1, round(fraction·n)) are chosen, so every window,
short or long, trains on the same share; each chosen token becomes `<mask>` with probability
0.8, a random non-special token with 0.1, and stays as it is with 0.1 (so the model cannot
tell a kept token from context alone). The loss weight is 1 on chosen positions and 0
everywhere else.
"""

from __future__ import annotations

import numpy as np

from components.contract import BOS, EOS, MASK, PAD, SPECIALS
from components.errors import GruflowError

# Evaluate, validation and the served `score` use one fixed mask, drawn from this seed: the
# same positions for every model scored on the same text, so numbers compare across versions.
EVAL_MASK_SEED = 0
# ... and this share of positions, whatever train.mask_fraction a version was trained with.
EVAL_MASK_FRACTION = 0.15
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of chosen positions; the rest keep their token


def token_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """(N, T) windows of stride T covering every token once; the last one right-padded."""
    if stream.size < 2:
        raise GruflowError("token stream has fewer than 2 tokens — add text to this split")
    n = -(-stream.size // seq_len)
    padded = np.full(n * seq_len, PAD, dtype=np.int32)
    padded[: stream.size] = stream
    return padded.reshape(n, seq_len)  # (N, T)


def candidates(x: np.ndarray) -> np.ndarray:
    """Positions that may be chosen: every real token but `<bos>` and an `<eos>` whose next
    token (last axis) is `<bos>` or `<pad>` (bool, shape of x)."""
    nxt = np.full_like(x, -1)
    nxt[..., :-1] = x[..., 1:]
    given_away = (x == EOS) & ((nxt == BOS) | (nxt == PAD))
    return (x != PAD) & (x != BOS) & ~given_away


def choose(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly max(1, round(fraction · n)) of each window's n candidates, drawn uniformly."""
    cand = candidates(x)  # (N, T)
    n = cand.sum(axis=1)
    k = np.where(n > 0, np.maximum(1, np.rint(fraction * n)), 0).astype(np.int64)  # (N,)
    keys = np.where(cand, rng.random(x.shape), 2.0)  # non-candidates sort last
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    return rank < k[:, None]  # (N, T)


def corrupt(
    x: np.ndarray, chosen: np.ndarray, rng: np.random.Generator, vocab_size: int
) -> np.ndarray:
    """x with chosen positions replaced 80/10/10 by `<mask>` / a random non-special token /
    themselves."""
    u = rng.random(x.shape)
    to_mask = chosen & (u < MASK_SHARE)
    to_random = chosen & (u >= MASK_SHARE) & (u < MASK_SHARE + RANDOM_SHARE)
    out = x.copy()
    out[to_mask] = MASK
    out[to_random] = rng.integers(len(SPECIALS), vocab_size, size=int(to_random.sum()))
    return out


def mask_windows(windows: np.ndarray, fraction: float, seed, vocab_size: int):
    """(inputs, targets, weights) of (N, T) windows: the corrupted ids, the original ids and
    1.0 on the chosen positions (the only ones the loss sees). `seed` is anything
    np.random.default_rng takes, e.g. [train.seed, epoch]."""
    if vocab_size <= len(SPECIALS):
        raise GruflowError(f"vocabulary of {vocab_size} has no ordinary token to predict")
    rng = np.random.default_rng(seed)
    chosen = choose(windows, fraction, rng)
    inputs = corrupt(windows, chosen, rng, vocab_size)
    return inputs, windows.astype(np.int32), chosen.astype(np.float32)


def chosen_count(stream: np.ndarray, seq_len: int, fraction: float) -> int:
    """Positions one epoch of `stream` trains on (what tokens_per_epoch counts)."""
    x = token_windows(stream, seq_len)
    n = candidates(x).sum(axis=1)
    return int(np.where(n > 0, np.maximum(1, np.rint(fraction * n)), 0).sum())


def unigram_nll(train: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Summed NLL of `targets` under the add-one unigram of the train split's real tokens
    (the masked objective's baseline: it ignores the context on both sides)."""
    # every real token's frequency, an <eos> a candidate would skip included: the baseline sees
    # no context, and a window-final <eos> target must get <eos>'s true unigram probability
    real = train[(train != PAD) & (train != BOS)]
    counts = np.bincount(real, minlength=vocab_size).astype(np.float64)
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    return float(-logp[targets].sum())
