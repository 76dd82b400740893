"""Stage `train`: fit the GRU+attention LM on packed windows of the train split.

Usage: `python -m components.train`. Writes artifacts/model.keras, reports/train_history.csv
and reports/train.json. When GRUFLOW_MLFLOW_RUN_ID is set (the Prefect flow sets it), each
epoch's metrics are also logged live to that MLflow run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from components.artifacts import atomic_file, write_json
from components.errors import GruflowError, guarded
from components.params import Params, load_params
from components.windows import make_windows, read_stream, unigram_log_probs

log = logging.getLogger(__name__)


def make_dataset(stream: np.ndarray, seq_len: int, batch_size: int, seed: int | None):
    import tensorflow as tf

    x, y, w = make_windows(stream, seq_len)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w))
    if seed is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), int(w.sum())


class EpochLogger:
    """Keras callback factory: per-epoch perplexity, throughput, and MLflow when asked."""

    @staticmethod
    def create(tokens_per_epoch: int):
        import keras

        run_id = os.environ.get("GRUFLOW_MLFLOW_RUN_ID")

        class _Logger(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs if logs is not None else {}
                logs["val_perplexity"] = math.exp(min(logs.get("val_loss", 50.0), 50.0))
                logs["tokens_per_second"] = tokens_per_epoch / (time.perf_counter() - self.t0)
                logs["learning_rate"] = float(self.model.optimizer.learning_rate)
                if run_id:
                    from mlflow.tracking import MlflowClient

                    client = MlflowClient()
                    for k, v in logs.items():
                        client.log_metric(run_id, k, float(v), step=epoch)

        return _Logger()


def fit(p: Params, vocab_size: int, train: np.ndarray, val: np.ndarray,
        embeddings: np.ndarray | None, history_csv: Path):
    import keras
    import tensorflow as tf

    from components.model import build_model

    keras.utils.set_random_seed(p.train.seed)
    tf.config.experimental.enable_op_determinism()
    t = p.train
    train_ds, n_train = make_dataset(train, t.seq_len, t.batch_size, t.seed)
    val_ds, _ = make_dataset(val, t.seq_len, t.batch_size, None)
    model = build_model(p.model, vocab_size, embeddings, unigram_log_probs(train, vocab_size))
    model.compile(optimizer=keras.optimizers.AdamW(t.learning_rate, clipnorm=t.clipnorm),
                  # Divide by the real tokens, not the window slots: padding must not
                  # lower the reported (validation) loss.
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True, reduction="mean_with_sample_weight"))
    callbacks = [
        keras.callbacks.EarlyStopping("val_loss", patience=t.patience, restore_best_weights=True),
        EpochLogger.create(n_train),
        keras.callbacks.CSVLogger(str(history_csv)),
    ]
    history = model.fit(train_ds, validation_data=val_ds, epochs=t.epochs, callbacks=callbacks,
                        verbose=2)
    return model, history.history, n_train


def run(p: Params) -> dict:
    from tokenizers import Tokenizer

    paths = p.paths
    vocab_size = Tokenizer.from_file(paths.tokenizer).get_vocab_size()
    tokens = Path(paths.tokens)
    train, val = read_stream(tokens / "train.parquet"), read_stream(tokens / "val.parquet")
    if train.size <= p.train.seq_len:
        raise GruflowError(f"train.seq_len ({p.train.seq_len}) is longer than the whole train "
                           f"split ({train.size} tokens) — lower it or add text")
    embeddings = None
    if p.model.embedding_init == "word2vec":
        embeddings = np.load(paths.embeddings)
        if embeddings.shape != (vocab_size, p.model.embedding_dim):
            raise GruflowError(f"{paths.embeddings}: shape {embeddings.shape} does not match "
                               f"vocabulary {vocab_size} x model.embedding_dim "
                               f"{p.model.embedding_dim} — rerun the embed stage")
    reports = Path(paths.reports)
    reports.mkdir(parents=True, exist_ok=True)
    with atomic_file(reports / "train_history.csv") as hist:
        t0 = time.perf_counter()
        model, history, n_train = fit(p, vocab_size, train, val, embeddings, hist)
        seconds = time.perf_counter() - t0
        with atomic_file(paths.model) as tmp:
            model.save(tmp)
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    with atomic_file(reports / "model_summary.txt") as tmp_summary:
        tmp_summary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    best = int(np.argmin(history["val_loss"]))
    summary = {
        "epochs_run": len(history["val_loss"]), "best_epoch": best + 1,
        "best_val_loss": float(history["val_loss"][best]),
        "best_val_perplexity": float(math.exp(history["val_loss"][best])),
        "train_tokens": n_train, "seconds": round(seconds, 1),
        "tokens_per_second": round(n_train * len(history["val_loss"]) / seconds, 1),
        "parameters": int(model.count_params()), "embedding_init": p.model.embedding_init,
    }
    write_json(reports / "train.json", summary)
    return summary


@guarded
def main() -> None:
    s = run(load_params())
    print(f"train: {s['epochs_run']} epochs, best val perplexity {s['best_val_perplexity']:.1f} "
          f"(epoch {s['best_epoch']}), {s['tokens_per_second']:.0f} tokens/s")


if __name__ == "__main__":
    main()
