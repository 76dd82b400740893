"""The one training recipe: data pipeline, seeding and op determinism, precision, model build,
optimizer, loss and compile — shared by the train stage, every tune trial and bench/train.py,
so a trial scores exactly what train would fit.

Usage: `seed_everything(t.seed); model = compiled_model(p, vocab, train, embeddings, steps)`,
then `model.fit(make_dataset(train, ...)[0], ...)`.
"""

from __future__ import annotations

import numpy as np

from components.errors import GruflowError
from components.lm.windows import make_windows, unigram_log_probs, window_count
from components.params import Params, Train


def seed_everything(seed: int) -> None:
    """Python, NumPy and TensorFlow seeded and ops deterministic: a run repeats bit for bit on
    CPU, whatever the core count."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def use_mixed_precision(t: Train, on_gpu: bool | None = None) -> None:
    """float16 compute when train.mixed_precision asks for it and a GPU is there (`on_gpu`,
    or TensorFlow's own device list when not given)."""
    import keras
    import tensorflow as tf

    if on_gpu is None:
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if t.mixed_precision and on_gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")


def load_embeddings(p: Params, vocab_size: int) -> np.ndarray | None:
    """The embed stage's matrix when model.embedding_init is word2vec, checked against the
    vocabulary and model.embedding_dim; None for a random start."""
    if p.model.embedding_init != "word2vec":
        return None
    embeddings = np.load(p.paths.embeddings)
    if embeddings.shape != (vocab_size, p.model.embedding_dim):
        raise GruflowError(f"{p.paths.embeddings}: shape {embeddings.shape} does not match "
                           f"vocabulary {vocab_size} x model.embedding_dim "
                           f"{p.model.embedding_dim} — rerun the embed stage")
    return embeddings


def steps_per_epoch(stream: np.ndarray, t: Train) -> int:
    """Batches per epoch of the packed windows of `stream`."""
    return -(-window_count(stream.size, t.seq_len) // t.batch_size)


def make_dataset(stream: np.ndarray, seq_len: int, batch_size: int, seed: int | None,
                 first_epoch: int = 0, epochs: int = 1):
    """Batched windows; with a seed, epoch e is shuffled by a stateless permutation keyed on
    (seed, e), so a resumed run sees exactly the batches an uninterrupted one would."""
    import tensorflow as tf

    x, y, w = make_windows(stream, seq_len)
    n = len(x)
    data = tf.data.Dataset.from_tensor_slices((x, y, w))
    if seed is None:
        return data.batch(batch_size).prefetch(tf.data.AUTOTUNE), int(w.sum())
    tensors = (tf.constant(x), tf.constant(y), tf.constant(w))

    def epoch_batches(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    def gather(idx):
        return tuple(tf.gather(t, idx) for t in tensors)

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE), \
        int(w.sum())


def optimizer(p: Params, steps_per_epoch: int):
    """AdamW; learning rate constant or linear warm-up then cosine decay over the run."""
    import keras

    t = p.train
    lr = t.learning_rate
    if t.schedule == "cosine":
        total = max(steps_per_epoch * t.epochs, 1)
        warmup = int(total * t.warmup_fraction)
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else t.learning_rate, decay_steps=max(total - warmup, 1),
            alpha=t.min_lr_fraction, warmup_target=t.learning_rate if warmup else None,
            warmup_steps=warmup)
    return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay, clipnorm=t.clipnorm)


def loss(t: Train):
    """Token cross-entropy averaged over real tokens (padding must not lower it); with
    train.label_smoothing ε: (1-ε)·NLL + ε·mean over the vocabulary of -log p."""
    import keras

    if t.label_smoothing == 0:
        return keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight")
    from components.lm.model import SmoothedTokenLoss

    return SmoothedTokenLoss(t.label_smoothing, reduction="mean_with_sample_weight")


def compiled_model(p: Params, vocab_size: int, train: np.ndarray,
                   embeddings: np.ndarray | None, steps: int):
    """A fresh model (output bias at the train split's log unigram frequencies), compiled with
    the recipe's optimizer and loss."""
    from components.lm.model import build_model

    model = build_model(p.model, vocab_size, embeddings, unigram_log_probs(train, vocab_size))
    model.compile(optimizer=optimizer(p, steps), jit_compile=p.train.xla, loss=loss(p.train))
    return model


def flops_per_token(vocab: int, E: int, H: int, layers: int, T: int) -> int:
    """Forward multiply-adds x 2 per token: GRU gates, causal attention (T/2 positions on
    average, scores + context), combine and output projection."""
    gru = sum(2 * 3 * ((E if i == 0 else H) + H) * H for i in range(layers))
    return int(gru + 2 * T * H + 2 * 2 * H * H + 2 * H * vocab)
