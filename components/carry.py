"""Truncated BPTT: fit the LM over consecutive windows of parallel streams, carrying the GRU
state from one batch to the next.

Usage (inside a training recipe):
    data, steps, streams, targets = training_data(train, p.train)
    trainer = CarriedStateTrainer(build_model(...), streams)
    trainer.compile(...); trainer.fit(data, steps_per_epoch=steps,
                                      callbacks=[CarriedStateCallback(val, seq_len, batch_size)])

A split is laid out as S parallel streams (components/windows.make_streams); batch k holds window
k of every stream, so window k of a stream continues window k - 1 and starts from the GRU states
it ended with. The states live in non-trainable variables of the trainer (not in the saved LM),
are cut from the gradient at each window boundary, and are zeroed at every epoch start; each
epoch shuffles the order of whole documents (keyed on seed and epoch) before laying out the
streams, so an epoch is the same computation whether or not the run was resumed.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from components.inference import score_stream
from components.model import state_sizes
from components.tokenize import BOS
from components.windows import make_streams, make_windows, stream_count, target_count


def shuffle_documents(stream: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The stream's documents (each starting at a `<bos>`) in an order drawn from (seed,
    epoch): each epoch lays different text side by side, the same in a resumed run."""
    starts = np.flatnonzero(stream == BOS)
    if starts.size == 0 or starts[0] != 0:
        starts = np.r_[0, starts]  # text before the first <bos> stays one document
    docs = np.split(stream, starts[1:])
    order = np.random.default_rng([seed, epoch]).permutation(len(docs))
    return np.concatenate([docs[i] for i in order])


def stream_dataset(stream: np.ndarray, seq_len: int, batch_size: int, epochs: int = 1,
                   replicas: int = 1, seed: int | None = None, first_epoch: int = 0):
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
            yield from zip(*make_streams(shuffle_documents(stream, seed, epoch), n_streams,
                                         seq_len), strict=True)

    spec = tf.TensorSpec(x.shape[1:], tf.int32)
    data = tf.data.Dataset.from_generator(
        batches, output_signature=(spec, spec, tf.TensorSpec(x.shape[1:], tf.float32)))
    return data.prefetch(2), len(x), n_streams, target_count(stream)


def window_dataset(stream: np.ndarray, seq_len: int, batch_size: int, seed: int,
                   first_epoch: int, epochs: int):
    """`train.context: window`: independent windows, each from a cold state; epoch e is
    shuffled by a stateless permutation keyed on (seed, e), so a resumed run sees exactly the
    batches an uninterrupted one would. Same return values as stream_dataset."""
    import tensorflow as tf

    x, y, w = make_windows(stream, seq_len)
    n = len(x)
    tensors = (tf.constant(x), tf.constant(y), tf.constant(w))

    def epoch_batches(e):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    def gather(idx):
        return tuple(tf.gather(t, idx) for t in tensors)

    data = tf.data.Dataset.range(first_epoch, max(epochs, first_epoch + 1)).flat_map(
        epoch_batches).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE), -(-n // batch_size), batch_size, target_count(stream)


def training_data(stream: np.ndarray, t, first_epoch: int = 0, replicas: int = 1):
    """The train split as the `train.context` mode reads it (see the two functions above)."""
    if t.context == "window":
        return window_dataset(stream, t.seq_len, t.batch_size, t.seed, first_epoch, t.epochs)
    return stream_dataset(stream, t.seq_len, t.batch_size, t.epochs, replicas, t.seed,
                          first_epoch)


@keras.saving.register_keras_serializable(package="gruflow")
class CarriedStateTrainer(keras.Model):
    """Wraps the LM (ids, h_0...) -> (logits, h_T...) as ids -> logits for `fit`: each call
    starts from the states the previous call ended with and stores the new ones. With
    `carry=False` (`train.context: window`) every call starts cold instead."""

    def __init__(self, lm: keras.Model, streams: int, replicas: int = 1, carry: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.lm, self.streams, self.replicas, self.carry = lm, streams, replicas, carry
        # (S / replicas, H) per GRU layer: under tf.distribute each replica reads its own
        # S / replicas rows of every batch, so each keeps its own copy ("on_read").
        self.carried = [keras.Variable(initializer="zeros", shape=(streams // replicas, h),
                                       trainable=False, name=f"carried_{i}",
                                       synchronization="on_read",
                                       aggregation="only_first_replica")
                        for i, h in enumerate(state_sizes(lm) if carry else [])]
        self.built = True

    def call(self, ids, training=False):
        if not self.carry:
            cold = [ops.zeros((ops.shape(ids)[0], h)) for h in state_sizes(self.lm)]
            return self.lm([ids, *cold], training=training)[0]
        out = self.lm([ids, *self.carried], training=training)  # logits (S, T, V), h_T (S, H)
        for variable, h in zip(self.carried, out[1:], strict=True):
            variable.assign(ops.stop_gradient(ops.cast(h, variable.dtype)))  # truncated BPTT
        return out[0]

    def reset_state(self) -> None:
        for variable in self.carried:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {"name": self.name, "streams": self.streams, "replicas": self.replicas,
                "carry": self.carry,
                "lm": keras.saving.serialize_keras_object(self.lm)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        lm = keras.saving.deserialize_keras_object(config.pop("lm"))
        return cls(lm, **config)


class CarriedStateCallback(keras.callbacks.Callback):
    """Cold states at each epoch start; at its end `val_loss` = NLL per target of the val split,
    read exactly as the evaluate stage reads test (parallel streams, state carried, the same
    targets). Put it first in the callback list: later callbacks read val_loss."""

    def __init__(self, val: np.ndarray, seq_len: int, batch_size: int):
        super().__init__()
        self.val, self.seq_len = val, seq_len
        self.n_streams = stream_count(val.size, seq_len, batch_size)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.reset_state()

    def on_epoch_end(self, epoch, logs=None):
        s = score_stream(self.model.lm, self.val, self.seq_len, self.n_streams)
        if logs is not None:
            logs["val_loss"] = s["nll"] / max(s["targets"], 1)
