"""components/lm/inference.py: sampling the next token (greedy, top-k, seeded)."""

from __future__ import annotations

from itertools import groupby

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


def test_penalize_divides_probability_by_penalty_per_occurrence():
    from components.lm.inference import penalize

    logits = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
    out = penalize(logits, np.array([0, 1, 1]), 2.0)
    assert out == pytest.approx([2.0 - np.log(2), -1.0 - 2 * np.log(2), 0.5, 3.0])
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # input untouched
    assert penalize(logits, np.array([0, 1]), 1.0).tolist() == logits.tolist()
    p = np.exp(out - out.max()) / np.exp(out - out.max()).sum()
    q = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert (p[1] / p[3]) == pytest.approx((q[1] / q[3]) / 4)  # seen twice: / 2²


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    draws = {sample_next(logits, 1.0, 0, rng, top_p=0.7) for _ in range(400)}
    assert draws == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    draws = {sample_next(logits, 1.0, 0, rng, top_p=0.9) for _ in range(400)}
    assert draws == {0, 1, 2}
    assert {sample_next(logits, 1.0, 0, rng, top_p=0.01) for _ in range(50)} == {0}


def _biased_model(bias_of: dict[int, float], vocab: int):
    """A real (tiny) gruflow LM whose logits are its output bias whatever the input: greedy
    generation then repeats the likeliest token for ever, the `我们们们们` failure."""
    import keras

    from components.lm.model import build_model
    from components.params import load_params

    keras.utils.set_random_seed(0)
    cfg = load_params().model.model_copy(
        update={"units": 8, "embedding_dim": 8, "embedding_init": "random"}
    )
    model = build_model(cfg, vocab)
    kernel, bias = model.get_layer("logits").get_weights()
    bias[:] = -5.0
    for token, value in bias_of.items():
        bias[token] = value
    model.get_layer("logits").set_weights([np.zeros_like(kernel), bias])
    return model


def test_repetition_penalty_stops_greedy_repeats_deterministically():
    from components.lm.inference import generate
    from components.params import load_params
    from components.tokenize import train_tokenizer

    text = "我们是学生他们是老师你们好"
    tok = train_tokenizer(
        iter([text] * 4),
        load_params().tokenize.model_copy(
            update={"kind": "char", "vocab_size": 64, "min_frequency": 1}
        ),
    )
    chars = list(dict.fromkeys(text))[:6]
    ids = [tok.token_to_id(c) for c in chars]
    model = _biased_model({i: 3.0 - 0.05 * r for r, i in enumerate(ids)}, tok.get_vocab_size())

    def greedy(penalty: float) -> str:
        return generate(model, tok, "好", 12, 0.0, 0, 0, 16, repetition_penalty=penalty)

    assert greedy(1.0) == chars[0] * 12  # no penalty: one character over and over
    penalised = greedy(2.0)
    assert penalised == greedy(2.0)  # deterministic
    assert penalised[:6] == "".join(chars)  # each seen token loses to the next unseen one
    longest = max(len(list(run)) for _, run in groupby(penalised))
    assert longest < max(len(list(run)) for _, run in groupby(greedy(1.0))) == 12
