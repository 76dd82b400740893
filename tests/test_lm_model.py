"""The GRU + causal attention LM (components/lm/model.py) on tiny sizes, CPU only."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from components.contract import PAD  # noqa: E402
from components.lm.carry import CarriedStateTrainer  # noqa: E402
from components.lm.inference import zero_states  # noqa: E402
from components.lm.model import (  # noqa: E402
    CausalAttention,
    WeightDropGRU,
    attention_model,
    build_model,
)
from components.params import load_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
V, E, H, T, B = 37, 8, 12, 10, 3


def tiny_cfg(**update):
    base = load_params(ROOT / "params.yaml").model
    return base.model_copy(
        update={"units": H, "embedding_dim": E, "gru_layers": 1, "dropout": 0.1, **update}
    )


def cold(model, ids) -> list:
    """The model's inputs for `ids` read from a cold start (zero GRU states)."""
    ids = np.asarray(ids, dtype=np.int32)
    return [ids, *zero_states(model, len(ids))]


def logits_of(model, ids) -> np.ndarray:
    return np.asarray(model(cold(model, ids), training=False)[0])


def np_attention(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direct NumPy reference: α_ti = softmax_i(h_i·h_t/√H) over i <= t, c_t = Σ_i α_ti h_i."""
    h = h.astype(np.float64)
    bsz, steps, dim = h.shape
    alpha = np.zeros((bsz, steps, steps))
    for b in range(bsz):
        for t in range(steps):
            s = np.array([h[b, i] @ h[b, t] for i in range(t + 1)]) / np.sqrt(dim)
            e = np.exp(s - s.max())
            alpha[b, t, : t + 1] = e / e.sum()
    return alpha @ h, alpha


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model(tiny_cfg(gru_layers=2), V)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(1).integers(4, V, size=(B, T), dtype=np.int32)


def test_output_shape_is_batch_time_vocab(model, ids):
    out = logits_of(model, ids)
    assert out.shape == (B, T, V)
    assert np.isfinite(out).all()
    # Variable length: the same model accepts another T.
    assert logits_of(model, ids[:, :4]).shape == (B, 4, V)


def test_causal_future_tokens_never_change_past_logits(model, ids):
    base = ids[0]
    variants = [base]
    for k in range(T):
        changed = base.copy()
        changed[k] = 4 + (changed[k] - 4 + 7) % (V - 4)  # a different real token
        assert changed[k] != base[k]
        variants.append(changed)
    out = logits_of(model, np.stack(variants))  # (T+1, T, V)
    ref = out[0]
    for k in range(T):
        got = out[k + 1]
        np.testing.assert_allclose(
            got[:k],
            ref[:k],
            rtol=0,
            atol=1e-6,
            err_msg=f"position < {k} changed by the token at {k}",
        )
        assert np.abs(got[k:] - ref[k:]).max() > 1e-4, f"token at {k} had no effect at >= {k}"
        assert np.abs(got[k] - ref[k]).max() > 1e-4, f"token at {k} had no effect at {k}"


def test_attention_model_weights_are_causal_and_normalised(model, ids):
    alpha = np.asarray(attention_model(model)(cold(model, ids), training=False))
    assert alpha.shape == (B, T, T)
    above = np.triu(np.ones((T, T), dtype=bool), k=1)
    assert np.all(alpha[:, above] == 0.0)
    np.testing.assert_allclose(alpha.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(alpha[:, 0, 0], 1.0, atol=1e-6)
    assert (alpha[:, ~above] > 0).all()


def test_attention_model_matches_numpy_on_the_models_gru_states(model, ids):
    states_model = keras.Model(model.inputs, model.get_layer("attention").input)
    states = np.asarray(states_model(cold(model, ids), training=False))
    alpha = np.asarray(attention_model(model)(cold(model, ids), training=False))
    _, ref_alpha = np_attention(states)
    np.testing.assert_allclose(alpha, ref_alpha, atol=1e-5)


def test_causal_attention_equals_direct_numpy_computation():
    h = np.random.default_rng(2).normal(scale=1.5, size=(2, 7, 5)).astype(np.float32)
    context, alpha = CausalAttention(return_attention=True)(h)
    ref_context, ref_alpha = np_attention(h)
    np.testing.assert_allclose(np.asarray(alpha), ref_alpha, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(context), ref_context, rtol=1e-4, atol=1e-5)
    only_context = np.asarray(CausalAttention()(h))
    np.testing.assert_allclose(only_context, ref_context, rtol=1e-4, atol=1e-5)


def test_causal_attention_config_round_trip():
    h = np.random.default_rng(3).normal(size=(2, 6, 4)).astype(np.float32)
    layer = CausalAttention(return_attention=True, name="att")
    cfg = layer.get_config()
    assert cfg["return_attention"] is True
    clone = CausalAttention.from_config(cfg)
    assert clone.return_attention is True and clone.name == "att"
    for a, b in zip(layer(h), clone(h), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Through the registry, as the .keras loader does it.
    blob = keras.saving.serialize_keras_object(CausalAttention(name="plain"))
    again = keras.saving.deserialize_keras_object(blob, safe_mode=True)
    assert isinstance(again, CausalAttention) and again.return_attention is False
    np.testing.assert_array_equal(np.asarray(again(h)), np.asarray(layer(h)[0]))


def test_keras_file_round_trip_gives_identical_predictions(tmp_path, ids):
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(V, E)).astype(np.float32)
    uni = np.log(rng.dirichlet(np.ones(V))).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_model(tiny_cfg(), V, emb, uni)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(logits_of(loaded, ids), logits_of(model, ids))
    np.testing.assert_array_equal(
        np.asarray(attention_model(loaded)(cold(model, ids))),
        np.asarray(attention_model(model)(cold(model, ids))),
    )
    assert loaded.get_layer("embedding").trainable == model.get_layer("embedding").trainable


def test_embedding_starts_from_word2vec_matrix_and_bias_from_unigram():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(V, E)).astype(np.float32)
    uni = np.log(rng.dirichlet(np.ones(V))).astype(np.float32)
    model = build_model(tiny_cfg(), V, emb, uni)
    np.testing.assert_array_equal(np.asarray(model.get_layer("embedding").embeddings), emb)
    np.testing.assert_array_equal(np.asarray(model.get_layer("logits").bias), uni)
    # Without them: not the matrix, and a zero bias.
    plain = build_model(tiny_cfg(), V)
    assert not np.allclose(np.asarray(plain.get_layer("embedding").embeddings), emb)
    np.testing.assert_array_equal(np.asarray(plain.get_layer("logits").bias), np.zeros(V))


@pytest.mark.parametrize("trainable", [False, True])
def test_embedding_trainable_flag(trainable):
    emb = np.random.default_rng(6).normal(size=(V, E)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_model(tiny_cfg(embedding_trainable=trainable), V, emb)
    layer = model.get_layer("embedding")
    assert layer.trainable is trainable
    in_trainable = any(w is layer.embeddings for w in model.trainable_weights)
    assert in_trainable is trainable
    trainer = CarriedStateTrainer(model, 4)
    trainer.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(7).integers(4, V, size=(4, T), dtype=np.int32)
    trainer.train_on_batch(x, np.roll(x, -1, axis=1))
    moved = not np.array_equal(np.asarray(layer.embeddings), emb)
    assert moved is trainable


@pytest.mark.parametrize("shape", [(V, E + 1), (V - 1, E), (E, V)])
def test_wrong_shaped_embedding_matrix_raises(shape):
    with pytest.raises(ValueError, match="embedding matrix shape"):
        build_model(tiny_cfg(), V, np.zeros(shape, dtype=np.float32))


def test_right_padding_never_changes_real_token_losses(model):
    rng = np.random.default_rng(8)
    n_real = 7
    stream = rng.integers(4, V, size=n_real + 1, dtype=np.int32)
    x_real, y_real = stream[None, :-1], stream[None, 1:]  # (1, n_real - ... )
    x_pad = np.concatenate([x_real, np.full((1, T - x_real.shape[1]), PAD, np.int32)], axis=1)
    assert x_pad.shape == (1, T)
    short, padded = logits_of(model, x_real), logits_of(model, x_pad)
    np.testing.assert_allclose(padded[:, : x_real.shape[1]], short, rtol=0, atol=1e-6)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    l_short = np.asarray(loss(y_real, short))
    l_pad = np.asarray(loss(y_real, padded[:, : x_real.shape[1]]))
    np.testing.assert_allclose(l_pad, l_short, rtol=1e-6, atol=1e-6)
    # The padded tail itself does produce (different) outputs, so the comparison is not vacuous.
    assert np.abs(padded[0, -1] - padded[0, x_real.shape[1] - 1]).max() > 1e-4


@pytest.mark.parametrize("heads,window", [(3, 0), (1, 3), (3, 2)])
def test_multi_head_windowed_attention_matches_numpy(heads, window):
    rng = np.random.default_rng(3)
    h = rng.normal(size=(2, 7, 6)).astype("float32")  # (B, T, H), 3 heads of d = 2
    context, alpha = CausalAttention(heads, window, return_attention=True)(h)
    d = 6 // heads
    expected_ctx = np.zeros_like(h)
    expected_alpha = np.zeros((2, 7, 7))
    for n in range(heads):
        x = h[..., n * d : (n + 1) * d]
        scores = np.einsum("btd,bid->bti", x, x) / np.sqrt(d)
        t, i = np.arange(7)[:, None], np.arange(7)[None, :]
        allowed = (i <= t) & ((t - i < window) if window else True)
        scores = np.where(allowed, scores, -np.inf)
        a = np.exp(scores - scores.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        expected_ctx[..., n * d : (n + 1) * d] = np.einsum("bti,bid->btd", a, x)
        expected_alpha += a / heads
    np.testing.assert_allclose(np.asarray(context), expected_ctx, atol=1e-5)
    np.testing.assert_allclose(np.asarray(alpha), expected_alpha, atol=1e-5)
    if window:
        assert np.all(np.asarray(alpha)[:, 6, : 7 - window] == 0)  # outside the window


def test_tied_embeddings_share_one_matrix_and_round_trip(tmp_path, ids):
    emb = np.random.default_rng(0).normal(size=(V, 8)).astype("float32")
    model = build_model(tiny_cfg(tie_embeddings=True), V, emb)
    layer = model.get_layer("embedding")
    np.testing.assert_array_equal(np.asarray(layer.embeddings), emb)
    assert not any(w.path.startswith("logits") for w in model.weights)  # no separate output
    untied = build_model(tiny_cfg(tie_embeddings=False), V, emb)
    assert model.count_params() < untied.count_params()
    model.save(tmp_path / "tied.keras")
    again = keras.saving.load_model(tmp_path / "tied.keras", safe_mode=True)
    np.testing.assert_array_equal(logits_of(model, ids), logits_of(again, ids))


def test_smoothed_token_loss_matches_formula_and_reduces_to_nll():
    from components.lm.model import SmoothedTokenLoss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype("float32")
    y = rng.integers(0, 5, size=(2, 3))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    for eps in (0.0, 0.2):
        got = np.asarray(SmoothedTokenLoss(eps, reduction=None)(y, logits))
        np.testing.assert_allclose(got, (1 - eps) * nll - eps * logp.mean(-1), rtol=1e-5)
    loss = SmoothedTokenLoss.from_config(SmoothedTokenLoss(0.3).get_config())
    assert loss.epsilon == 0.3


# --- state carried across windows -------------------------------------------------------------


def one_pass_model(model, block: int) -> keras.Model:
    """The same model and weights with attention limited to blocks of `block` steps."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("CausalAttention"):
            layer["config"]["block"] = block
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


@pytest.mark.parametrize("block", [1, 3, 4])
def test_block_attention_is_attention_within_each_block(block):
    h = np.random.default_rng(9).normal(size=(2, 10, 6)).astype("float32")  # (B, T, H)
    context, alpha = CausalAttention(block=block, return_attention=True)(h)
    for lo in range(0, 10, block):  # each block alone is plain causal attention
        ref_ctx, ref_alpha = np_attention(h[:, lo : lo + block])
        np.testing.assert_allclose(np.asarray(context)[:, lo : lo + block], ref_ctx, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(alpha)[:, lo : lo + block, lo : lo + block], ref_alpha, atol=1e-5
        )
        assert np.all(np.asarray(alpha)[:, lo : lo + block, :lo] == 0)  # nothing before the block


def test_windows_with_carried_state_equal_one_pass_with_block_attention(model):
    """Reading a stream in windows of T, each from the GRU states the previous one ended with,
    is the same computation as one call on the whole stream with attention in blocks of T."""
    stream = np.random.default_rng(10).integers(4, V, size=(B, 3 * T), dtype=np.int32)
    states, parts = zero_states(model, B), []
    for k in range(3):
        out = model([stream[:, k * T : (k + 1) * T], *states], training=False)
        parts.append(np.asarray(out[0]))
        states = [np.asarray(s) for s in out[1:]]
    carried = np.concatenate(parts, axis=1)  # (B, 3T, V)
    whole = logits_of(one_pass_model(model, T), stream)
    np.testing.assert_allclose(carried, whole, atol=1e-4)
    # Not vacuous: a cold start in window 2 changes its logits.
    cold_second = logits_of(model, stream[:, T : 2 * T])
    assert np.abs(cold_second - carried[:, T : 2 * T]).max() > 1e-3


def test_final_states_are_the_gru_states_at_the_last_step(model, ids):
    out = model(cold(model, ids), training=False)
    assert len(out) == 1 + 2  # logits + one state per GRU layer
    top = keras.Model(model.inputs, model.get_layer("gru_1").output[0])
    seq = np.asarray(top(cold(model, ids), training=False))  # (B, T, H)
    np.testing.assert_allclose(np.asarray(out[2]), seq[:, -1], atol=1e-6)
    assert all(np.asarray(s).shape == (B, H) for s in out[1:])


def test_carried_state_trainer_stores_states_and_round_trips(tmp_path, ids):
    keras.utils.set_random_seed(0)
    lm = build_model(tiny_cfg(dropout=0.0), V)
    trainer = CarriedStateTrainer(lm, B)
    trainer.compile(
        optimizer=keras.optimizers.SGD(0.0),  # lr 0: the weights stay put
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    trainer.train_on_batch(ids, np.roll(ids, -1, axis=1))
    h_T = np.asarray(lm(cold(lm, ids), training=False)[1])
    np.testing.assert_allclose(np.asarray(trainer.carried[0]), h_T, atol=1e-5)
    trainer.save(tmp_path / "trainer.keras")
    again = keras.saving.load_model(tmp_path / "trainer.keras", safe_mode=True)
    assert isinstance(again, CarriedStateTrainer) and again.streams == B
    np.testing.assert_array_equal(logits_of(again.lm, ids), logits_of(lm, ids))
    trainer.reset_state()
    assert not np.asarray(trainer.carried[0]).any()


# --- regularisation that keeps the cuDNN kernel -----------------------------------------------


def dropped(model, layer: str, ids) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of a dropout layer in training mode."""
    probe = keras.Model(model.inputs, [model.get_layer(layer).input, model.get_layer(layer).output])
    a, b = probe(cold(model, ids), training=True)
    return np.asarray(a), np.asarray(b)


def test_embedding_dropout_drops_whole_word_vectors(ids):
    keras.utils.set_random_seed(0)
    model = build_model(tiny_cfg(embedding_dropout=0.5, dropout=0.0), V)
    x, y = dropped(model, "embedding_dropout", np.tile(ids, (8, 1)))  # (B, T, E)
    zero = (y == 0).all(-1)  # (B, T): the token's whole vector is gone
    assert 0.3 < zero.mean() < 0.7
    np.testing.assert_allclose(y[~zero], x[~zero] / 0.5, rtol=1e-6)  # the rest is rescaled
    assert ((y == 0).any(-1) == zero).all()  # never part of a vector
    np.testing.assert_array_equal(logits_of(model, ids), logits_of(model, ids))  # off at inference


def test_locked_dropout_keeps_one_mask_for_every_time_step(ids):
    keras.utils.set_random_seed(0)
    model = build_model(tiny_cfg(locked_dropout=True, dropout=0.5), V)
    for layer in ("dropout_embedding", "dropout_gru_0", "dropout_combine"):
        x, y = dropped(model, layer, ids)  # (B, T, C)
        kept = y != 0
        assert ((kept | (x == 0)) == kept[:, :1] | (x == 0)).all(), layer  # same across T
        assert 0.2 < kept[:, 0].mean() < 0.8
    unlocked = build_model(tiny_cfg(locked_dropout=False, dropout=0.5), V)
    _, y = dropped(unlocked, "dropout_gru_0", ids)
    assert ((y != 0) != (y[:, :1] != 0)).any()  # plain dropout: a new mask at every step


def test_regularised_model_keeps_cudnn_eligible_grus_and_round_trips(tmp_path, ids):
    model = build_model(tiny_cfg(locked_dropout=True, embedding_dropout=0.2, gru_layers=2), V)
    for i in range(2):
        gru = model.get_layer(f"gru_{i}")
        # cuDNN's conditions (keras GRU): default activations, reset_after, no dropout
        # inside the cell, not unrolled.
        assert gru.cell.recurrent_dropout == 0 and gru.cell.dropout == 0
        assert gru.cell.activation is keras.activations.tanh
        assert gru.cell.recurrent_activation is keras.activations.sigmoid
        assert gru.cell.reset_after and gru.cell.use_bias and not gru.unroll
        assert gru.use_cudnn == "auto"
    model.save(tmp_path / "reg.keras")
    again = keras.saving.load_model(tmp_path / "reg.keras", safe_mode=True)
    assert again.get_layer("dropout_gru_1").noise_shape == (None, 1, None)
    assert again.get_layer("embedding_dropout").rate == 0.2
    np.testing.assert_array_equal(logits_of(again, ids), logits_of(model, ids))


# --- DropConnect on the recurrent kernel (model.weight_drop) --------------------------------


def test_weight_drop_masks_the_recurrent_kernel_once_per_batch_in_training_only():
    """Training: one mask over W_hh for every step of the batch (the output equals a plain GRU
    run on W_hh ⊙ mask / (1 - p), the mask read off the gradient), a new one next batch.
    Inference: exactly the plain GRU."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(2).normal(size=(B, T, E)).astype(np.float32)
    layer = WeightDropGRU(H, 0.5, return_sequences=True)
    plain = keras.layers.GRU(H, return_sequences=True)
    layer.build(x.shape)
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), np.asarray(plain(x)))
    kernel = layer.cell.recurrent_kernel
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        total = tf.reduce_sum(y)
    kept = np.asarray(tape.gradient(total, kernel.value)) != 0  # (H, 3H)
    assert 0.3 < kept.mean() < 0.7
    rk = np.asarray(kernel)
    plain.cell.recurrent_kernel.assign(rk * kept / 0.5)
    np.testing.assert_allclose(np.asarray(y), np.asarray(plain(x)), atol=1e-5)
    assert isinstance(layer.cell.recurrent_kernel, keras.Variable)  # restored after the call
    np.testing.assert_array_equal(np.asarray(layer.cell.recurrent_kernel), rk)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(x, training=True))
    assert (np.asarray(tape.gradient(total, kernel.value)) != 0).tolist() != kept.tolist()


def test_weight_drop_model_keeps_cudnn_conditions_and_round_trips(tmp_path, ids):
    from components.lm.kernels import cudnn_blockers

    model = build_model(tiny_cfg(weight_drop=0.3, gru_layers=2), V)
    for i in range(2):
        gru = model.get_layer(f"gru_{i}")
        assert isinstance(gru, WeightDropGRU) and gru.weight_drop == 0.3
        assert cudnn_blockers(gru, "tensorflow") == []  # no recurrent_dropout, tanh, ...
    model.save(tmp_path / "wd.keras")
    again = keras.saving.load_model(tmp_path / "wd.keras", safe_mode=True)
    assert isinstance(again.get_layer("gru_1"), WeightDropGRU)
    assert again.get_layer("gru_1").weight_drop == 0.3
    np.testing.assert_array_equal(logits_of(again, ids), logits_of(model, ids))
    off = build_model(tiny_cfg(weight_drop=0.0), V)  # 0 = the plain Keras GRU, as before
    assert type(off.get_layer("gru_0")) is keras.layers.GRU


@pytest.mark.parametrize(
    "update",
    [
        {"embedding_dropout": 0.5},
        {"dropout": 0.5},
        {"dropout": 0.5, "locked_dropout": True},
        {"weight_drop": 0.5},
    ],
)
def test_each_regulariser_acts_in_training_and_not_in_inference(update, ids):
    """Inference: exactly the unregularised model with the same weights. Training: not."""
    keras.utils.set_random_seed(0)
    reg = build_model(tiny_cfg(**{"dropout": 0.0, **update}), V)
    off = build_model(tiny_cfg(dropout=0.0), V)
    for layer in off.layers:
        if layer.weights:
            layer.set_weights(reg.get_layer(layer.name).get_weights())
    static = logits_of(off, ids)
    np.testing.assert_array_equal(logits_of(reg, ids), static)
    np.testing.assert_array_equal(np.asarray(off(cold(off, ids), training=True)[0]), static)
    trained_view = np.asarray(reg(cold(reg, ids), training=True)[0])
    assert np.abs(trained_view - static).max() > 1e-3
