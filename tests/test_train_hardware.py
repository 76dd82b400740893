"""The GPU code path of fit(), run on CPU: MirroredStrategy + mixed_float16 (GPU mocked)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from components import train
from components.params import load_params
from tests.test_lm_checkpoint import ROOT


@pytest.fixture()
def gpu_reported(monkeypatch):
    """Pretend TensorFlow saw two GPUs: fit() then takes the multi-GPU, mixed-precision path
    (MirroredStrategy falls back to the CPU device here)."""
    monkeypatch.setattr(
        train, "devices", lambda: {"device": "2 GPU", "strategy": "MirroredStrategy"}
    )
    yield
    keras.mixed_precision.set_global_policy("float32")  # do not leak into other tests


def test_fit_under_mirrored_strategy_and_mixed_precision(gpu_reported, tmp_path):
    p = load_params(ROOT / "params.yaml")
    p = p.model_copy(
        update={
            "paths": p.paths.model_copy(
                update={"checkpoints": str(tmp_path / "ckpt"), "reports": str(tmp_path)}
            ),
            "model": p.model.model_copy(
                update={
                    "units": 16,
                    "embedding_dim": 8,
                    "embedding_init": "random",
                    "attention_heads": 2,
                }
            ),
            "train": p.train.model_copy(
                update={"seq_len": 8, "batch_size": 8, "epochs": 2, "mixed_precision": True}
            ),
        }
    )
    rng = np.random.default_rng(0)
    stream = np.tile(rng.integers(4, 30, 12), 40).astype(np.int32)
    model, history, n_train, hw = train.fit(p, 32, stream, stream[:120], None, "hw-test")
    assert hw == {"device": "2 GPU", "strategy": "MirroredStrategy"}
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert model.get_layer("gru_0").compute_dtype == "float16"
    assert model.outputs[0].dtype == "float32"  # logits stay float32 for a stable softmax
    assert len(history["val_loss"]) == 2
    assert all(math.isfinite(v) for v in history["val_loss"])
    assert history["val_loss"][-1] < history["val_loss"][0]


TWO_REPLICAS = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from components.lm.carry import CarriedStateTrainer
from components.lm.fit import stream_dataset
from components.lm.inference import zero_states
from components.lm.model import build_model
from components.lm.windows import make_streams
from components.params import load_params
cfg = load_params().model.model_copy(update={"units": 8, "embedding_dim": 8, "dropout": 0.0,
                                             "gru_layers": 1, "embedding_init": "random"})
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
stream = np.random.default_rng(0).integers(4, 30, 400).astype(np.int32)
data, steps, S, _ = stream_dataset(stream, 10, 4, 1, replicas=2)
with strategy.scope():
    keras.utils.set_random_seed(0)
    trainer = CarriedStateTrainer(build_model(cfg, 30), S, 2)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
trainer.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
got = np.concatenate([np.asarray(r) for r in
                      strategy.experimental_local_results(trainer.carried[0].value)])
x = make_streams(stream, S, 10)[0]
states = zero_states(trainer.lm, S)
for k in range(len(x)):
    states = [np.asarray(h) for h in trainer.lm([x[k], *states])[1:]]
np.testing.assert_allclose(got, states[0], atol=1e-5)
print("replicas", strategy.num_replicas_in_sync, "streams", S)
"""


def test_two_replicas_each_carry_their_own_streams():
    """Under MirroredStrategy (two logical CPU devices, as two GPUs would be) each replica
    reads half of every batch and keeps its own streams' GRU states: after an epoch (at
    learning rate 0) they equal the states of the whole layout read on one device."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replicas 2 streams 4" in done.stdout
