"""GRU + causal attention language model, in Keras 3 (`keras.layers`/`keras.ops` only).

Usage: `model = build_model(cfg.model, vocab_size, embeddings, unigram_log_probs)`.

    ids (B, T) -> Embedding (B, T, E) -> GRU x L (B, T, H)
      -> CausalAttention: α_ti = softmax_i(h_i · h_t / √H) over i <= t, c_t = Σ_i α_ti h_i
      -> tanh(W [h_t; c_t]) (B, T, H) -> Dense over the vocabulary (B, T, V) logits
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from components.params import Model


@keras.saving.register_keras_serializable(package="gruflow")
class CausalAttention(layers.Layer):
    """Scaled dot-product attention of each GRU state over itself and the past.

    Returns the context vectors (B, T, H) and, with `return_attention=True`, the weights
    (B, T, T) where row t holds α_t· and every entry above the diagonal is zero.
    """

    def __init__(self, return_attention: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.return_attention = return_attention

    def call(self, states):
        H = ops.shape(states)[-1]
        T = ops.shape(states)[1]
        out_dtype = states.dtype
        states = ops.cast(states, "float32")  # softmax and the -1e9 mask stay in float32
        scores = ops.einsum("bth,bih->bti", states, states)  # (B, T, T): v_i · h_t
        scores = scores / ops.sqrt(ops.cast(H, scores.dtype))
        causal = ops.tril(ops.ones((T, T), dtype="bool"))  # (T, T): i <= t
        scores = ops.where(causal[None, :, :], scores, ops.full_like(scores, -1e9))
        alpha = ops.softmax(scores, axis=-1)  # (B, T, T), rows sum to 1
        context = ops.cast(ops.einsum("bti,bih->bth", alpha, states), out_dtype)  # (B, T, H)
        if self.return_attention:
            return context, alpha
        return context

    def compute_output_shape(self, input_shape):
        B, T, H = input_shape
        if self.return_attention:
            return (B, T, H), (B, T, T)
        return (B, T, H)

    def get_config(self):
        return {**super().get_config(), "return_attention": self.return_attention}


def build_model(cfg: Model, vocab_size: int, embeddings: np.ndarray | None = None,
                unigram_log_probs: np.ndarray | None = None) -> keras.Model:
    """The LM as a functional model; `embeddings` initialise the Embedding layer (word2vec)."""
    if embeddings is not None and embeddings.shape != (vocab_size, cfg.embedding_dim):
        raise ValueError(
            f"embedding matrix shape {embeddings.shape} != (vocab {vocab_size}, "
            f"model.embedding_dim {cfg.embedding_dim})"
        )
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")  # (B, T)
    embedding = layers.Embedding(vocab_size, cfg.embedding_dim, embeddings_initializer="uniform",
                                 trainable=cfg.embedding_trainable, name="embedding")
    x = embedding(ids)  # (B, T, E)
    x = layers.Dropout(cfg.dropout)(x)
    for i in range(cfg.gru_layers):
        # Default activations, no recurrent dropout, reset_after: the cuDNN-eligible GRU.
        x = layers.GRU(cfg.units, return_sequences=True, name=f"gru_{i}")(x)  # (B, T, H)
        x = layers.Dropout(cfg.dropout)(x)
    context = CausalAttention(name="attention")(x)  # (B, T, H)
    combined = layers.Concatenate()([x, context])  # (B, T, 2H)
    combined = layers.Dense(cfg.units, activation="tanh", name="combine")(combined)
    combined = layers.Dropout(cfg.dropout)(combined)
    output = layers.Dense(vocab_size, dtype="float32", name="logits")  # f32 under mixed precision
    logits = output(combined)  # (B, T, V)
    # Initial values are assigned, not passed as Constant initialisers, so the matrices do
    # not end up inside the saved model's config.json.
    if embeddings is not None:
        embedding.embeddings.assign(embeddings)
    if unigram_log_probs is not None:
        # Log unigram frequencies as the output bias start the model off the unigram plateau.
        output.bias.assign(unigram_log_probs)
    return keras.Model(ids, logits, name="gruflow_lm")


def attention_model(model: keras.Model) -> keras.Model:
    """A view of a trained model that returns the attention weights α (B, T, T)."""
    att = model.get_layer("attention")
    probe = CausalAttention(return_attention=True)
    _, alpha = probe(att.input)
    return keras.Model(model.input, alpha)
