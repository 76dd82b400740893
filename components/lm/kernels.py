"""Which GRU kernel a model's layers run: "cudnn", "xla" or "generic", and why.

Usage: `kernel, reason = gru_kernel(model, gpu=True, xla=False)` (train writes both into
reports/train.json).

Keras 3 (keras/src/layers/rnn/gru.py, `GRU.inner_loop`, and keras/src/backend/tensorflow/
rnn.py, `cudnn_ok`) hands a GRU to the fused cuDNN op only when all of these hold: the
TensorFlow backend; `use_cudnn` "auto" or True; no `recurrent_dropout`; activation tanh;
recurrent activation sigmoid; not unrolled; a bias; `reset_after`; and a GPU among TensorFlow's
logical devices. Otherwise it runs its generic step loop (`backend.rnn`), which `jit_compile`
(train.xla) compiles with XLA. A cuDNN GRU sets `supports_jit = False`, so Keras turns XLA off
for the whole train step: with a GPU, train.xla is ignored by Keras itself.
"""

from __future__ import annotations


def _name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def cudnn_blockers(gru, backend: str) -> list[str]:
    """The cuDNN conditions a Keras GRU layer fails (by its config), [] when it is eligible."""
    cell = gru.cell
    checks = [
        (backend == "tensorflow", f"backend {backend} (cuDNN needs tensorflow)"),
        (gru.use_cudnn in ("auto", True), f"use_cudnn={gru.use_cudnn!r}"),
        (not cell.recurrent_dropout, f"recurrent_dropout={cell.recurrent_dropout}"),
        (_name(cell.activation) == "tanh", f"activation {_name(cell.activation)} (not tanh)"),
        (
            _name(cell.recurrent_activation) == "sigmoid",
            f"recurrent_activation {_name(cell.recurrent_activation)} (not sigmoid)",
        ),
        (not gru.unroll, "unroll=True"),
        (bool(cell.use_bias), "use_bias=False"),
        (bool(cell.reset_after), "reset_after=False"),
    ]
    return [f"{gru.name}: {why}" for ok, why in checks if not ok]


def gru_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.GRU)]


def gru_kernel(model, gpu: bool, xla: bool, backend: str | None = None) -> tuple[str, str]:
    """("cudnn" | "xla" | "generic", the reason) for the model's GRU layers on this hardware
    (`gpu`: TensorFlow sees one) with train.xla = `xla`."""
    import keras

    backend = backend or keras.backend.backend()
    grus = gru_layers(model)
    if not grus:
        return "generic", "the model has no GRU layer"
    blockers = [b for gru in grus for b in cudnn_blockers(gru, backend)]
    if not blockers and gpu:
        note = "; train.xla ignored (Keras turns XLA off around cuDNN)" if xla else ""
        return "cudnn", f"GPU present and every GRU layer meets Keras's cuDNN conditions{note}"
    why = "; ".join((["no GPU"] if not gpu else []) + blockers)
    if xla:
        return "xla", f"{why}: Keras's generic GRU loop, compiled by XLA (train.xla)"
    return "generic", f"{why}: Keras's generic GRU loop"
