"""Which GRU kernel runs (components/lm/kernels.py), by Keras 3's own cuDNN rules; the GPU is
mocked (Keras's `_is_gpu_available`), nothing else."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

from components.lm.kernels import cudnn_blockers, gru_kernel  # noqa: E402
from components.lm.model import build_model  # noqa: E402
from components.params import load_params  # noqa: E402
from tests.test_lm_model import ROOT  # noqa: E402

CONFIGS = [  # (GRU kwargs, what blocks cuDNN)
    ({}, None),
    ({"recurrent_dropout": 0.1}, "recurrent_dropout"),
    ({"activation": "relu"}, "activation relu"),
    ({"recurrent_activation": "hard_sigmoid"}, "recurrent_activation hard_sigmoid"),
    ({"reset_after": False}, "reset_after=False"),
    ({"unroll": True}, "unroll=True"),
    ({"use_bias": False}, "use_bias=False"),
    ({"use_cudnn": False}, "use_cudnn=False"),
    ({"dropout": 0.2}, None),  # input dropout: Keras applies it before the cuDNN call
]


@pytest.fixture()
def gpu(monkeypatch):
    """Keras believes a GPU is there (its cudnn_ok asks this function)."""
    tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
    monkeypatch.setattr(tf_rnn, "_is_gpu_available", lambda: True)


def default_model(**update):
    cfg = load_params(ROOT / "params.yaml").model.model_copy(
        update={"embedding_init": "random", **update}
    )
    return build_model(cfg, 50)


@pytest.mark.parametrize(("kwargs", "blocker"), CONFIGS)
def test_decision_agrees_with_keras_own_cudnn_rule(gpu, kwargs, blocker):
    """Keras marks a GRU it will hand to cuDNN with supports_jit = False at construction (its
    cudnn_ok, GPU mocked present); recurrent_dropout and use_cudnn it checks in inner_loop."""
    layer = keras.layers.GRU(4, **kwargs)
    keras_says = (
        not layer.supports_jit
        and not layer.cell.recurrent_dropout
        and layer.use_cudnn in ("auto", True)
    )
    blockers = cudnn_blockers(layer, "tensorflow")
    assert (blockers == []) == keras_says
    assert (blocker is None) == keras_says
    if blocker:
        assert any(blocker in b for b in blockers), blockers
    model = keras.Sequential([keras.Input((3, 2)), layer])
    assert gru_kernel(model, gpu=True, xla=False)[0] == ("cudnn" if keras_says else "generic")


@pytest.mark.parametrize(
    "update",
    [{}, {"weight_drop": 0.3, "locked_dropout": True, "embedding_dropout": 0.1, "gru_layers": 2}],
)
def test_default_and_regularised_configs_are_cudnn_eligible_on_a_gpu(gpu, update):
    model = default_model(**update)
    for layer in model.layers:
        if isinstance(layer, keras.layers.GRU):
            assert not layer.supports_jit  # Keras itself: cuDNN (GPU mocked)
    kernel, reason = gru_kernel(model, gpu=True, xla=False)
    assert kernel == "cudnn" and "GPU present" in reason
    kernel, reason = gru_kernel(model, gpu=True, xla=True)
    assert kernel == "cudnn" and "train.xla ignored" in reason


def test_on_cpu_the_generic_loop_runs_or_xla_compiles_it():
    model = default_model()
    assert gru_kernel(model, gpu=False, xla=False) == (
        "generic",
        "no GPU: Keras's generic GRU loop",
    )
    kernel, reason = gru_kernel(model, gpu=False, xla=True)
    assert kernel == "xla" and reason.startswith("no GPU")


def test_a_blocked_layer_is_named_even_with_a_gpu():
    model = keras.Sequential(
        [keras.Input((3, 2)), keras.layers.GRU(4, recurrent_dropout=0.2, name="slow")]
    )
    kernel, reason = gru_kernel(model, gpu=True, xla=False)
    assert kernel == "generic" and "slow: recurrent_dropout=0.2" in reason
    assert gru_kernel(model, gpu=True, xla=False, backend="jax")[1].count("backend jax") == 1
