"""Text classifier on the LM's encoder, in Keras 3 (`keras.layers`/`keras.ops` only).

Usage: `model = build_classifier(shape, n_classes)`, then `transfer_encoder(model, lm)`.

    ids (B, T) -> Embedding (B, T, E) -> GRU x L (B, T, H)
      -> AttentionPooling: a_t = softmax_t(v · tanh(W h_t)) over real tokens, s = Σ_t a_t h_t
      [pooling concat: ‖ masked mean ‖ masked max of h_t  (B, 3H)]
      -> Dropout -> Dense(C, softmax) (B, C)

The embedding and GRU layers have the names and shapes of the LM's (`embedding`, `gru_0`..),
so a trained LM's weights are copied in by name, whichever form the LM itself takes; a masked
LM's (train.objective masked) GRUs are bidirectional, and so are the classifier's then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
from keras import layers, ops

ENCODER_PREFIXES = ("embedding", "gru_")


@keras.saving.register_keras_serializable(package="gruflow")
class AttentionPooling(layers.Layer):
    """Additive attention pooling of a sequence of states into one vector, padding ignored."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.supports_masking = True

    def build(self, input_shape):
        H = input_shape[-1]
        self.w = self.add_weight(shape=(H, self.units), initializer="glorot_uniform", name="w")
        self.v = self.add_weight(shape=(self.units,), initializer="glorot_uniform", name="v")

    def call(self, states, mask=None):
        x = ops.cast(states, "float32")  # (B, T, H)
        scores = ops.tensordot(ops.tanh(ops.tensordot(x, self.w, 1)), self.v, 1)  # (B, T)
        if mask is not None:
            scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
        alpha = ops.softmax(scores, axis=-1)  # (B, T), sums to 1 over real tokens
        pooled = ops.sum(x * alpha[..., None], axis=1)  # (B, H)
        return ops.cast(pooled, states.dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="gruflow")
class MeanMaxPooling(layers.Layer):
    """Mean and max of the states over real tokens, side by side (B, 2H): ULMFiT's concat
    pooling next to the attention's weighted sum, so the head sees the whole text's states."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, states, mask=None):
        x = ops.cast(states, "float32")  # (B, T, H)
        if mask is None:
            mask = ops.ones(ops.shape(x)[:2], dtype="bool")
        m = ops.cast(mask, "float32")[..., None]  # (B, T, 1)
        mean = ops.sum(x * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)  # (B, H)
        biggest = ops.max(ops.where(m > 0, x, ops.full_like(x, -1e9)), axis=1)  # (B, H)
        return ops.cast(ops.concatenate([mean, biggest], axis=-1), states.dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


@dataclass(frozen=True)
class EncoderShape:
    vocab_size: int
    embedding_dim: int
    units: int
    gru_layers: int
    bidirectional: bool = False  # a masked LM's encoder: each gru_i reads both ways (B, T, 2H)


def lm_encoder_shape(lm: keras.Model) -> EncoderShape:
    """The encoder shape of a trained LM, read from its `embedding` and `gru_i` layers."""
    matrix = lm.get_layer("embedding").embeddings
    grus = sorted(
        (layer for layer in lm.layers if re.fullmatch(r"gru_\d+", layer.name)),
        key=lambda layer: int(layer.name.split("_")[1]),
    )
    both = isinstance(grus[0], layers.Bidirectional)  # train.objective masked
    units = grus[0].forward_layer.units if both else grus[0].units
    return EncoderShape(int(matrix.shape[0]), int(matrix.shape[1]), int(units), len(grus), both)


def build_classifier(
    shape: EncoderShape, n_classes: int, dropout: float = 0.1, pooling: str = "attention"
) -> keras.Model:
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")  # (B, T), 0 = <pad>
    x = layers.Embedding(shape.vocab_size, shape.embedding_dim, mask_zero=True, name="embedding")(
        ids
    )  # (B, T, E), mask (B, T)
    for i in range(shape.gru_layers):
        if shape.bidirectional:  # the masked LM's layer, weights copied as a whole
            x = layers.Bidirectional(
                layers.GRU(shape.units, return_sequences=True), name=f"gru_{i}"
            )(x)  # (B, T, 2H)
        else:
            x = layers.GRU(shape.units, return_sequences=True, name=f"gru_{i}")(x)  # (B, T, H)
    pooled = AttentionPooling(shape.units, name="pooling")(x)  # (B, H)
    if pooling == "concat":  # finetune.pooling: attention, mean and max side by side (B, 3H)
        pooled = layers.Concatenate(name="pooling_concat")(
            [pooled, MeanMaxPooling(name="pooling_meanmax")(x)]
        )
    pooled = layers.Dropout(dropout, name="head_dropout")(pooled)
    probs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")(
        pooled
    )  # (B, C)
    return keras.Model(ids, probs, name="gruflow_classifier")


def transfer_encoder(model: keras.Model, lm: keras.Model) -> None:
    """Copy the LM's embedding matrix and GRU weights into the classifier's layers."""
    model.get_layer("embedding").embeddings.assign(
        ops.convert_to_numpy(lm.get_layer("embedding").embeddings)
    )
    for layer in model.layers:
        if re.fullmatch(r"gru_\d+", layer.name):
            layer.set_weights(lm.get_layer(layer.name).get_weights())


def set_encoder_trainable(model: keras.Model, trainable: bool) -> None:
    for layer in model.layers:
        if layer.name.startswith(ENCODER_PREFIXES):
            layer.trainable = trainable
