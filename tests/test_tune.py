"""Stage `tune`: space validation, pass-through, a tiny real study, resuming, failures, pruning,
MLflow trial runs — on synthetic token data in a temporary folder."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from tokenizers import Tokenizer

from components import tune
from components.contract import BOS, EOS
from components.errors import GruflowError
from components.params import Params, parse_params
from components.tokenize import SCHEMA, train_tokenizer
from components.tuning import study as tune_study
from components.tuning.best import merge_best
from flows import tracking

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
PATTERN = np.random.default_rng(0).permutation(np.arange(4, 24)).astype(np.int32)
TEXT = [
    "the parser reads the header and returns a list of names",
    "each thread opens a file, checks the next line and closes the socket",
] * 10
SPACE = {
    "train.learning_rate": {"type": "logfloat", "low": 0.005, "high": 0.05},
    "model.units": {"type": "categorical", "choices": [8, 16]},
}


def write_tokens(path: Path, n_docs: int, length: int, offset: int) -> None:
    docs = [
        [BOS, *(int(PATTERN[(i * 7 + j) % PATTERN.size]) for j in range(length)), EOS]
        for i in range(offset, offset + n_docs)
    ]
    pq.write_table(
        pa.table(
            [
                pa.array([f"d{i}" for i in range(n_docs)], pa.string()),
                pa.array(docs, pa.list_(pa.int32())),
                pa.array([4 * length] * n_docs, pa.int64()),
            ],
            schema=SCHEMA,
        ),
        path,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune-project")
    (root / "data" / "tokens").mkdir(parents=True)
    write_tokens(root / "data" / "tokens" / "train.parquet", 30, 60, 0)
    write_tokens(root / "data" / "tokens" / "val.parquet", 3, 30, 30)
    (root / "artifacts").mkdir()
    cfg = parse_params(DEFAULTS).tokenize.model_copy(update={"vocab_size": 300, "min_frequency": 1})
    train_tokenizer(iter(TEXT), cfg).save(str(root / "artifacts" / "tokenizer.json"))
    vocab = Tokenizer.from_file(str(root / "artifacts" / "tokenizer.json")).get_vocab_size()
    emb = np.random.default_rng(1).normal(scale=0.1, size=(vocab, 8)).astype(np.float32)
    np.save(root / "artifacts" / "embeddings.npy", emb)
    return root


def make_params(root: Path, space: dict | None = None, **tune_values) -> Params:
    """Tiny model and budget; every path under `root`."""
    raw = copy.deepcopy(DEFAULTS)
    raw["paths"].update({k: str(root / v) for k, v in raw["paths"].items()})
    raw["embed"]["dim"] = 8
    raw["model"].update(embedding_dim=8, units=16, dropout=0.0)
    raw["train"].update(seq_len=12, batch_size=16, epochs=2, learning_rate=0.02)
    raw["tune"].update(
        n_trials=3,
        timeout=0,
        n_workers=1,
        data_fraction=1.0,
        max_epochs=2,
        pruner_startup_trials=1,
        sampler_startup_trials=1,
        space=copy.deepcopy(SPACE if space is None else space),
    )
    raw["tune"].update(tune_values)
    return parse_params(raw)


def journal_trials(p: Params, name: str) -> list:
    storage = JournalStorage(JournalFileBackend(str(Path(p.paths.tune_dir) / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


@pytest.fixture(autouse=True)
def no_mlflow(monkeypatch):
    monkeypatch.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv(tune_study.STORAGE_ENV, raising=False)


def fake_fit(losses: list[float | None]):
    """A stand-in for fit_trial: one epoch whose loss is the next value (None = crash)."""
    values = iter(losses)

    def fit(p, data, callbacks):
        loss = next(values)
        if loss is None:
            raise RuntimeError("simulated out-of-memory")
        for cb in callbacks:
            cb.on_epoch_end(0, {"val_loss": loss})
        return loss

    return fit


# --- validation: one line before any trial --------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"model.units": {"type": "int", "low": 64, "high": 64}},
            "'tune.space.model.units': empty or inverted range",
        ),
        (
            {"model.units": {"type": "int", "low": 128, "high": 64}},
            "'tune.space.model.units': empty or inverted range",
        ),
        (
            {"model.unitz": {"type": "int", "low": 8, "high": 64}},
            "'tune.space.model.unitz': unknown parameter",
        ),
        (
            {"paths.model": {"type": "categorical", "choices": ["a.keras"]}},
            "'tune.space.paths.model': unknown parameter",
        ),
        (
            {"model.dropout": {"type": "normal", "low": 0.0, "high": 0.3}},
            "tune.space.model.dropout",
        ),
        (
            {"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}},
            "'tune.space.model.dropout': 1.5 is not a valid model.dropout",
        ),
        ({"model.units": {"type": "float", "low": 8, "high": 64}}, "is not a valid model.units"),
        ({"train.learning_rate": {"type": "logfloat", "low": 0.0, "high": 0.1}}, "logfloat needs"),
        ({"model.units": {"type": "categorical", "choices": []}}, "non-empty 'choices'"),
        (
            {"train.learning_rate": {"type": "logfloat", "low": 0.1, "high": 0.5}},
            "'tune.space.train.learning_rate': the train.learning_rate value 0.02 lies outside",
        ),
    ],
)
def test_bad_space_fails_at_load(tmp_path, entry, expected):
    with pytest.raises(GruflowError) as err:
        make_params(tmp_path, space=entry)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/x/study.db", "nosuchdb://host/db"])
def test_unreachable_storage_fails_before_any_trial(tmp_path, project, monkeypatch, url):
    monkeypatch.setattr(tune, "load_data", None)  # storage is opened before the data is read
    p = make_params(project, storage=url, study_name="unreachable")
    p = p.model_copy(
        update={
            "paths": p.paths.model_copy(
                update={"best_params": str(tmp_path / "best.json"), "reports": str(tmp_path)}
            )
        }
    )
    with pytest.raises(GruflowError, match="^tune.storage: cannot open the study database") as err:
        tune.run(p)
    assert "\n" not in str(err.value)
    monkeypatch.setenv(tune_study.STORAGE_ENV, url)  # the env variable overrides params
    with pytest.raises(GruflowError, match=f"^{tune_study.STORAGE_ENV}: cannot open"):
        tune.run(make_params(project))
    assert not list(tmp_path.iterdir())  # no output written


def test_zero_trials_passes_params_through(tmp_path):
    p = make_params(tmp_path, n_trials=0)
    summary = tune.run(p)  # no data needed: nothing is trained
    assert json.loads(Path(p.paths.best_params).read_text()) == {}
    assert summary["enabled"] is False and sum(summary["n_trials"].values()) == 0
    for name in ("tune_history.png", "tune_importance.png", "tune.json"):
        assert (Path(p.paths.reports) / name).is_file()
    assert merge_best(p, {}) == (p, {})


# --- a real tiny study: outputs and resuming -----------------------------------------------


def test_study_writes_outputs_and_a_restart_continues_it(project):
    first = tune.run(make_params(project, n_trials=2))
    assert sum(first["n_trials"].values()) == 2
    p = make_params(project, n_trials=3)  # "restarted with the same command", bigger budget
    summary = tune.run(p)
    assert summary["study"] == first["study"]
    assert len(journal_trials(p, summary["study"])) == 3  # 2 + 1, not 2 + 3
    n = summary["n_trials"]
    assert n["complete"] + n["pruned"] + n["fail"] == 3 and n["complete"] >= 1
    assert summary["defaults_val_loss"] is not None
    assert summary["best_value"] <= summary["defaults_val_loss"]
    best = json.loads(Path(p.paths.best_params).read_text())
    assert set(best) == set(SPACE) and best["model.units"] in (8, 16)
    assert json.loads((Path(p.paths.reports) / "tune.json").read_text()) == summary
    for name in ("tune_history.png", "tune_importance.png"):
        assert (Path(p.paths.reports) / name).read_bytes()[:4] == b"\x89PNG"
    assert sum(tune.run(p)["n_trials"].values()) == 3  # budget reached: nothing more runs


def test_changed_objective_starts_a_new_study(project):
    a = make_params(project, n_trials=1)
    b = make_params(project, n_trials=1, data_fraction=0.5)
    digest = tune.load_data(a).digest
    assert tune_study.study_name(a, digest) != tune_study.study_name(b, tune.load_data(b).digest)
    same_objective = make_params(project, n_trials=9, timeout=5)  # only the budget differs
    assert tune_study.study_name(a, digest) == tune_study.study_name(same_objective, digest)


def test_killed_trial_is_failed_and_queued_again(tmp_path, project, monkeypatch):
    monkeypatch.setattr(tune, "fit_trial", fake_fit([1.5]))
    p = make_params(project, n_trials=1, study_name="killed")
    storage = tune_study.open_storage(p)
    study = tune_study.open_study(p, storage, tune.load_data(p).digest, worker=0)
    study.ask()  # the params.yaml trial starts, then the process "dies"
    summary = tune.run(p)
    assert summary["n_trials"] == {"complete": 1, "pruned": 0, "fail": 0, "interrupted": 1}
    assert summary["defaults_val_loss"] == 1.5  # the defaults trial was run again


@pytest.mark.slow
def test_parallel_workers_share_one_study_and_budget(project):
    p = make_params(
        project,
        n_trials=6,
        n_workers=2,
        study_name="parallel",
        max_epochs=1,
        accept_nonreproducible=True,
    )
    summary = tune.run(p)
    assert summary["reproducible"] is False
    assert summary["nonreproducible_reasons"] == ["trials ran in parallel"]
    trials = journal_trials(p, summary["study"])
    assert 6 <= len(trials) <= 7  # a worker may start one trial while another ends the last
    assert all(t.state.is_finished() for t in trials)
    print("workers:", sorted({t.user_attrs["worker"] for t in trials}))


def test_database_url_holds_the_study(tmp_path, project, monkeypatch):
    monkeypatch.setattr(tune, "fit_trial", fake_fit([1.0, 0.5]))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    summary = tune.run(make_params(project, n_trials=2, storage=url, study_name="rdb"))
    assert len(optuna.load_study(study_name=summary["study"], storage=url).trials) == 2
    assert summary["best_value"] == 0.5


# --- the trial recipe is train's ------------------------------------------------------------


def test_trials_honour_label_smoothing_and_run_with_op_determinism(project):
    """Issue 16 (a): a trial trains with train's recipe — its loss includes
    train.label_smoothing (part of the study's digest) and its ops are deterministic."""
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()  # as in a fresh tune process: nothing enabled it yet
    base = make_params(project, max_epochs=1)
    data = tune.load_data(base)

    def smoothing(eps: float) -> Params:
        p = tune.trial_params(base, {})
        return p.model_copy(update={"train": p.train.model_copy(update={"label_smoothing": eps})})

    plain = tune.fit_trial(smoothing(0.0), data, [])
    assert tf_config.is_op_determinism_enabled()
    smoothed = tune.fit_trial(smoothing(0.3), data, [])
    # ε·mean over the vocabulary of -log p is far above the NLL of a fitted model
    assert smoothed > plain + 0.1, (plain, smoothed)


# --- failures, pruning, MLflow ------------------------------------------------------------


def test_failed_and_pruned_trials_are_recorded_and_the_study_goes_on(project, monkeypatch):
    monkeypatch.setattr(tune, "fit_trial", fake_fit([1.0, None, 3.0, 0.5]))
    p = make_params(project, n_trials=4, study_name="failing")
    summary = tune.run(p)
    assert summary["n_trials"] == {"complete": 2, "pruned": 1, "fail": 1, "interrupted": 0}
    assert summary["best_value"] == 0.5 and summary["defaults_val_loss"] == 1.0


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruning_callback_reports_and_prunes_after_epoch_zero():
    study = optuna.create_study(pruner=AlwaysPrune())
    trial = study.ask()
    seen: list = []
    callback = tune.pruning_callback(trial, lambda epoch, loss: seen.append((epoch, loss)))
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(0, {"val_loss": 2.5, "loss": 2.7})
    assert seen == [(0, 2.5)]
    assert study.trials[0].intermediate_values == {0: 2.5}
    keep = tune.pruning_callback(optuna.create_study(pruner=optuna.pruners.NopPruner()).ask())
    keep.on_epoch_end(0, {"val_loss": 2.5})  # no exception: the trial goes on


def test_each_trial_is_a_nested_mlflow_run(tmp_path, project, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tune, "fit_trial", fake_fit([1.0, 2.0, 0.5]))
    # Through the environment only, restored afterwards: no global URI leaks to other tests.
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    parent = client.create_run(client.create_experiment("tune-test")).info.run_id
    monkeypatch.setenv("GRUFLOW_MLFLOW_RUN_ID", parent)
    p = make_params(project, n_trials=3, study_name="tracked")
    tune.run(p)
    tracking.log_tune(parent, Path(p.paths.reports))  # what the flow does after the stage
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    states = {r.data.tags["mlflow.runName"]: r.data.tags["optuna.state"] for r in children}
    assert states == {"trial-0": "COMPLETE", "trial-1": "PRUNED", "trial-2": "COMPLETE"}
    assert all(set(r.data.params) == set(SPACE) for r in children)
    assert {r.data.metrics["val_loss"] for r in children} == {1.0, 2.0, 0.5}
    logged = {a.path for a in client.list_artifacts(parent, "tune")}
    assert {"tune/tune_history.png", "tune/tune_importance.png", "tune/tune.json"} <= logged


# --- reproducibility: a budget of trials, never of seconds ------------------------------------


def slow_fit(seconds: float):
    import time

    def fit(p, data, callbacks):
        time.sleep(seconds)
        for cb in callbacks:
            cb.on_epoch_end(0, {"val_loss": 1.0})
        return 1.0

    return fit


def test_timeout_that_cuts_the_study_short_fails_and_keeps_previous_outputs(project, monkeypatch):
    monkeypatch.setattr(tune, "fit_trial", slow_fit(1.2))
    p = make_params(project, n_trials=3, timeout=1, study_name="cut")
    best = Path(p.paths.best_params)
    best.parent.mkdir(parents=True, exist_ok=True)
    best.write_text('{"model.units": 8}')
    with pytest.raises(GruflowError) as err:
        tune.run(p)
    msg = str(err.value)
    assert "after 1 of 3 trials" in msg and "raise tune.timeout" in msg, msg
    assert "lower tune.n_trials" in msg and "\n" not in msg
    assert best.read_text() == '{"model.units": 8}'  # the previous output is untouched
    accepted = make_params(
        project, n_trials=3, timeout=1, study_name="cut", accept_nonreproducible=True
    )
    summary = tune.run(accepted)  # the rerun continues the study: trial 2 runs, then stops
    assert summary["reproducible"] is False
    assert summary["nonreproducible_reasons"] == ["cut short by tune.timeout: 2 of 3 trials"]
    report = json.loads((Path(p.paths.reports) / "tune.json").read_text())
    assert report["reproducible"] is False and "seconds" not in report


def test_parallel_workers_need_consent(tmp_path):
    with pytest.raises(GruflowError, match="tune.accept_nonreproducible: true"):
        make_params(tmp_path, n_workers=2)
    with pytest.raises(GruflowError, match="'embed': workers: 2 gensim threads"):
        raw = copy.deepcopy(DEFAULTS)
        raw["embed"]["workers"] = 2
        parse_params(raw)


def test_sampler_depends_only_on_seed_and_history(project, monkeypatch):
    """A study run in two sittings (a timeout stop, a restart) samples what one sitting does."""
    monkeypatch.setattr(tune, "fit_trial", fake_fit([1.0, 0.9, 0.8, 0.7, 0.6]))
    whole = tune.run(make_params(project, n_trials=5, study_name="whole"))
    monkeypatch.setattr(tune, "fit_trial", fake_fit([1.0, 0.9, 0.8, 0.7, 0.6]))
    tune.run(make_params(project, n_trials=2, study_name="parts"))
    parts = tune.run(make_params(project, n_trials=5, study_name="parts"))
    one = [t.params for t in journal_trials(make_params(project), whole["study"])]
    two = [t.params for t in journal_trials(make_params(project), parts["study"])]
    assert len(one) == 5 and one == two
    assert len({json.dumps(t, sort_keys=True) for t in one}) > 1  # it did explore


def test_trial_sample_is_whole_documents_spread_over_the_split():
    doc_ids = [f"doc{i}" for i in range(1000)]
    sizes = np.full(1000, 10)
    keep = tune.sample_documents(doc_ids, sizes, 0.15, seed=0, at_least=17)
    assert list(keep) == sorted(keep) and 150 <= len(keep) <= 151
    assert keep.min() < 100 and keep.max() > 900  # spread, not the first slice
    assert (np.histogram(keep, bins=4, range=(0, 1000))[0] > 20).all()
    assert list(tune.sample_documents(doc_ids, sizes, 0.15, 0, 17)) == list(keep)
    assert list(tune.sample_documents(doc_ids, sizes, 0.15, 1, 17)) != list(keep)
    assert len(tune.sample_documents(doc_ids[:3], sizes[:3], 0.1, 0, 25)) == 3  # at_least


def test_masked_objective_tunes_in_its_own_study_deterministically(tmp_path, project):
    """train.objective masked: trials train the masked LM with the same recipe (its own study:
    the objective is part of the digest), and a trial repeats to the bit."""
    import shutil

    root = tmp_path / "p"
    shutil.copytree(project / "data", root / "data")
    shutil.copytree(
        project / "artifacts",
        root / "artifacts",
        ignore=shutil.ignore_patterns("tune", "best_params.json"),
    )
    causal = make_params(root, n_trials=2, max_epochs=1)
    p = causal.model_copy(update={"train": causal.train.model_copy(update={"objective": "masked"})})
    data = tune.load_data(p)
    assert tune_study.study_name(p, data.digest) != tune_study.study_name(causal, data.digest)
    summary = tune.run(p)
    assert summary["study"] == tune_study.study_name(p, data.digest)
    assert summary["n_trials"]["complete"] >= 1 and math.isfinite(summary["best_value"])
    trial = tune.trial_params(p, {})
    assert tune.fit_trial(trial, data, []) == tune.fit_trial(trial, data, [])


def test_journal_lock_of_the_stage_storage_resolves_so_a_stale_one_expires(tmp_path, monkeypatch):
    """Optuna's journal lock is a symlink to the journal's path, read from the link's folder;
    with the stage's relative `paths.tune_dir` the link dangled, Optuna could never read its
    age and, after a kill left it, waited forever. The storage's path is absolute: a lock as
    Optuna makes it resolves, so its 30 s grace period applies."""
    import os

    monkeypatch.chdir(tmp_path)
    storage = tune_study.open_storage(parse_params(copy.deepcopy(DEFAULTS)))
    journal = storage._backend._file_path
    assert os.path.isabs(journal) and Path(journal).is_file()
    lock = Path(journal + ".lock")
    os.symlink(journal, lock)  # what JournalFileSymlinkLock.acquire does
    assert os.stat(lock).st_mtime > 0  # raised FileNotFoundError with the relative path
