"""Stage `train`: fit the GRU+attention LM on the train split, read as train.batch_size
parallel streams with the GRU state carried from window to window (components/lm/carry.py).

Usage: `python -m components.train`. Writes artifacts/model.keras, reports/train_history.csv,
reports/train.json and TensorBoard logs. Resumes from its epoch checkpoint when restarted after
a kill. The recipe (data, optimizer, loss, seeding) is components/lm/fit.py, shared with the
tune trials; the tuned values come from components/tuning/best.py. When the flow asks for live
logging (components/live_log.py), each epoch's metrics go to its MLflow run as well.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from components import live_log
from components.artifacts import atomic_file, stable_keras_file, write_json
from components.contract import (
    MODEL_SUMMARY,
    TENSORBOARD,
    TRAIN_HISTORY,
    TRAIN_REPORT,
    split_file,
)
from components.errors import GruflowError, guarded
from components.lm.fit import (
    compiled_model,
    flops_per_token,
    load_embeddings,
    seed_everything,
    training_data,
    use_mixed_precision,
    validation,
)
from components.lm.kernels import gru_kernel
from components.lm.windows import read_stream
from components.params import Params, load_params
from components.tuning.best import effective_params


def resume_digest(p: Params, vocab_size: int, tokens_dir: Path) -> str:
    """What a checkpoint must share with this run to be resumed."""
    train = p.train.model_dump(exclude={"epochs", "patience"})
    blob = json.dumps([p.model.model_dump(), train, vocab_size], sort_keys=True).encode()
    h = hashlib.sha256(blob)
    for split in ("train", "val"):
        h.update(split_file(tokens_dir, split).read_bytes())
    return h.hexdigest()[:16]


def devices() -> dict:
    """Log which hardware trains: every GPU TensorFlow sees (MirroredStrategy if several)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "device": f"{len(gpus)} GPU" if gpus else "CPU",
        "strategy": "MirroredStrategy" if len(gpus) > 1 else "default",
    }


def epoch_logger(tokens_per_epoch: int):
    """Per-epoch perplexity, learning rate and throughput; live to MLflow when the flow asks."""
    import keras

    class _Logger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            logs["val_perplexity"] = math.exp(min(logs.get("val_loss", 50.0), 50.0))
            logs["tokens_per_second"] = tokens_per_epoch / (time.perf_counter() - self.t0)
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )
            live_log.metrics(logs, step=epoch)

    return _Logger()


def fit(
    p: Params,
    vocab_size: int,
    train: np.ndarray,
    val: np.ndarray,
    embeddings: np.ndarray | None,
    digest: str,
):
    """Build (or resume) and fit the model; returns (model, history, train tokens, hardware)."""
    import keras
    import tensorflow as tf

    from components.lm.checkpoint import Checkpoint, ResumableEarlyStopping
    from components.lm.progress import fit_progress

    t, hw = p.train, devices()
    # Fresh layer-name counters: the saved config (and its DVC hash) must not depend on what
    # else this process built before (a bench, a test, another model).
    keras.backend.clear_session()
    seed_everything(t.seed)
    use_mixed_precision(t, on_gpu=hw["device"] != "CPU")
    strategy = (
        tf.distribute.MirroredStrategy()
        if hw["strategy"] == "MirroredStrategy"
        else tf.distribute.get_strategy()
    )
    ckpt = Checkpoint(Path(p.paths.checkpoints), digest)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        restored = ckpt.restore()
        trainer, state = restored if restored else (None, {})
        first = state["epoch"] + 1 if state else 0
        train_ds, steps, streams, n_train = training_data(train, t, first, replicas, vocab_size)
        if trainer is None:
            trainer = compiled_model(p, vocab_size, train, embeddings, steps, streams, replicas)
    stopper = ResumableEarlyStopping(ckpt, t.patience, state)
    board = Path(p.paths.reports) / TENSORBOARD  # not a DVC out: events carry wall times
    if first == 0:
        shutil.rmtree(board, ignore_errors=True)  # a fresh run's logs, not a pile of old ones
    callbacks = [
        validation(val, t),
        epoch_logger(n_train),
        stopper,
        keras.callbacks.TensorBoard(str(board)),
    ]
    verbose, progress = fit_progress("train", epoch_lines=True)  # bar, or lines (30 s, epoch)
    if first < t.epochs and not state.get("stopped"):
        try:
            trainer.fit(
                train_ds,
                epochs=t.epochs,
                initial_epoch=first,
                steps_per_epoch=steps,
                callbacks=[*callbacks, *progress],
                shuffle=False,
                verbose=verbose,
            )
        except tf.errors.ResourceExhaustedError:
            raise GruflowError(
                f"a batch of train.batch_size {t.batch_size} x train.seq_len "
                f"{t.seq_len} does not fit in memory — lower one of them "
                "(finished epochs are checkpointed)"
            ) from None
    return trainer.lm, stopper.history, n_train, hw


TIMED = ("tokens_per_second",)  # per-epoch speed: live in MLflow, never in a DVC output


def write_history(history: dict[str, list[float]], path: Path) -> None:
    keys = sorted(k for k in history if k not in TIMED)
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["epoch", *keys])
        for epoch in range(len(history["val_loss"])):
            out.writerow([epoch, *(history[k][epoch] for k in keys)])


def run(p: Params) -> dict:
    from tokenizers import Tokenizer

    p, tuned = effective_params(p)  # the tune stage's best values over params.yaml
    if tuned:
        print(f"train: using tuned values from {p.paths.best_params}: {tuned}")
    paths = p.paths
    vocab_size = Tokenizer.from_file(paths.tokenizer).get_vocab_size()
    tokens = Path(paths.tokens)
    train, val = read_stream(split_file(tokens, "train")), read_stream(split_file(tokens, "val"))
    if train.size <= p.train.seq_len:
        raise GruflowError(
            f"train.seq_len ({p.train.seq_len}) is longer than the whole train "
            f"split ({train.size} tokens) — lower it or add text"
        )
    embeddings = load_embeddings(p, vocab_size)
    reports = Path(paths.reports)
    t0 = time.perf_counter()
    model, history, n_train, hw = fit(
        p, vocab_size, train, val, embeddings, resume_digest(p, vocab_size, tokens)
    )
    seconds = time.perf_counter() - t0
    with atomic_file(paths.model) as tmp:
        model.save(tmp)
        stable_keras_file(tmp)
    write_history(history, reports / TRAIN_HISTORY)
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    with atomic_file(reports / MODEL_SUMMARY) as tmp_summary:
        tmp_summary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    best = int(np.argmin(history["val_loss"]))
    tps = float(np.median(history["tokens_per_second"]))
    fpt = flops_per_token(
        vocab_size, p.model.embedding_dim, p.model.units, p.model.gru_layers, p.train.seq_len
    )
    summary = {
        "epochs_run": len(history["val_loss"]),
        "best_epoch": best + 1,
        "best_val_loss": history["val_loss"][best],
        "best_val_perplexity": math.exp(history["val_loss"][best]),
        "train_tokens": n_train,
        "flops_per_token": fpt,
        "parameters": int(model.count_params()),
        # what the model has; with model.size auto, what components/sizing.py picked
        "size": {
            "mode": p.model.size,
            "vocab_size": vocab_size,
            "embedding_dim": p.model.embedding_dim,
            "units": p.model.units,
            "gru_layers": p.model.gru_layers,
        },
        "embedding_init": p.model.embedding_init,
        "objective": p.train.objective,
        "tuned": tuned,
        **hw,
    }
    # Which GRU kernel ran, by Keras's own cuDNN rules on this hardware (components/lm/kernels).
    summary["gru_kernel"], summary["gru_kernel_reason"] = gru_kernel(
        model, gpu=hw["device"] != "CPU", xla=p.train.xla
    )
    write_json(reports / TRAIN_REPORT, summary)
    # Speed goes to the console and MLflow (live per epoch), not into train.json: a DVC
    # output must not depend on how busy the machine was.
    summary = summary | {
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tps, 1),
        "achieved_flops_per_second": round(3 * fpt * tps),
    }
    from components.lm.checkpoint import Checkpoint

    Checkpoint(Path(paths.checkpoints), "").clear()  # finished: the next run starts afresh
    return summary


@guarded
def main() -> None:
    s = run(load_params())
    print(
        f"train: {s['epochs_run']} epochs on {s['device']}, best val perplexity "
        f"{s['best_val_perplexity']:.1f} (epoch {s['best_epoch']}), "
        f"{s['tokens_per_second']:.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
