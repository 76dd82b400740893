"""Truncated BPTT: fit the LM over consecutive windows of parallel streams, carrying the GRU
state from one batch to the next (the data side is components/lm/fit.training_data).

Usage (inside the training recipe, components/lm/fit.py):
    trainer = CarriedStateTrainer(build_model(...), streams); trainer.compile(...)
    trainer.fit(data, steps_per_epoch=steps,
                callbacks=[CarriedStateCallback(val, seq_len, batch_size), ...])

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

from components.lm.inference import score_stream
from components.lm.model import state_sizes
from components.lm.windows import stream_count


@keras.saving.register_keras_serializable(package="gruflow")
class CarriedStateTrainer(keras.Model):
    """Wraps the LM (ids, h_0...) -> (logits, h_T...) as ids -> logits for `fit`: each call
    starts from the states the previous call ended with and stores the new ones. With
    `carry=False` (`train.context: window`) every call starts cold instead."""

    def __init__(
        self, lm: keras.Model, streams: int, replicas: int = 1, carry: bool = True, **kwargs
    ):
        super().__init__(**kwargs)
        self.lm, self.streams, self.replicas, self.carry = lm, streams, replicas, carry
        # (S / replicas, H) per GRU layer: under tf.distribute each replica reads its own
        # S / replicas rows of every batch, so each keeps its own copy ("on_read").
        self.carried = [
            keras.Variable(
                initializer="zeros",
                shape=(streams // replicas, h),
                trainable=False,
                name=f"carried_{i}",
                synchronization="on_read",
                aggregation="only_first_replica",
            )
            for i, h in enumerate(state_sizes(lm) if carry else [])
        ]
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
        return {
            "name": self.name,
            "streams": self.streams,
            "replicas": self.replicas,
            "carry": self.carry,
            "lm": keras.saving.serialize_keras_object(self.lm),
        }

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
