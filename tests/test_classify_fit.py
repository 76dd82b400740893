"""The classifier's training loop: discriminative learning rates (encoder vs pooling + head),
frozen epochs, the head's dropout."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from components.classify.fit import encoder_lr, fit_classifier
from components.lm.model import build_model

LR = 0.01


@pytest.fixture(scope="module")
def lm(params):
    keras.utils.set_random_seed(0)
    cfg = params.model.model_copy(
        update={"units": 8, "embedding_dim": 6, "embedding_init": "random"}
    )
    return build_model(cfg, 30)


def _one_step(lm, params, kind: str, **update):
    """Train on one batch for one epoch; the largest change of each weight group."""
    cfg = params.finetune.model_copy(
        update={"learning_rate": LR, "epochs": 1, "freeze_epochs": 0, "batch_size": 8, **update}
    )
    rng = np.random.default_rng(0)
    # each token once: a repeated row of the embedding would get its sparse update twice
    x = rng.permutation(np.arange(5, 30))[:24].reshape(4, 6).astype(np.int32)
    y = np.arange(4, dtype=np.int32) % 2
    model, epochs = fit_classifier(kind, lm, {"train": (x, y), "val": (x, y)}, 2, cfg)
    from components.classify.model import build_classifier, lm_encoder_shape, transfer_encoder
    from components.lm.fit import seed_everything

    seed_everything(cfg.seed)  # fit_classifier's own start, rebuilt
    start = build_classifier(lm_encoder_shape(lm), 2, dropout=cfg.head_dropout, pooling=cfg.pooling)
    if kind == "pretrained":
        transfer_encoder(start, lm)

    def moved(name: str) -> float:
        before, after = start.get_layer(name).get_weights(), model.get_layer(name).get_weights()
        return max(float(np.max(np.abs(a - b))) for a, b in zip(after, before, strict=True))

    return model, epochs, moved


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_pretrained_encoder_learns_at_its_scaled_rate_and_the_head_at_the_full_one(
    lm, params, scale
):
    # Adam's first step moves every weight with a gradient by exactly its learning rate
    _, epochs, moved = _one_step(lm, params, "pretrained", encoder_lr_scale=scale)
    assert epochs == 1
    assert moved("head") == pytest.approx(LR, rel=0.01)
    assert moved("embedding") == pytest.approx(LR * scale, rel=0.01)
    assert moved("gru_0") == pytest.approx(LR * scale, rel=0.01)


def test_scratch_encoder_ignores_the_scale(lm, params):
    cfg = params.finetune.model_copy(update={"learning_rate": LR, "encoder_lr_scale": 0.1})
    assert encoder_lr("scratch", cfg) == LR and encoder_lr("pretrained", cfg) == LR * 0.1
    _, _, moved = _one_step(lm, params, "scratch", encoder_lr_scale=0.1)
    assert moved("gru_0") == pytest.approx(LR, rel=0.01)


def test_frozen_epochs_leave_the_encoder_as_the_lm_left_it(lm, params):
    _, _, moved = _one_step(lm, params, "pretrained", freeze_epochs=1)
    assert moved("embedding") == 0.0 and moved("gru_0") == 0.0
    assert moved("head") == pytest.approx(LR, rel=0.01)


def test_head_dropout_is_the_params_value(lm, params):
    model, _, _ = _one_step(lm, params, "pretrained", head_dropout=0.37)
    assert model.get_layer("head_dropout").rate == pytest.approx(0.37)


def test_class_weights_are_balanced():
    from components.classify.fit import class_weights

    w = class_weights(np.array([0, 0, 0, 1]), 2)  # n / (C * n_c)
    assert w == pytest.approx([4 / 6, 4 / 2])


def _data():
    rng = np.random.default_rng(1)
    x = rng.integers(5, 30, size=(24, 6)).astype(np.int32)
    y = (np.arange(24) % 3 == 0).astype(np.int32)  # unbalanced: 8 of 24
    return {"train": (x[:16], y[:16]), "val": (x[16:], y[16:])}


def test_the_best_validation_weights_come_back_and_a_fit_is_deterministic(lm, params, monkeypatch):
    import components.classify.fit as fit

    seen, real = [], fit.val_loss
    monkeypatch.setattr(fit, "val_loss", lambda *a: seen.append(real(*a)) or seen[-1])
    cfg = params.finetune.model_copy(
        update={"learning_rate": 0.05, "epochs": 5, "patience": 5, "freeze_epochs": 0}
    )
    model, epochs = fit.fit_classifier("scratch", lm, _data(), 2, cfg)
    assert epochs == 5 and len(seen) == 5 and len(set(seen)) > 1
    assert real(model, _data()["val"], cfg.batch_size) == pytest.approx(min(seen), abs=1e-6)
    again, _ = fit.fit_classifier("scratch", lm, _data(), 2, cfg)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
