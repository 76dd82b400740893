"""Stage `tune`: an Optuna search over `tune.space` whose best values feed the train stage.

Usage: `python -m components.tune` (the DVC cmd); every reader applies the result with
`params, tuned = effective_params(params)` (components/tuning/best.py).

Trial 0 is the params.yaml values; every trial trains on `tune.data_fraction` of the train
tokens (whole documents chosen by a hash seeded with tune.seed, so the sample spans the split)
for at most `tune.max_epochs` epochs and reports its validation loss each epoch to the pruner.
The budget is `tune.n_trials`; `tune.timeout` is only a safety stop that fails the stage (unless
`tune.accept_nonreproducible`), so the result never depends on how busy the machine was.
The study is persistent (a journal file in `paths.tune_dir`, or the RDB URL in `tune.storage` /
GRUFLOW_OPTUNA_STORAGE) and named after a digest of its objective, so a killed run restarted
with the same command only runs the missing trials, while a changed space, model, train section
or data starts a new study. `tune.n_workers` processes (and `gruflow tune-worker` on other
machines) join it.
"""

from __future__ import annotations

import hashlib
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

from components.artifacts import write_json
from components.contract import TUNE_REPORT, split_file
from components.errors import GruflowError, guarded
from components.lm.fit import (
    compiled_model,
    load_embeddings,
    seed_everything,
    training_data,
    use_mixed_precision,
    validation,
)
from components.lm.windows import read_stream
from components.params import Params, SpaceSpec, load_params, with_overrides
from components.sizing import sized_params
from components.tuning import report as tune_report
from components.tuning.study import (
    finished,
    open_storage,
    open_study,
    recover_interrupted,
    storage_url,
)
from components.verbosity import quiet_optuna


@dataclass(frozen=True)
class TrialData:
    vocab_size: int
    train: np.ndarray  # tune.data_fraction of the train stream: sample_documents()
    val: np.ndarray
    embeddings: np.ndarray | None
    digest: str  # of the files the objective reads


def sample_documents(
    doc_ids: list[str], sizes: np.ndarray, fraction: float, seed: int, at_least: int
) -> np.ndarray:
    """Indices (in file order) of whole documents holding about `fraction` of the tokens:
    documents ranked by a SHA-256 of (seed, doc_id), taken until the share is reached. The
    sample spreads over the whole split (not its first slice, which on the built-in corpus is
    one source only) and is the same on every machine."""
    rank = np.argsort(
        [hashlib.sha256(f"{seed}:{d}".encode()).digest() for d in doc_ids], kind="stable"
    )
    need = max(int(sizes.sum() * fraction), at_least)
    taken = int(np.searchsorted(np.cumsum(sizes[rank]), need)) + 1
    return np.sort(rank[:taken])


def read_sample(path: Path, fraction: float, seed: int, at_least: int) -> np.ndarray:
    """The token stream of sample_documents() of a split, in document order."""
    if fraction >= 1.0:
        return read_stream(path)
    if not path.is_file():
        raise GruflowError(f"{path}: missing — run the tokenize stage first")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["doc_id", "ids"])
    sizes = pc.list_value_length(table.column("ids")).to_numpy(zero_copy_only=False)
    keep = sample_documents(table.column("doc_id").to_pylist(), sizes, fraction, seed, at_least)
    ids = table.column("ids").take(keep)
    return pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int32)


def load_data(p: Params) -> TrialData:
    from tokenizers import Tokenizer

    tokens = Path(p.paths.tokens)
    vocab_size = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size()
    train = read_sample(
        split_file(tokens, "train"), p.tune.data_fraction, p.tune.seed, p.train.seq_len + 1
    )
    val = read_stream(split_file(tokens, "val"))
    files = [split_file(tokens, "train"), split_file(tokens, "val")]
    embeddings = load_embeddings(p, vocab_size)
    if embeddings is not None:
        files.append(Path(p.paths.embeddings))
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return TrialData(vocab_size, train, val, embeddings, h.hexdigest())


def suggest(trial: optuna.Trial, name: str, spec: SpaceSpec):
    if spec.type == "categorical":
        return trial.suggest_categorical(name, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1))
    return trial.suggest_float(
        name, float(spec.low), float(spec.high), step=spec.step, log=spec.type == "logfloat"
    )


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
    """Train a fresh model with p by the train stage's recipe (components/lm/fit.py: same
    loss, label smoothing included, same seeding and op determinism); the best epoch's
    validation loss."""
    import keras

    from components.lm.progress import fit_progress

    t = p.train
    keras.backend.clear_session()
    seed_everything(t.seed)
    use_mixed_precision(t)
    train_ds, steps, streams, _ = training_data(data.train, t, vocab_size=data.vocab_size)
    model = compiled_model(p, data.vocab_size, data.train, data.embeddings, steps, streams)
    verbose, progress = fit_progress("tune trial")  # bar, or a line per 30 s
    history = model.fit(
        train_ds,
        epochs=t.epochs,
        steps_per_epoch=steps,
        shuffle=False,
        callbacks=[validation(data.val, t), *callbacks, *progress],
        verbose=verbose,
    )
    return float(np.min(history.history["val_loss"]))


def objective(p: Params, data: TrialData) -> Callable[[optuna.Trial], float]:
    def run_trial(trial: optuna.Trial) -> float:
        values = {name: suggest(trial, name, spec) for name, spec in p.tune.space.items()}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        tracked = tune_report.TrialRun(trial.number, values)
        try:
            loss = fit_trial(
                trial_params(p, values), data, [pruning_callback(trial, tracked.log_epoch)]
            )
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
        study.optimize(
            objective(p, data),
            n_trials=remaining,
            timeout=timeout,
            catch=(Exception,),
            callbacks=[stop_at_budget],
            gc_after_trial=True,
        )
    return len(ran)


def share_cores(n_workers: int) -> None:
    """Give each of n local workers its share of the cores instead of oversubscribing them."""
    if n_workers > 1:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(
                max(1, (os.cpu_count() or 1) // n_workers)
            )
        except RuntimeError:  # TensorFlow already initialised in this process: keep its pool
            pass


def join(p: Params, worker: int, deadline: float | None) -> int:
    """One worker: join the study and optimise (spawned processes, `gruflow tune-worker`)."""
    quiet_optuna()  # a spawned worker runs no guarded main
    share_cores(p.tune.n_workers)
    storage = open_storage(p)
    data = load_data(p)
    return optimize(open_study(p, storage, data.digest, worker), p, data, deadline)


def work(p: Params) -> int:
    """`gruflow tune-worker`: join from anywhere for up to tune.timeout seconds."""
    p = sized_params(p)
    return join(
        p, worker=os.getpid(), deadline=time.time() + p.tune.timeout if p.tune.timeout else None
    )


def check_budget(study: optuna.Study, p: Params) -> None:
    """tune.timeout is a safety stop, not a budget: a study it cut short fails the stage
    (trials stay in the journal, so a rerun continues) unless the user accepted that."""
    done, t = finished(study), p.tune
    if done < t.n_trials and not t.accept_nonreproducible:
        raise GruflowError(
            f"tune: tune.timeout ({t.timeout} s) stopped the study after {done} "
            f"of {t.n_trials} trials — raise tune.timeout (0 = no limit) or "
            "lower tune.n_trials; a rerun continues the study "
            "(or set tune.accept_nonreproducible: true to train on it as is)"
        )


def run(p: Params) -> dict:
    p = sized_params(p)  # model.size auto: the sizes train will use
    t0 = time.time()
    best: dict = {}
    study: optuna.Study | None = None
    if p.tune.n_trials == 0:  # tuning off: train keeps the params.yaml values
        summary = tune_report.summarise(None)
    else:
        storage = open_storage(p)
        data = load_data(p)
        study = open_study(p, storage, data.digest, worker=0)
        if not storage_url(p):
            recover_interrupted(study, storage)
        deadline = t0 + p.tune.timeout if p.tune.timeout else None
        share_cores(p.tune.n_workers)
        ctx = multiprocessing.get_context("spawn")
        workers = [
            ctx.Process(target=join, args=(p, i, deadline)) for i in range(1, p.tune.n_workers)
        ]
        for w in workers:
            w.start()
        optimize(study, p, data, deadline)
        for w in workers:
            w.join()
            if w.exitcode:
                print(f"tune: worker process exited with code {w.exitcode}", file=sys.stderr)
        check_budget(study, p)
        summary = tune_report.summarise(study, p.tune.n_trials)
        best = tune_report.best_params(study)
    write_json(p.paths.best_params, best)
    tune_report.save_plots(study, Path(p.paths.reports))
    write_json(Path(p.paths.reports) / TUNE_REPORT, summary)
    return summary


@guarded
def main() -> None:
    t0 = time.time()
    s = run(load_params())
    n = s["n_trials"]
    if not s["enabled"]:
        print("tune: disabled (tune.n_trials is 0) — train uses params.yaml as is")
        return
    best, defaults = (
        f"{v:.4f}" if v is not None else "n/a" for v in (s["best_value"], s["defaults_val_loss"])
    )
    print(
        f"tune: {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed trials "
        f"({time.time() - t0:.0f} s this run); best val loss {best}, params.yaml values "
        f"{defaults}"
    )
    if not s["reproducible"]:
        print(
            f"tune: NOT reproducible ({'; '.join(s['nonreproducible_reasons'])}) — "
            "accepted by tune.accept_nonreproducible",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
