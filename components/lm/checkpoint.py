"""Resumable training: an epoch checkpoint plus the callbacks that own all resumable state.

Usage (inside the train stage):
    ckpt = Checkpoint(directory, digest); start = ckpt.restore()  # None or (model, state)
    callbacks = [ResumableEarlyStopping(ckpt, patience, state)]

After every epoch the full model (weights, optimizer and RNG state) and a small JSON state
(epoch, history, early-stopping counters) are written atomically. A restart with the same
command resumes after the last finished epoch. A checkpoint whose digest (model params, train
params other than epochs/patience, data) differs is discarded with a message; an unreadable
one too: training then starts afresh, which is always safe.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np

from components.artifacts import atomic_dir

log = logging.getLogger(__name__)


def seed_states(model: keras.Model) -> list:
    """The dropout RNG state variables; `.keras` files do not restore them (Keras draws new
    seeds on load), so the checkpoint carries them to keep a resumed run identical."""
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


class Checkpoint:
    def __init__(self, directory: Path, digest: str):
        self.dir = Path(directory)
        self.digest = digest

    def restore(self) -> tuple[keras.Model, dict] | None:
        from components.lm import carry as _trainer  # noqa: F401  (registers the trainer)
        from components.lm import masked as _masked  # noqa: F401  (the masked LM's trainer)
        from components.lm import model as _layers  # noqa: F401  (registers custom layers)

        state_file = self.dir / "state.json"
        if not state_file.is_file():
            return None
        try:
            state = json.loads(state_file.read_text())
            if state.get("digest") != self.digest:
                print(
                    f"train: checkpoint in {self.dir} was made with other model/train params "
                    "or data — starting afresh"
                )
                self.clear()
                return None
            model = keras.saving.load_model(self.dir / "last.keras", safe_mode=True)
            variables = seed_states(model)
            if len(variables) != len(state["rng"]):
                raise ValueError("dropout RNG state does not match the model")
            for variable, value in zip(variables, state["rng"], strict=True):
                variable.assign(np.array(value, dtype=variable.dtype))
        except Exception as exc:  # noqa: BLE001 — any unreadable checkpoint: start afresh
            print(
                f"train: checkpoint in {self.dir} is unreadable ({exc.__class__.__name__}) "
                "— starting afresh"
            )
            self.clear()
            return None
        print(f"train: resuming after epoch {state['epoch'] + 1} from {self.dir}")
        return model, state

    def save(self, model: keras.Model, state: dict) -> None:
        """Write into a sibling folder, then swap it in: a kill never leaves half a checkpoint."""
        with atomic_dir(self.dir) as tmp:
            model.save(tmp / "last.keras")
            best = self.dir / "best.weights.h5"
            if state.get("improved") or not best.is_file():
                model.save_weights(tmp / "best.weights.h5")
            else:
                shutil.copy2(best, tmp / "best.weights.h5")
            rng = [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in seed_states(model)]
            (tmp / "state.json").write_text(
                json.dumps({**state, "rng": rng, "digest": self.digest})
            )

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ResumableEarlyStopping(keras.callbacks.Callback):
    """Early stopping on val_loss whose counters, history and best weights survive a restart.

    Checkpoints after each epoch; at the end the best epoch's weights are restored.
    """

    def __init__(self, ckpt: Checkpoint, patience: int, state: dict | None = None):
        super().__init__()
        state = state or {}
        self.ckpt = ckpt
        self.patience = patience
        self.best = float(state.get("best", np.inf))
        self.wait = int(state.get("wait", 0))
        self.history: dict[str, list[float]] = state.get("history", {})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        val = float(logs["val_loss"])
        improved = val < self.best
        self.best, self.wait = (val, 0) if improved else (self.best, self.wait + 1)
        stop = self.wait >= max(self.patience, 1)
        self.ckpt.save(
            self.model,
            {
                "epoch": epoch,
                "best": self.best,
                "wait": self.wait,
                "history": self.history,
                "improved": improved,
                "stopped": stop,
            },
        )
        self.model.stop_training = stop

    def on_train_end(self, logs=None):
        best = self.ckpt.dir / "best.weights.h5"
        if best.is_file():
            self.model.load_weights(best)
