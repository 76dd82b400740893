"""Stage `tune`: an Optuna search over `tune.space` whose best values feed the train stage.

Usage: `python -m components.tune` (the DVC cmd); train applies the result with
`params, tuned = merge_best(params, load_best(params))`.

Trial 0 is the params.yaml values; every trial trains on the first `tune.data_fraction` of the
train tokens for at most `tune.max_epochs` epochs and reports its validation loss each epoch to
the pruner. The study is persistent (a journal file in `paths.tune_dir`, or the RDB URL in
`tune.storage` / GRUFLOW_OPTUNA_STORAGE) and named after a digest of its objective, so a killed
run restarted with the same command only runs the missing trials, while a changed space, model,
train section or data starts a new study. `tune.n_workers` processes (and `gruflow tune-worker`
on other machines) join it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from components import tune_report
from components.artifacts import write_json
from components.errors import GruflowError, guarded
from components.params import Params, SpaceSpec, load_params, with_overrides
from components.tune_study import (
    finished,
    open_storage,
    open_study,
    recover_interrupted,
    storage_url,
)
from components.windows import read_stream, unigram_log_probs


@dataclass(frozen=True)
class TrialData:
    vocab_size: int
    train: np.ndarray  # the first tune.data_fraction of the train stream
    val: np.ndarray
    embeddings: np.ndarray | None
    digest: str  # of the files the objective reads


def load_data(p: Params) -> TrialData:
    from tokenizers import Tokenizer

    tokens = Path(p.paths.tokens)
    vocab_size = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size()
    train, val = read_stream(tokens / "train.parquet"), read_stream(tokens / "val.parquet")
    train = train[: max(int(train.size * p.tune.data_fraction), p.train.seq_len + 1)]
    files = [tokens / "train.parquet", tokens / "val.parquet"]
    embeddings = None
    if p.model.embedding_init == "word2vec":
        files.append(Path(p.paths.embeddings))
        embeddings = np.load(p.paths.embeddings)
        if embeddings.shape != (vocab_size, p.model.embedding_dim):
            raise GruflowError(f"{p.paths.embeddings}: shape {embeddings.shape} does not match "
                               f"vocabulary {vocab_size} x model.embedding_dim "
                               f"{p.model.embedding_dim} — rerun the embed stage")
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return TrialData(vocab_size, train, val, embeddings, h.hexdigest())


def suggest(trial: optuna.Trial, name: str, spec: SpaceSpec):
    if spec.type == "categorical":
        return trial.suggest_categorical(name, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1))
    return trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step,
                               log=spec.type == "logfloat")


def trial_params(p: Params, values: dict) -> Params:
    """The params one trial trains with; its learning-rate schedule spans its own epochs."""
    epochs = min(values.get("train.epochs", p.tune.max_epochs), p.tune.max_epochs)
    return with_overrides(p, {**values, "train.epochs": epochs}, "tune trial")


def pruning_callback(trial: optuna.Trial, on_epoch: Callable[[int, float], None] | None = None):
    """Report each epoch's val_loss to the study; raise TrialPruned when the pruner says so."""
    import keras

    class _Pruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            val_loss = float((logs or {})["val_loss"])
            if on_epoch is not None:
                on_epoch(epoch, val_loss)
            trial.report(val_loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_loss {val_loss:.4f} after epoch {epoch}")

    return _Pruning()


def fit_trial(p: Params, data: TrialData, callbacks: list) -> float:
    """Train a fresh model with p; the best epoch's validation loss."""
    import keras
    import tensorflow as tf

    from components.carry import CarriedStateCallback, CarriedStateTrainer, training_data
    from components.model import build_model
    from components.train import optimizer

    t = p.train
    keras.backend.clear_session()
    keras.utils.set_random_seed(t.seed)
    if t.mixed_precision and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    train_ds, steps, streams, _ = training_data(data.train, t)
    model = CarriedStateTrainer(build_model(p.model, data.vocab_size, data.embeddings,
                                            unigram_log_probs(data.train, data.vocab_size)),
                                streams, carry=t.context == "carried")
    model.compile(optimizer=optimizer(p, steps), jit_compile=t.xla,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True, reduction="mean_with_sample_weight"))
    history = model.fit(train_ds, epochs=t.epochs, steps_per_epoch=steps, shuffle=False,
                        callbacks=[CarriedStateCallback(data.val, t.seq_len, t.batch_size),
                                   *callbacks], verbose=0)
    return float(np.min(history.history["val_loss"]))


def objective(p: Params, data: TrialData) -> Callable[[optuna.Trial], float]:
    def run_trial(trial: optuna.Trial) -> float:
        values = {name: suggest(trial, name, spec) for name, spec in p.tune.space.items()}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        tracked = tune_report.TrialRun(trial.number, values)
        try:
            loss = fit_trial(trial_params(p, values), data,
                             [pruning_callback(trial, tracked.log_epoch)])
        except optuna.TrialPruned:
            tracked.end("PRUNED")
            raise
        except Exception:
            tracked.end("FAIL")  # optimize(catch=...) records it as FAIL; the study goes on
            raise
        tracked.end("COMPLETE" if np.isfinite(loss) else "FAIL")
        return loss

    return run_trial


def optimize(study: optuna.Study, p: Params, data: TrialData, deadline: float | None) -> int:
    """Run trials until the study holds tune.n_trials finished ones (counting every worker's)
    or the deadline passes; the number this process ran."""
    n_trials, ran = p.tune.n_trials, []

    def stop_at_budget(study: optuna.Study, trial) -> None:
        ran.append(trial.number)
        if finished(study) >= n_trials:
            study.stop()

    remaining = n_trials - finished(study)
    timeout = None if deadline is None else deadline - time.time()
    if remaining > 0 and (timeout is None or timeout > 0):
        study.optimize(objective(p, data), n_trials=remaining, timeout=timeout,
                       catch=(Exception,), callbacks=[stop_at_budget], gc_after_trial=True)
    return len(ran)


def share_cores(n_workers: int) -> None:
    """Give each of n local workers its share of the cores instead of oversubscribing them."""
    if n_workers > 1:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(
                max(1, (os.cpu_count() or 1) // n_workers))
        except RuntimeError:  # TensorFlow already initialised in this process: keep its pool
            pass


def join(p: Params, worker: int, deadline: float | None) -> int:
    """One worker: join the study and optimise (spawned processes, `gruflow tune-worker`)."""
    share_cores(p.tune.n_workers)
    storage = open_storage(p)
    data = load_data(p)
    return optimize(open_study(p, storage, data.digest, worker), p, data, deadline)


def work(p: Params) -> int:
    """`gruflow tune-worker`: join from anywhere for up to tune.timeout seconds."""
    return join(p, worker=os.getpid(), deadline=time.time() + p.tune.timeout
                if p.tune.timeout else None)


def run(p: Params) -> dict:
    t0 = time.time()
    best: dict = {}
    study: optuna.Study | None = None
    if p.tune.n_trials == 0:  # tuning off: train keeps the params.yaml values
        summary = tune_report.summarise(None, 0.0)
    else:
        storage = open_storage(p)
        data = load_data(p)
        study = open_study(p, storage, data.digest, worker=0)
        if not storage_url(p):
            recover_interrupted(study, storage)
        deadline = t0 + p.tune.timeout if p.tune.timeout else None
        share_cores(p.tune.n_workers)
        ctx = multiprocessing.get_context("spawn")
        workers = [ctx.Process(target=join, args=(p, i, deadline))
                   for i in range(1, p.tune.n_workers)]
        for w in workers:
            w.start()
        optimize(study, p, data, deadline)
        for w in workers:
            w.join()
            if w.exitcode:
                print(f"tune: worker process exited with code {w.exitcode}", file=sys.stderr)
        summary = tune_report.summarise(study, time.time() - t0)
        best = tune_report.best_params(study)
    write_json(p.paths.best_params, best)
    tune_report.save_plots(study, Path(p.paths.reports))
    write_json(Path(p.paths.reports) / "tune.json", summary)
    tune_report.log_to_parent(summary, Path(p.paths.reports))
    return summary


def load_best(p: Params) -> dict:
    """The tune stage's best values; {} when tuning is off (tune.n_trials: 0)."""
    path = Path(p.paths.best_params)
    if p.tune.n_trials == 0:
        return {}
    if not path.is_file():
        raise GruflowError(f"{path}: missing — run the tune stage first (dvc repro tune), "
                           "or set tune.n_trials: 0 to train with params.yaml as is")
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        best = None
    if not isinstance(best, dict):
        raise GruflowError(f"{path}: expected a JSON object of dotted names — rerun tune")
    return best


def merge_best(params: Params, best: dict) -> tuple[Params, dict]:
    """params with the tuned values applied and validated again, and the overrides that
    changed a params.yaml value (name -> tuned value)."""
    if not best:
        return params, {}
    merged = with_overrides(params, best, params.paths.best_params)
    changed = {name: value for name, value in best.items()
               if getattr(getattr(params, name.split(".")[0]), name.split(".")[1]) != value}
    return merged, changed


@guarded
def main() -> None:
    s = run(load_params())
    n = s["n_trials"]
    if not s["enabled"]:
        print("tune: disabled (tune.n_trials is 0) — train uses params.yaml as is")
        return
    best, defaults = (f"{v:.4f}" if v is not None else "n/a"
                      for v in (s["best_value"], s["defaults_val_loss"]))
    print(f"tune: {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed trials "
          f"({s['seconds']:.0f} s this run); best val loss {best}, params.yaml values {defaults}")


if __name__ == "__main__":
    main()
