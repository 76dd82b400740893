"""The GPU code path of fit(), run on CPU: MirroredStrategy + mixed_float16 (GPU mocked)."""

from __future__ import annotations

import math

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
    monkeypatch.setattr(train, "devices", lambda: {"device": "2 GPU",
                                                   "strategy": "MirroredStrategy"})
    yield
    keras.mixed_precision.set_global_policy("float32")  # do not leak into other tests


def test_fit_under_mirrored_strategy_and_mixed_precision(gpu_reported, tmp_path):
    p = load_params(ROOT / "params.yaml")
    p = p.model_copy(update={
        "paths": p.paths.model_copy(update={"checkpoints": str(tmp_path / "ckpt"),
                                            "reports": str(tmp_path)}),
        "model": p.model.model_copy(update={"units": 16, "embedding_dim": 8,
                                            "embedding_init": "random", "attention_heads": 2}),
        "train": p.train.model_copy(update={"seq_len": 8, "batch_size": 8, "epochs": 2,
                                            "mixed_precision": True})})
    rng = np.random.default_rng(0)
    stream = np.tile(rng.integers(4, 30, 12), 40).astype(np.int32)
    model, history, n_train, hw = train.fit(p, 32, stream, stream[:120], None, "hw-test")
    assert hw == {"device": "2 GPU", "strategy": "MirroredStrategy"}
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert model.get_layer("gru_0").compute_dtype == "float16"
    assert model.output.dtype == "float32"  # logits stay float32 for a stable softmax
    assert len(history["val_loss"]) == 2
    assert all(math.isfinite(v) for v in history["val_loss"])
    assert history["val_loss"][-1] < history["val_loss"][0]
