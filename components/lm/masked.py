"""The masked-LM objective (`train.objective: masked`): a bidirectional GRU stack with attention
over the whole window, trained to predict the chosen positions (components/lm/masking.py).

Usage: `model = build_masked_model(cfg.model, vocab_size, embeddings, unigram_log_probs)`;
the training recipe (components/lm/fit.py) switches to `masked_dataset`, `compiled_masked` and
`MaskedValidation` when train.objective is masked.

    ids (B, T) -> Embedding (B, T, E) -> Bidirectional GRU x L (B, T, 2H)
      -> WindowAttention: α_ti = softmax_i(h_i · h_t / √d) over every i of the window
      -> tanh(W [h_t; c_t]) (B, T, H) -> Dense over the vocabulary (B, T, V) logits

Both directions see the whole window, so no state is carried between windows: each window is
one independent example (train.context does not apply). Layer names follow the causal LM's
(`embedding`, `gru_0`.., `attention`, `combine`, `logits`), so the finetune stage copies the
encoder by name from either objective.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from components.lm.masking import (
    EVAL_MASK_FRACTION,
    EVAL_MASK_SEED,
    mask_windows,
    token_windows,
)
from components.lm.model import TiedEmbedding
from components.params import ModelParams

MODEL_NAME = "gruflow_mlm"  # the saved model's name says its objective (evaluate checks it)


@keras.saving.register_keras_serializable(package="gruflow")
class WindowAttention(layers.Layer):
    """Scaled dot-product attention of each state over every state of its window (both
    sides), split into `heads` groups of d = C / heads features; with `window` > 0 only
    positions with |t - i| < window. Returns the context (B, T, C) and, with
    `return_attention=True`, the weights averaged over heads (B, T, T)."""

    def __init__(self, heads: int = 1, window: int = 0, return_attention: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.window, self.return_attention = heads, window, return_attention

    def call(self, states):
        B, T, C = ops.shape(states)[0], ops.shape(states)[1], ops.shape(states)[2]
        n, out_dtype = self.heads, states.dtype
        d = C // n
        x = ops.cast(states, "float32")
        x = ops.transpose(ops.reshape(x, (B, T, n, d)), (0, 2, 1, 3))  # (B, n, T, d)
        scores = ops.einsum("bntd,bnid->bnti", x, x) / ops.sqrt(ops.cast(d, "float32"))
        if self.window:  # (B, n, T, T) scores; keep |t - i| < window
            t, i = ops.arange(T)[:, None], ops.arange(T)[None, :]
            allowed = ops.abs(t - i) < self.window  # (T, T)
            scores = ops.where(allowed[None, None], scores, ops.full_like(scores, -1e9))
        alpha = ops.softmax(scores, axis=-1)  # (B, n, T, T), rows sum to 1
        context = ops.einsum("bnti,bnid->bntd", alpha, x)  # (B, n, T, d)
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (B, T, C))  # (B, T, C)
        context = ops.cast(context, out_dtype)
        if self.return_attention:
            return context, ops.mean(alpha, axis=1)  # (B, T, T)
        return context

    def compute_output_shape(self, input_shape):
        B, T, C = input_shape
        return ((B, T, C), (B, T, T)) if self.return_attention else (B, T, C)

    def get_config(self):
        return {
            **super().get_config(),
            "heads": self.heads,
            "window": self.window,
            "return_attention": self.return_attention,
        }


def build_masked_model(
    cfg: ModelParams,
    vocab_size: int,
    embeddings: np.ndarray | None = None,
    unigram_log_probs: np.ndarray | None = None,
) -> keras.Model:
    """The masked LM as a functional model ids (B, T) -> logits (B, T, V)."""
    if embeddings is not None and embeddings.shape != (vocab_size, cfg.embedding_dim):
        raise ValueError(
            f"embedding matrix shape {embeddings.shape} != (vocab {vocab_size}, "
            f"model.embedding_dim {cfg.embedding_dim})"
        )
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")  # (B, T)
    if cfg.tie_embeddings:
        embedding = TiedEmbedding(
            vocab_size, cfg.embedding_dim, name="embedding", trainable=cfg.embedding_trainable
        )
    else:
        embedding = layers.Embedding(
            vocab_size,
            cfg.embedding_dim,
            name="embedding",
            embeddings_initializer="uniform",
            trainable=cfg.embedding_trainable,
        )
    x = embedding(ids)  # (B, T, E)
    x = layers.Dropout(
        cfg.embedding_dropout, noise_shape=(None, None, 1), name="embedding_dropout"
    )(x)
    shape = (None, 1, None) if cfg.locked_dropout else None

    def dropout(name: str):
        return layers.Dropout(cfg.dropout, noise_shape=shape, name=name)

    x = dropout("dropout_embedding")(x)
    for i in range(cfg.gru_layers):
        # cuDNN-eligible GRU in each direction; outputs concatenated (B, T, 2H)
        x = layers.Bidirectional(layers.GRU(cfg.units, return_sequences=True), name=f"gru_{i}")(x)
        x = dropout(f"dropout_gru_{i}")(x)
    context = WindowAttention(cfg.attention_heads, cfg.attention_window, name="attention")(
        x
    )  # (B, T, 2H)
    combined = layers.Concatenate()([x, context])  # (B, T, 4H)
    combined = layers.Dense(cfg.units, activation="tanh", name="combine")(combined)  # (B, T, H)
    combined = dropout("dropout_combine")(combined)
    if cfg.tie_embeddings:
        combined = layers.Dense(cfg.embedding_dim, name="tie_projection")(combined)  # (B, T, E)
        logits = embedding(
            layers.Activation("linear", dtype="float32")(combined), mode="logits"
        )  # (B, T, V)
        bias = embedding.bias
    else:
        output = layers.Dense(vocab_size, dtype="float32", name="logits")
        logits = output(combined)  # (B, T, V)
        bias = output.bias
    if embeddings is not None:  # assigned, not initialisers: the matrices stay out of config
        embedding.embeddings.assign(embeddings)
    if unigram_log_probs is not None:
        bias.assign(unigram_log_probs)
    return keras.Model(ids, logits, name=MODEL_NAME)


def is_masked(model: keras.Model) -> bool:
    return model.name == MODEL_NAME


def masked_attention_model(model: keras.Model) -> keras.Model:
    """A view of a trained masked LM that returns the attention weights α (B, T, T)."""
    att = model.get_layer("attention")
    _, alpha = WindowAttention(att.heads, att.window, return_attention=True)(att.input)
    return keras.Model(model.input, alpha)


@keras.saving.register_keras_serializable(package="gruflow")
class MaskedTrainer(keras.Model):
    """The masked LM under the trainer interface train/tune/checkpoint use (`.lm`,
    `reset_state`): ids -> logits, nothing carried between batches."""

    def __init__(self, lm: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.lm = lm
        self.built = True

    def call(self, ids, training=False):
        return self.lm(ids, training=training)

    def reset_state(self) -> None:  # windows are independent: nothing to reset
        pass

    def get_config(self):
        return {"name": self.name, "lm": keras.saving.serialize_keras_object(self.lm)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("lm")), **config)


def masked_dataset(stream: np.ndarray, t, vocab_size: int, first_epoch: int = 0):
    """(tf.data of (inputs, targets, weights) batches (B, T) for epochs first_epoch..epochs-1,
    batches per epoch, batch size, chosen positions per epoch). Epoch e's window order and
    mask are drawn from (train.seed, e) alone, so a resumed run sees the batches an
    uninterrupted one would."""
    import tensorflow as tf

    from components.lm.masking import chosen_count

    windows = token_windows(stream, t.seq_len)  # (N, T)
    n, B = len(windows), t.batch_size

    def batches():
        for epoch in range(first_epoch, max(t.epochs, first_epoch + 1)):
            order = np.random.default_rng([t.seed, epoch, 0]).permutation(n)
            x, y, w = mask_windows(windows[order], t.mask_fraction, [t.seed, epoch, 1], vocab_size)
            for lo in range(0, n, B):
                yield x[lo : lo + B], y[lo : lo + B], w[lo : lo + B]

    spec = tf.TensorSpec((None, t.seq_len), tf.int32)
    data = tf.data.Dataset.from_generator(
        batches, output_signature=(spec, spec, tf.TensorSpec((None, t.seq_len), tf.float32))
    )
    return data.prefetch(2), -(-n // B), B, chosen_count(stream, t.seq_len, t.mask_fraction)


def masked_logits(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N, T, V) of (N, T) windows, in batches (float64 for exact sums)."""
    parts = [
        np.asarray(model.predict_on_batch(x[lo : lo + batch_size]), np.float64)
        for lo in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts)


def masked_stats(
    model: keras.Model,
    stream: np.ndarray,
    seq_len: int,
    fraction: float,
    batch_size: int,
    seed=EVAL_MASK_SEED,
) -> dict:
    """The stream under one fixed seeded mask: per chosen position (in stream order) its
    -log p, rank among the logits (0 = top-1), target and index in the stream."""
    vocab = int(model.outputs[0].shape[-1])
    x, y, w = mask_windows(token_windows(stream, seq_len), fraction, seed, vocab)
    nll, rank = [], []
    for lo in range(0, len(x), batch_size):
        logits = masked_logits(model, x[lo : lo + batch_size], batch_size)  # (b, T, V)
        m = logits.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]  # (b, T)
        target = np.take_along_axis(logits, y[lo : lo + batch_size][..., None], -1)[..., 0]
        nll.append(logz - target)
        rank.append((logits > target[..., None]).sum(-1))
    chosen = w.reshape(-1) > 0
    return {
        "nll_at": np.concatenate(nll).reshape(-1)[chosen],
        "rank_at": np.concatenate(rank).reshape(-1)[chosen],
        "targets": y.reshape(-1)[chosen],
        "index": np.flatnonzero(chosen),
    }


class MaskedValidation(keras.callbacks.Callback):
    """At each epoch end `val_loss` = NLL per chosen position of the val split under the fixed
    evaluation mask (as evaluate scores test). First in every callback list."""

    def __init__(self, val: np.ndarray, t):
        super().__init__()
        self.val, self.t = val, t

    def on_epoch_end(self, epoch, logs=None):
        s = masked_stats(
            self.model.lm, self.val, self.t.seq_len, EVAL_MASK_FRACTION, self.t.batch_size
        )
        if logs is not None:
            logs["val_loss"] = float(s["nll_at"].sum() / max(s["nll_at"].size, 1))


def compiled_masked(p, vocab_size: int, train: np.ndarray, embeddings, optimizer, loss):
    """A fresh masked LM (output bias at the log unigram frequencies of train) in its trainer,
    compiled with the recipe's optimizer and loss (components/lm/fit.py; the sample weights
    make only the chosen positions count)."""
    from components.lm.windows import unigram_log_probs

    lm = build_masked_model(p.model, vocab_size, embeddings, unigram_log_probs(train, vocab_size))
    trainer = MaskedTrainer(lm)
    trainer.compile(optimizer=optimizer, jit_compile=p.train.xla, loss=loss)
    return trainer
