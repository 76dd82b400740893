"""The masked-LM objective: masking (components/lm/masking.py) and the bidirectional model
(components/lm/masked.py) on tiny sizes, CPU only."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from components.contract import BOS, EOS, MASK, PAD, SPECIALS  # noqa: E402
from components.errors import GruflowError  # noqa: E402
from components.lm import masking  # noqa: E402
from components.lm.masked import (  # noqa: E402
    MaskedTrainer,
    WindowAttention,
    build_masked_model,
    masked_attention_model,
)
from components.params import load_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
V, E, H, T, B = 41, 8, 12, 10, 3


def stream(n_docs: int = 400, length: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    docs = [[BOS, *rng.integers(len(SPECIALS), V, size=length), EOS] for _ in range(n_docs)]
    return np.concatenate(docs).astype(np.int32)


def test_exact_share_of_candidates_chosen_per_window_never_bos_or_pad():
    windows = masking.token_windows(stream(n_docs=7, length=13), T)  # last window padded
    assert (windows[-1] == PAD).any()
    x, y, w = masking.mask_windows(windows, 0.3, [0, 0], V)
    nxt = np.full_like(windows, -1)
    nxt[:, :-1] = windows[:, 1:]
    cand = (windows != PAD) & (windows != BOS) & ~((windows == EOS) & np.isin(nxt, [BOS, PAD]))
    n = cand.sum(1)
    assert (w.sum(1) == np.maximum(1, np.rint(0.3 * n))).all()
    assert not (w.astype(bool) & ~cand).any()  # <bos>, <pad>, a given-away <eos>: never
    assert (y == windows).all()  # targets are the original tokens
    assert (x[w == 0] == windows[w == 0]).all()  # unchosen positions untouched


def test_chosen_positions_are_replaced_80_10_10():
    windows = masking.token_windows(stream(), 32)
    x, y, w = masking.mask_windows(windows, 0.15, [3], V)
    chosen = w > 0
    n = chosen.sum()
    assert n > 1500
    as_mask = (x[chosen] == MASK).mean()
    kept = (x[chosen] == y[chosen]).mean()
    random = 1 - as_mask - kept
    # binomial standard error at n ~ 2000 is <= 0.011: 4 sigma bounds
    assert abs(as_mask - 0.8) < 0.045 and abs(random - 0.1) < 0.03
    # a random replacement may hit the original token (1 in V - 5): kept is 0.1 + that
    assert abs(kept - (0.1 + 0.1 / (V - len(SPECIALS)))) < 0.03
    # a random replacement is never a special token
    assert x[chosen & (x != MASK) & (x != y)].min() >= len(SPECIALS)
    assert (x[~chosen] != MASK).all()


def test_masking_is_seeded():
    windows = masking.token_windows(stream(n_docs=20), T)
    a = masking.mask_windows(windows, 0.15, [0, 1], V)
    b = masking.mask_windows(windows, 0.15, [0, 1], V)
    c = masking.mask_windows(windows, 0.15, [0, 2], V)
    assert all((p == q).all() for p, q in zip(a, b, strict=True))
    assert not (a[2] == c[2]).all()


def test_masking_bad_inputs_raise_one_line_errors():
    with pytest.raises(GruflowError, match="fewer than 2 tokens"):
        masking.token_windows(np.array([BOS], np.int32), T)
    with pytest.raises(GruflowError, match="no ordinary token"):
        masking.mask_windows(masking.token_windows(stream(2), T), 0.15, 0, len(SPECIALS))


def tiny_cfg(**update):
    base = load_params(ROOT / "params.yaml").model
    return base.model_copy(
        update={"units": H, "embedding_dim": E, "gru_layers": 2, "dropout": 0.1, **update}
    )


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_masked_model(tiny_cfg(), V)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(len(SPECIALS), V, size=(B, T), dtype=np.int32)


def test_bidirectional_shapes_and_every_position_sees_both_sides(model, ids):
    out = np.asarray(model(ids, training=False))
    assert out.shape == (B, T, V) and np.isfinite(out).all()
    assert model.get_layer("gru_0").output.shape[-1] == 2 * H  # forward + backward states
    changed = ids.copy()
    changed[:, -1] = (changed[:, -1] + 1 - len(SPECIALS)) % (V - len(SPECIALS)) + len(SPECIALS)
    later = np.asarray(model(changed, training=False))
    # a change at the last position reaches the first one (a causal LM's would not)
    assert not np.allclose(out[:, 0], later[:, 0])


def test_window_attention_matches_numpy_and_is_not_causal(model, ids):
    alpha = np.asarray(masked_attention_model(model)(ids))  # (B, T, T)
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
    assert (np.triu(alpha, 1) > 0).any()
    h = np.random.default_rng(2).normal(size=(2, 5, 6)).astype(np.float32)
    s = np.einsum("btd,bid->bti", h, h) / np.sqrt(6)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    context, got = WindowAttention(return_attention=True)(h)
    np.testing.assert_allclose(np.asarray(got), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(context), a @ h, rtol=1e-5, atol=1e-5)
    windowed = np.asarray(WindowAttention(window=2, return_attention=True)(h)[1])
    t, i = np.indices((5, 5))
    assert (windowed[:, np.abs(t - i) >= 2] < 1e-6).all()


def test_masked_model_and_trainer_round_trip_through_keras_files(tmp_path, model, ids):
    path = tmp_path / "mlm.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    assert again.name == "gruflow_mlm"
    np.testing.assert_allclose(np.asarray(again(ids)), np.asarray(model(ids)), rtol=1e-5)
    trainer = MaskedTrainer(model)
    trainer.save(tmp_path / "trainer.keras")
    back = keras.saving.load_model(tmp_path / "trainer.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(back.lm(ids)), np.asarray(model(ids)), rtol=1e-5)
    config = WindowAttention(heads=2, window=3).get_config()
    assert WindowAttention.from_config(config).get_config() == config


def test_loss_counts_only_the_chosen_positions(model):
    """The compiled loss equals the mean NLL over chosen positions: changing the targets of
    unchosen positions does not move it."""
    from components.lm.fit import loss

    t = load_params(ROOT / "params.yaml").train
    windows = masking.token_windows(stream(n_docs=4, length=20), T)
    x, y, w = masking.mask_windows(windows, 0.15, [0], V)
    fn = loss(t)
    logits = model(x, training=False)
    base = float(fn(y, logits, sample_weight=w))
    other = np.where(w > 0, y, (y + 1) % V)
    assert float(fn(other, logits, sample_weight=w)) == pytest.approx(base, rel=1e-6)
    logp = np.asarray(keras.ops.log_softmax(logits, axis=-1), np.float64)
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    assert base == pytest.approx((nll * w).sum() / w.sum(), rel=1e-5)


def test_an_eos_given_away_by_the_next_token_is_never_chosen():
    """A bidirectional model sees the `<bos>` or `<pad>` right after an `<eos>`: that `<eos>` is
    a free target (it would inflate masked accuracy and perplexity), so it is never chosen; an
    `<eos>` at a window's last position (nothing after it) still may be."""
    windows = masking.token_windows(stream(n_docs=60, length=5), T)  # many <eos> per window
    nxt = np.full_like(windows, -1)
    nxt[:, :-1] = windows[:, 1:]
    free = (windows == EOS) & ((nxt == BOS) | (nxt == PAD))
    assert free.sum() > 30
    for seed in range(5):
        _, _, w = masking.mask_windows(windows, 0.5, [seed], V)
        assert not (w.astype(bool) & free).any()
    cand = masking.candidates(windows)
    assert not (cand & free).any()
    assert cand[(windows == EOS) & (nxt == -1)].all()  # last position: not given away


def test_unigram_baseline_counts_every_eos_of_train():
    """The baseline ignores context: its <eos> probability is <eos>'s share of the train
    tokens, though most <eos> are never masked targets (their next token gives them away)."""
    train = stream(n_docs=50, length=9)
    real = train[(train != PAD) & (train != BOS)]
    p_eos = (np.sum(real == EOS) + 1) / (real.size + V)
    assert masking.unigram_nll(train, np.array([EOS]), V) == pytest.approx(-np.log(p_eos))
