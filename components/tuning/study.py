"""The tune stage's Optuna study: where it lives, what it is called, how a killed run resumes.

Usage: inside components/tune.py — `storage = open_storage(p)`, `open_study(p, storage, ...)`.
A study is named tune.study_name + a digest of its objective; the storage is a journal file in
paths.tune_dir or the RDB URL in tune.storage / $GRUFLOW_OPTUNA_STORAGE (shared by workers).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from components.errors import GruflowError
from components.params import Params

STORAGE_ENV = "GRUFLOW_OPTUNA_STORAGE"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# Trials run tune.max_epochs epochs with their own budget: the full run's length and early
# stopping do not define the objective (dvc.yaml leaves them out of tune's params too).
UNUSED_TRAIN_KEYS = {"epochs", "patience"}


def study_name(p: Params, data_digest: str) -> str:
    """tune.study_name + a digest of what defines the objective; budget and storage excluded,
    so raising n_trials continues the study and any other change starts a new one."""
    objective = p.tune.model_dump(
        exclude={
            "n_trials",
            "timeout",
            "n_workers",
            "storage",
            "study_name",
            "accept_nonreproducible",
        }
    )
    train = p.train.model_dump(exclude=UNUSED_TRAIN_KEYS)
    blob = json.dumps(
        [objective, p.model.model_dump(), train, data_digest], sort_keys=True
    ).encode()
    return f"{p.tune.study_name}-{hashlib.sha256(blob).hexdigest()[:10]}"


def storage_url(p: Params) -> str:
    return os.environ.get(STORAGE_ENV) or p.tune.storage


def open_storage(p: Params) -> optuna.storages.BaseStorage:
    """The study's storage; an unreachable database fails here, before any trial."""
    url = storage_url(p)
    if not url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(p.paths.tune_dir).mkdir(parents=True, exist_ok=True)
        # absolute: Optuna's lock is a symlink to this path, resolved from the link's folder; a
        # relative target dangles, and after a kill Optuna waits on the stale lock forever
        journal = (Path(p.paths.tune_dir) / "study.journal").resolve()
        return JournalStorage(JournalFileBackend(str(journal)))
    if url.startswith("sqlite") and p.tune.n_workers > 1:
        raise GruflowError(
            "tune.storage: SQLite cannot take parallel writers — use a journal "
            "file ('') or a server database with tune.n_workers > 1"
        )
    connect = {"connect_timeout": 10} if url.startswith(("postgresql", "mysql")) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Heartbeats let another worker (or a restart) fail and retry a killed one's trial.
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": connect},
                heartbeat_interval=60,
                grace_period=180,
                heartbeat_stale_trial_callback=(
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                ),
            )
    except Exception as exc:  # SQLAlchemy/driver errors: bad URL, no driver, no server
        source = STORAGE_ENV if os.environ.get(STORAGE_ENV) else "tune.storage"
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise GruflowError(
            f"{source}: cannot open the study database '{_redact(url)}' "
            f"({type(exc).__name__}: {reason}) — fix the URL or start the "
            "server, or set tune.storage: '' for a local journal"
        ) from None


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random state is reseeded before each trial from tune.seed and the trial's
    place in the study (earlier trials not marked interrupted): what trial k samples depends
    only on the seed and trials 0..k-1, never on how many processes or restarts came before.
    Optuna seeds a sampler once per process; a study resumed after tune.timeout stopped it, or
    after a kill, would otherwise sample differently from an uninterrupted one."""

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial) -> None:
        place = sum(
            1
            for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and not t.user_attrs.get("interrupted")
        )
        seed = (self._base_seed * 1_000_003 + place) % 2**32
        # Private in Optuna 5.0 (no public way to set a seed after construction).
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def open_study(p: Params, storage, data_digest: str, worker: int) -> optuna.Study:
    """Create or load the study; a fresh one starts with the params.yaml values as trial 0."""
    name = study_name(p, data_digest)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="minimize", load_if_exists=True
    )
    if not study.trials:
        defaults = {n: getattr(getattr(p, n.split(".")[0]), n.split(".")[1]) for n in p.tune.space}
        study.enqueue_trial(defaults, user_attrs={"defaults": True})
    t = p.tune
    sampler = TrialSeededTPE(
        t.seed, n_startup_trials=t.sampler_startup_trials, constant_liar=t.n_workers > 1
    )
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=t.pruner_startup_trials, n_warmup_steps=t.pruner_warmup_epochs
        )
        if t.pruner == "median"
        else optuna.pruners.HyperbandPruner(min_resource=1, max_resource=t.max_epochs)
    )
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def recover_interrupted(study: optuna.Study, storage) -> int:
    """Trials left RUNNING by a killed run of this stage: mark them failed and queue them again
    (they do not count toward the budget). Only for the stage's own journal file."""
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        attrs = {k: v for k, v in t.user_attrs.items() if k != "interrupted"}
        study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.number})
    return len(stale)


def finished(study: optuna.Study) -> int:
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if not t.user_attrs.get("interrupted")
    )
