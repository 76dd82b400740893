"""The one training recipe: data pipeline, seeding and op determinism, precision, model build,
optimizer, loss and compile — shared by the train stage, every tune trial and bench/train.py,
so a trial scores exactly what train would fit.

Usage: `seed_everything(t.seed); data, steps, streams, _ = training_data(train, t)`,
`model = compiled_model(p, vocab, train, embeddings, steps, streams)`, then
`model.fit(data, steps_per_epoch=steps, callbacks=[validation(val, t), ...])`.
"""

from __future__ import annotations

import numpy as np

from components.contract import BOS
from components.errors import GruflowError
from components.lm.windows import (
    make_streams,
    make_windows,
    stream_count,
    target_count,
    unigram_log_probs,
)
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
        raise GruflowError(
            f"{p.paths.embeddings}: shape {embeddings.shape} does not match "
            f"vocabulary {vocab_size} x model.embedding_dim "
            f"{p.model.embedding_dim} — rerun the embed stage"
        )
    return embeddings


def shuffle_documents(stream: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The stream's documents (each starting at a `<bos>`) in an order drawn from (seed,
    epoch): each epoch lays different text side by side, the same in a resumed run."""
    starts = np.flatnonzero(stream == BOS)
    if starts.size == 0 or starts[0] != 0:
        starts = np.r_[0, starts]  # text before the first <bos> stays one document
    docs = np.split(stream, starts[1:])
    order = np.random.default_rng([seed, epoch]).permutation(len(docs))
    return np.concatenate([docs[i] for i in order])


def stream_dataset(
    stream: np.ndarray,
    seq_len: int,
    batch_size: int,
    epochs: int = 1,
    replicas: int = 1,
    seed: int | None = None,
    first_epoch: int = 0,
):
    """(tf.data of (ids, targets, weights) batches of shape (S, T) in reading order for
    epochs first_epoch..epochs-1, batches per epoch K, streams S, targets per epoch). With a
    seed each epoch first shuffles the documents (shuffle_documents)."""
    import tensorflow as tf

    n_streams = stream_count(stream.size, seq_len, batch_size, replicas)
    x, y, w = make_streams(stream, n_streams, seq_len)  # (K, S, T) each
    if seed is None:
        data = tf.data.Dataset.from_tensor_slices((x, y, w)).repeat(max(epochs - first_epoch, 1))
        return data.prefetch(tf.data.AUTOTUNE), len(x), n_streams, target_count(stream)

    def batches():
        for epoch in range(first_epoch, max(epochs, first_epoch + 1)):
            yield from zip(
                *make_streams(shuffle_documents(stream, seed, epoch), n_streams, seq_len),
                strict=True,
            )

    spec = tf.TensorSpec(x.shape[1:], tf.int32)
    data = tf.data.Dataset.from_generator(
        batches, output_signature=(spec, spec, tf.TensorSpec(x.shape[1:], tf.float32))
    )
    return data.prefetch(2), len(x), n_streams, target_count(stream)


def window_dataset(
    stream: np.ndarray, seq_len: int, batch_size: int, seed: int, first_epoch: int, epochs: int
):
    """`train.context: window`: independent windows, each from a cold state; epoch e is
    shuffled by a stateless permutation keyed on (seed, e), so a resumed run sees exactly the
    batches an uninterrupted one would. Same return values as stream_dataset."""
    import tensorflow as tf

    x, y, w = make_windows(stream, seq_len)
    n = len(x)
    tensors = (tf.constant(x), tf.constant(y), tf.constant(w))

    def epoch_batches(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), e])
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    def gather(idx):
        return tuple(tf.gather(t, idx) for t in tensors)

    data = (
        tf.data.Dataset.range(first_epoch, max(epochs, first_epoch + 1))
        .flat_map(epoch_batches)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    )
    return data.prefetch(tf.data.AUTOTUNE), -(-n // batch_size), batch_size, target_count(stream)


def training_data(
    stream: np.ndarray, t, first_epoch: int = 0, replicas: int = 1, vocab_size: int = 0
):
    """The train split as the `train.context` mode reads it (see the two functions above);
    with `train.objective: masked`, masked windows (components/lm/masked.py; the random
    replacements need `vocab_size`)."""
    if t.objective == "masked":
        from components.lm.masked import masked_dataset

        return masked_dataset(stream, t, vocab_size, first_epoch)
    if t.context == "window":
        return window_dataset(stream, t.seq_len, t.batch_size, t.seed, first_epoch, t.epochs)
    return stream_dataset(stream, t.seq_len, t.batch_size, t.epochs, replicas, t.seed, first_epoch)


def optimizer(p: Params, steps_per_epoch: int):
    """AdamW; learning rate constant or linear warm-up then cosine decay over the run."""
    import keras

    t = p.train
    lr = t.learning_rate
    if t.schedule == "cosine":
        total = max(steps_per_epoch * t.epochs, 1)
        warmup = int(total * t.warmup_fraction)
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else t.learning_rate,
            decay_steps=max(total - warmup, 1),
            alpha=t.min_lr_fraction,
            warmup_target=t.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay, clipnorm=t.clipnorm)


def loss(t: Train):
    """Token cross-entropy averaged over real tokens (padding must not lower it); with
    train.label_smoothing ε: (1-ε)·NLL + ε·mean over the vocabulary of -log p."""
    import keras

    if t.label_smoothing == 0:
        return keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )
    from components.lm.model import SmoothedTokenLoss

    return SmoothedTokenLoss(t.label_smoothing, reduction="mean_with_sample_weight")


def compiled_model(
    p: Params,
    vocab_size: int,
    train: np.ndarray,
    embeddings: np.ndarray | None,
    steps: int,
    streams: int,
    replicas: int = 1,
):
    """A fresh model (output bias at the train split's log unigram frequencies) inside the
    trainer that carries its GRU state over `streams` parallel streams (or starts every batch
    cold with `train.context: window`), compiled with the recipe's optimizer and loss."""
    if p.train.objective == "masked":
        from components.lm.masked import compiled_masked

        return compiled_masked(p, vocab_size, train, embeddings, optimizer(p, steps), loss(p.train))
    from components.lm.carry import CarriedStateTrainer
    from components.lm.model import build_model

    lm = build_model(p.model, vocab_size, embeddings, unigram_log_probs(train, vocab_size))
    trainer = CarriedStateTrainer(lm, streams, replicas, carry=p.train.context == "carried")
    trainer.compile(optimizer=optimizer(p, steps), jit_compile=p.train.xla, loss=loss(p.train))
    return trainer


def validation(val: np.ndarray, t: Train):
    """The callback that resets the carried state each epoch and sets `val_loss` to the NLL per
    target of the val split, read as evaluate reads test; first in every callback list.
    Masked: NLL per chosen position under the fixed evaluation mask."""
    if t.objective == "masked":
        from components.lm.masked import MaskedValidation

        return MaskedValidation(val, t)
    from components.lm.carry import CarriedStateCallback

    return CarriedStateCallback(val, t.seq_len, t.batch_size)


def flops_per_token(vocab: int, E: int, H: int, layers: int, T: int) -> int:
    """Forward multiply-adds x 2 per token: GRU gates, causal attention (T/2 positions on
    average, scores + context), combine and output projection."""
    gru = sum(2 * 3 * ((E if i == 0 else H) + H) * H for i in range(layers))
    return int(gru + 2 * T * H + 2 * 2 * H * H + 2 * H * vocab)
