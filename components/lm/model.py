"""GRU + causal attention language model, in Keras 3 (`keras.layers`/`keras.ops` only).

Usage: `model = build_model(cfg.model, vocab_size, embeddings, unigram_log_probs)`.

    (ids (B, T), h_0 per GRU layer (B, H)) -> Embedding (B, T, E) -> GRU x L (B, T, H)
      -> CausalAttention: α_ti = softmax_i(h_i · h_t / √H) over i <= t, c_t = Σ_i α_ti h_i
      -> tanh(W [h_t; c_t]) (B, T, H) -> Dense over the vocabulary (B, T, V) logits
    outputs: (logits (B, T, V), h_T per GRU layer (B, H))

A long stream is read window by window: each call starts from the GRU states the previous
window ended with. Attention spans the current window; the GRU state carries everything before
it. Reading a stream in windows of T with carried state is the same computation as one call on
the whole stream with attention limited to blocks of T (`CausalAttention(block=T)`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from components.params import ModelParams


@keras.saving.register_keras_serializable(package="gruflow")
class CausalAttention(layers.Layer):
    """Scaled dot-product attention of each GRU state over itself and the past.

    The seed's α_ti = softmax_i(v_i · h_t / √d): queries, keys and values are the GRU states
    themselves, split into `heads` groups of d = H / heads features. With `window` > 0 a
    position sees only the last `window` positions (itself included); with `block` > 0 only
    the positions of its own block of `block` steps (i // block == t // block), which is what
    a model reading the input in windows of `block` sees. Returns the context
    (B, T, H) and, with `return_attention=True`, the weights averaged over heads (B, T, T):
    row t holds α_t·, every entry above the diagonal is zero.
    """

    def __init__(
        self,
        heads: int = 1,
        window: int = 0,
        return_attention: bool = False,
        block: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.heads, self.window, self.return_attention = heads, window, return_attention
        self.block = block

    def call(self, states):
        B, T, H = ops.shape(states)[0], ops.shape(states)[1], ops.shape(states)[2]
        n, out_dtype = self.heads, states.dtype
        d = H // n
        x = ops.cast(states, "float32")  # softmax and the -1e9 mask stay in float32
        x = ops.transpose(ops.reshape(x, (B, T, n, d)), (0, 2, 1, 3))  # (B, n, T, d)
        scores = ops.einsum("bntd,bnid->bnti", x, x)  # (B, n, T, T): v_i · h_t
        scores = scores / ops.sqrt(ops.cast(d, "float32"))
        t = ops.arange(T)[:, None]
        i = ops.arange(T)[None, :]
        allowed = i <= t  # (T, T) causal
        if self.window:
            allowed = ops.logical_and(allowed, t - i < self.window)
        if self.block:
            allowed = ops.logical_and(allowed, t // self.block == i // self.block)
        scores = ops.where(allowed[None, None], scores, ops.full_like(scores, -1e9))
        alpha = ops.softmax(scores, axis=-1)  # (B, n, T, T), rows sum to 1
        context = ops.einsum("bnti,bnid->bntd", alpha, x)  # (B, n, T, d)
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (B, T, H))  # (B, T, H)
        context = ops.cast(context, out_dtype)
        if self.return_attention:
            return context, ops.mean(alpha, axis=1)  # (B, T, T)
        return context

    def compute_output_shape(self, input_shape):
        B, T, H = input_shape
        if self.return_attention:
            return (B, T, H), (B, T, T)
        return (B, T, H)

    def get_config(self):
        return {
            **super().get_config(),
            "heads": self.heads,
            "window": self.window,
            "return_attention": self.return_attention,
            "block": self.block,
        }


@keras.saving.register_keras_serializable(package="gruflow")
class WeightDropGRU(layers.GRU):
    """A Keras GRU with DropConnect on its recurrent kernel (AWD-LSTM's weight drop).

    In training, each call (one batch) draws one mask over the (H, 3H) recurrent kernel and
    runs the unchanged GRU with W_hh ⊙ mask / (1 - p) for every time step; in inference the
    kernel is used as is. The mask is applied to the weight *before* Keras's own `inner_loop`,
    which hands the kernel to the fused cuDNN op on a GPU (or to the generic loop), so the
    layer keeps every cuDNN condition (no recurrent_dropout, default activations, reset_after).
    """

    def __init__(self, units: int, weight_drop: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(units, **kwargs)
        self.weight_drop, self.seed = weight_drop, seed
        self.seed_generator = keras.random.SeedGenerator(seed)  # checkpointed with the model

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not (training and self.weight_drop):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        cell = self.cell
        kernel = cell.recurrent_kernel  # the variable (H, 3H)
        dropped = keras.random.dropout(
            ops.convert_to_tensor(kernel), self.weight_drop, seed=self.seed_generator
        )  # one mask for the batch
        # The cell and the cuDNN call both read cell.recurrent_kernel: point it at the masked
        # tensor for this call only (object.__setattr__: no variable tracking), then restore.
        object.__setattr__(cell, "recurrent_kernel", ops.cast(dropped, self.compute_dtype))
        try:
            return super().inner_loop(sequences, initial_state, mask, training=training)
        finally:
            object.__setattr__(cell, "recurrent_kernel", kernel)

    def get_config(self):
        return {**super().get_config(), "weight_drop": self.weight_drop, "seed": self.seed}


@keras.saving.register_keras_serializable(package="gruflow")
class TiedEmbedding(layers.Layer):
    """One (V, E) matrix used twice: ids -> vectors, and vectors -> logits (x Eᵀ + b)."""

    def __init__(self, vocab_size: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.dim = vocab_size, dim

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.vocab_size, self.dim), initializer="uniform", name="embeddings"
        )
        self.bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros", name="bias")

    def call(self, inputs, mode: str = "embed"):
        if mode == "embed":
            return ops.take(self.embeddings, ops.cast(inputs, "int32"), axis=0)  # (B, T, E)
        w = ops.cast(self.embeddings, inputs.dtype)
        return ops.matmul(inputs, ops.transpose(w)) + ops.cast(self.bias, inputs.dtype)

    def compute_output_spec(self, inputs, mode: str = "embed"):
        if mode == "embed":
            return keras.KerasTensor((*inputs.shape, self.dim), dtype=self.compute_dtype)
        return keras.KerasTensor((*inputs.shape[:-1], self.vocab_size), dtype=inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "dim": self.dim}


@keras.saving.register_keras_serializable(package="gruflow")
class SmoothedTokenLoss(keras.losses.Loss):
    """Label-smoothed token cross-entropy from logits: (1-ε)·NLL + ε·mean_v(-log p_v)."""

    def __init__(self, epsilon: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, y_true, y_pred):
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)  # (B, T, V)
        idx = ops.expand_dims(ops.cast(y_true, "int32"), -1)  # (B, T, 1)
        nll = -ops.squeeze(ops.take_along_axis(logp, idx, axis=-1), -1)  # (B, T)
        return (1.0 - self.epsilon) * nll - self.epsilon * ops.mean(logp, axis=-1)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def build_model(
    cfg: ModelParams,
    vocab_size: int,
    embeddings: np.ndarray | None = None,
    unigram_log_probs: np.ndarray | None = None,
) -> keras.Model:
    """The LM as a functional model (ids, h_0...) -> (logits, h_T...); `embeddings`
    initialise the Embedding layer (word2vec)."""
    if embeddings is not None and embeddings.shape != (vocab_size, cfg.embedding_dim):
        raise ValueError(
            f"embedding matrix shape {embeddings.shape} != (vocab {vocab_size}, "
            f"model.embedding_dim {cfg.embedding_dim})"
        )
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")  # (B, T)
    h0 = [
        keras.Input(shape=(cfg.units,), name=f"state_{i}")  # (B, H) each
        for i in range(cfg.gru_layers)
    ]
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
    # Embedding dropout drops whole word vectors (one mask value per token, over all E
    # features); locked dropout keeps one mask per sequence and feature for every step (B, 1, C).
    # Both sit between layers, so the GRU keeps its cuDNN kernel (no recurrent_dropout).
    x = layers.Dropout(
        cfg.embedding_dropout, noise_shape=(None, None, 1), name="embedding_dropout"
    )(x)
    shape = (None, 1, None) if cfg.locked_dropout else None

    def dropout(name: str):
        return layers.Dropout(cfg.dropout, noise_shape=shape, name=name)

    x = dropout("dropout_embedding")(x)
    h_T = []
    for i in range(cfg.gru_layers):
        # Default activations, no recurrent dropout, reset_after: the cuDNN-eligible GRU
        # (with weight_drop, the same GRU on a masked recurrent kernel; plain GRU when 0).
        gru = (
            WeightDropGRU(
                cfg.units,
                cfg.weight_drop,
                return_sequences=True,
                return_state=True,
                name=f"gru_{i}",
            )
            if cfg.weight_drop
            else layers.GRU(cfg.units, return_sequences=True, return_state=True, name=f"gru_{i}")
        )
        x, h = gru(x, initial_state=h0[i])  # (B, T, H), (B, H)
        h_T.append(layers.Activation("linear", dtype="float32", name=f"final_state_{i}")(h))
        x = dropout(f"dropout_gru_{i}")(x)
    context = CausalAttention(cfg.attention_heads, cfg.attention_window, name="attention")(
        x
    )  # (B, T, H)
    combined = layers.Concatenate()([x, context])  # (B, T, 2H)
    combined = layers.Dense(cfg.units, activation="tanh", name="combine")(combined)
    combined = dropout("dropout_combine")(combined)
    if cfg.tie_embeddings:
        combined = layers.Dense(cfg.embedding_dim, name="tie_projection")(combined)  # (B, T, E)
        logits = embedding(
            layers.Activation("linear", dtype="float32")(combined), mode="logits"
        )  # (B, T, V)
        bias = embedding.bias
    else:
        output = layers.Dense(vocab_size, dtype="float32", name="logits")  # f32 if mixed
        logits = output(combined)  # (B, T, V)
        bias = output.bias
    # Initial values are assigned, not passed as Constant initialisers, so the matrices do
    # not end up inside the saved model's config.json.
    if embeddings is not None:
        embedding.embeddings.assign(embeddings)
    if unigram_log_probs is not None:
        # Log unigram frequencies as the output bias start the model off the unigram plateau.
        bias.assign(unigram_log_probs)
    return keras.Model([ids, *h0], [logits, *h_T], name="gruflow_lm")


def state_sizes(model: keras.Model) -> list[int]:
    """Width of each carried GRU state; [] for a model saved before states were carried
    (ids -> logits), which is then read window by window from a cold start."""
    return [int(t.shape[-1]) for t in model.inputs[1:]]


def attention_model(model: keras.Model) -> keras.Model:
    """A view of a trained model that returns the attention weights α (B, T, T)."""
    att = model.get_layer("attention")
    probe = CausalAttention(att.heads, att.window, return_attention=True, block=att.block)
    _, alpha = probe(att.input)
    return keras.Model(model.inputs, alpha)
