"""components/lm/inference.py: sampling the next token (greedy, top-k, seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from components.lm.inference import sample_next


def _logits(seed: int, n: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=n).astype(np.float32)


def test_sample_next_temperature_zero_is_argmax():
    rng = np.random.default_rng(0)
    for seed in range(20):
        z = _logits(seed)
        assert sample_next(z, 0.0, 0, rng) == int(np.argmax(z))
        assert sample_next(z, 0.0, 5, rng) == int(np.argmax(z))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 5.0])
def test_sample_next_top_k_one_is_argmax(temperature):
    rng = np.random.default_rng(1)
    for seed in range(20):
        z = _logits(seed)
        before = z.copy()
        assert sample_next(z, temperature, 1, rng) == int(np.argmax(z))
        np.testing.assert_array_equal(z, before)  # the caller's logits are not modified


def test_sample_next_top_k_restricts_support_and_follows_softmax():
    z = _logits(3, n=8)
    rng = np.random.default_rng(2)
    top3 = set(np.argsort(z)[-3:].tolist())
    assert {sample_next(z, 1.0, 3, rng) for _ in range(300)} <= top3
    draws = np.array([sample_next(z, 2.0, 0, rng) for _ in range(4000)])
    freq = np.bincount(draws, minlength=z.size) / draws.size
    p = np.exp(z / 2.0 - (z / 2.0).max())
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.03)


def test_sample_next_same_seed_same_samples():
    z = _logits(4)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_next(z, 1.5, 10, rng) for _ in range(40)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
