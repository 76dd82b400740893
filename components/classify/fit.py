"""Training loop of the classifier: discriminative learning rates, frozen epochs, early stopping.

Usage: `model, epochs = fit_classifier(kind, lm, encoded, n_classes, cfg)`.

A custom loop rather than `model.fit`, because Keras 3 optimizers have one learning rate for
every variable: the pretrained encoder (`embedding`, `gru_*`) gets its own Adam at
`learning_rate · encoder_lr_scale`, pooling + head theirs at `learning_rate` (ULMFiT's
discriminative fine-tuning: a head starting from random weights needs big steps, while big steps
on the encoder overwrite what pre-training put there). A scratch encoder has nothing to keep, so
it learns at `learning_rate` like the head. The model stays the plain functional one (saved,
served and loaded as before); only training is written out here.
"""

from __future__ import annotations

import numpy as np

from components.params import Finetune


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced weights n / (C · n_c), so macro-F1 is not won by the big classes alone."""
    counts = np.bincount(y, minlength=n_classes)
    return np.array([len(y) / (n_classes * max(n, 1)) for n in counts], np.float32)


def encoder_lr(kind: str, cfg: Finetune) -> float:
    """The encoder's learning rate: scaled down only where there is pre-training to keep."""
    return cfg.learning_rate * (cfg.encoder_lr_scale if kind == "pretrained" else 1.0)


def _split_variables(model) -> tuple[list, list]:
    from components.classify.model import ENCODER_PREFIXES

    encoder, head = [], []
    for layer in model.layers:
        (encoder if layer.name.startswith(ENCODER_PREFIXES) else head).extend(
            layer.trainable_weights
        )
    return encoder, head


def _trainer(model, lrs: tuple[float, float]):
    """A compiled step (x, y, w, train_encoder) -> weighted loss, one Adam per variable group."""
    import keras
    import tensorflow as tf

    encoder, head = _split_variables(model)
    opts = [keras.optimizers.Adam(lr, clipnorm=1.0) for lr in lrs]
    opts[0].build(encoder)
    opts[1].build(head)

    @tf.function(reduce_retracing=True)
    def step(x, y, w, train_encoder: bool):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)  # (B, C)
            per = keras.losses.sparse_categorical_crossentropy(y, probs)  # (B,)
            loss = tf.reduce_sum(per * w) / tf.cast(tf.shape(x)[0], per.dtype)
        grads = tape.gradient(loss, encoder + head)
        if train_encoder:
            opts[0].apply_gradients(zip(grads[: len(encoder)], encoder, strict=True))
        opts[1].apply_gradients(zip(grads[len(encoder) :], head, strict=True))
        return loss

    return step


def val_loss(model, val: tuple[np.ndarray, np.ndarray], batch_size: int) -> float:
    """Mean negative log-likelihood on validation (unweighted, as Keras' fit reports it)."""
    x, y = val
    probs = model.predict(x, batch_size=batch_size, verbose=0)  # (N, C)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))


def fit_classifier(kind: str, lm, encoded: dict, n_classes: int, cfg: Finetune):
    """Train one classifier; `pretrained` starts from the LM's encoder, frozen for the first
    freeze_epochs. Early stopping on validation loss after those (best weights restored).
    Returns the model and the epochs run."""
    from components.classify.model import build_classifier, lm_encoder_shape, transfer_encoder
    from components.lm.fit import seed_everything

    seed_everything(cfg.seed)
    model = build_classifier(
        lm_encoder_shape(lm), n_classes, dropout=cfg.head_dropout, pooling=cfg.pooling
    )
    frozen = 0
    if kind == "pretrained":
        transfer_encoder(model, lm)
        frozen = cfg.freeze_epochs
    (x, y), val = encoded["train"], encoded["val"]
    w = class_weights(y, n_classes)[y]
    step = _trainer(model, (encoder_lr(kind, cfg), cfg.learning_rate))
    rng = np.random.default_rng(cfg.seed)
    best, best_weights, waited = np.inf, None, 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), cfg.batch_size):
            b = order[start : start + cfg.batch_size]
            step(x[b], y[b], w[b], epoch >= frozen)
        if epoch < frozen:
            continue
        loss = val_loss(model, val, cfg.batch_size)
        if loss < best:
            best, best_weights, waited = loss, model.get_weights(), 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, epoch + 1
