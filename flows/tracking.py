"""MLflow side of the pipeline: store location, lineage tags, nested runs, registration."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from components import verbosity
from components.contract import (
    METRICS_REPORT,
    MODEL_SUMMARY,
    TENSORBOARD,
    TRAIN_HISTORY,
    TRAIN_REPORT,
    TUNE_PLOTS,
    TUNE_REPORT,
)
from components.errors import GruflowError
from components.params import Params, params_digest
from components.tuning.best import effective_params
from flows.gitrepo import git_output
from flows.secrets import RedactFilter, redact

log = logging.getLogger(__name__)


def store_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI, else the sqlite store in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer: MLflow's own
    client would retry with back-off for minutes before giving up."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise GruflowError(
            f"MLflow tracking store {redact(uri)} is unreachable ({exc}) — start "
            "the server or fix MLFLOW_TRACKING_URI (unset: the project's "
            "mlflow.db)"
        ) from None


def require_store(root: Path) -> None:
    """Commands that only read or move aliases need a store a run made: opening a missing
    sqlite file would create it (and its tables) in the project, even for a failing command."""
    uri = store_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise GruflowError(
            f"{redact(uri)}: no MLflow store yet, so no registered model — run "
            "`gruflow run` first, or set MLFLOW_TRACKING_URI to your tracking "
            "server"
        )


def configure(root: Path, experiment: str) -> str:
    """sqlite store + artifact root in the project unless MLFLOW_TRACKING_URI says otherwise."""
    uri = store_uri(root)
    check_reachable(uri)
    if redact(uri) != uri:  # MLflow prints run URLs (with the password) on stdout otherwise
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    for handler in logging.getLogger("mlflow").handlers:  # MLflow's own stderr handler
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # stage subprocesses log to the same store
    if mlflow.get_experiment_by_name(experiment) is None:
        location = (
            None
            if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http")
            else (root / "mlartifacts").resolve().as_uri()
        )
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def _dirty(root: Path, outputs: set[str]) -> bool:
    """Tracked files changed since the commit, other than what the pipeline itself writes:
    dvc.lock (committed, as DVC intends, and rewritten by every run that executes a stage) and
    any stage output a user chose to commit (this project's are all git-ignored DVC outputs).
    The code and params.yaml that made the model are the commit's exactly when this is False."""
    for path in git_output(root, "diff", "--name-only", "HEAD").splitlines():
        if path != "dvc.lock" and not any(
            path == o or path.startswith(o.rstrip("/") + "/") for o in outputs
        ):
            return True
    return False


def _reproducible(root: Path, params: Params) -> str:
    """'false' when the tune stage accepted a study it cannot reproduce (reports/tune.json)."""
    report = root / params.paths.reports / "tune.json"
    try:
        ok = json.loads(report.read_text()).get("reproducible", True)
    except (OSError, ValueError):
        ok = True
    return str(bool(ok)).lower()


def _train_device(root: Path, params: Params) -> str:
    """Where train ran (reports/train.json): reproduce allows a metric tolerance on a GPU."""
    try:
        return str(
            json.loads((root / params.paths.reports / "train.json").read_text()).get("device", "")
        )
    except (OSError, ValueError):
        return ""


def lineage_tags(root: Path, params: Params, flow_run_id: str | None) -> dict[str, str]:
    """git commit + dirty flag, DVC hashes of every stage output, params and lock digests,
    and whether the run is reproducible."""
    tags: dict[str, str] = {}
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                tags[f"dvc.{out['path']}"] = out.get("md5", "")
    outputs = {key.removeprefix("dvc.") for key in tags}
    return {
        "git_commit": git_output(root, "rev-parse", "HEAD") or "unknown",
        "git_dirty": str(_dirty(root, outputs)),
        "params_digest": params_digest(params),
        "uv_lock_digest": _digest(root / "uv.lock"),
        "dvc_lock_digest": _digest(lock),
        "prefect_flow_run_id": flow_run_id or "",
        "reproducible": _reproducible(root, params),
        "train_device": _train_device(root, params),
        **tags,
    }


def numbers(d: dict) -> dict[str, float]:
    return {
        k: float(v) for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def log_train(run_id: str, params: Params, reports: Path) -> None:
    """Params, summary metrics and the history of a finished train run (epochs are live)."""
    params, tuned = effective_params(params)  # what train really used
    client = MlflowClient()
    client.set_tag(run_id, "tuned_params", json.dumps(tuned, sort_keys=True) or "{}")
    flat = {f"model.{k}": v for k, v in params.model.model_dump().items()}
    flat |= {f"train.{k}": v for k, v in params.train.model_dump().items()}
    for key, value in flat.items():
        client.log_param(run_id, key, value)
    summary = json.loads((reports / TRAIN_REPORT).read_text())
    for key, value in numbers(summary).items():
        client.log_metric(run_id, key, value)
    for name in (TRAIN_REPORT, TRAIN_HISTORY, MODEL_SUMMARY):
        if (reports / name).is_file():
            client.log_artifact(run_id, str(reports / name))
    if (reports / TENSORBOARD).is_dir():
        client.log_artifacts(run_id, str(reports / TENSORBOARD), artifact_path="tensorboard")


def log_tune(run_id: str, reports: Path) -> dict:
    """Summary metrics, plots and tune.json of a finished tune stage (trials are live)."""
    summary = json.loads((reports / TUNE_REPORT).read_text())
    client = MlflowClient()
    metrics = {f"trials_{k}": v for k, v in summary["n_trials"].items()}
    for key in ("best_value", "defaults_val_loss"):
        if summary.get(key) is not None:
            metrics[key] = summary[key]
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    client.set_tag(run_id, "reproducible", str(summary.get("reproducible", True)).lower())
    for name in (*TUNE_PLOTS, TUNE_REPORT):
        if (reports / name).is_file():
            client.log_artifact(run_id, str(reports / name), "tune")
    return summary


def log_evaluate(run_id: str, reports: Path) -> dict:
    metrics = json.loads((reports / METRICS_REPORT).read_text())
    client = MlflowClient()
    by_position = {f"loss_position_{k}": v for k, v in metrics.get("loss_by_position", {}).items()}
    for key, value in (numbers(metrics) | by_position).items():
        client.log_metric(run_id, key, value)
    client.log_artifact(run_id, str(reports / METRICS_REPORT))
    if (reports / "samples.md").is_file():
        client.log_artifact(run_id, str(reports / "samples.md"))
    if (reports / "plots").is_dir():
        client.log_artifacts(run_id, str(reports / "plots"), artifact_path="plots")
    return metrics


def registered_version(name: str, model_md5: str) -> str | None:
    """The registry version already holding this exact model file, if any."""
    client = MlflowClient()
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("model_md5") == model_md5:
            return str(mv.version)
    return None


def project_tag(root: Path) -> str:
    """Value of the `gruflow.project` tag on a pipeline's parent run: this host and project,
    so interrupted runs are recognised in a tracking server shared by many projects."""
    return f"{socket.gethostname()}:{root.resolve()}"


def close_interrupted_runs(root: Path, experiment: str) -> list[str]:
    """Runs left RUNNING by a killed gruflow process of this project (the parent run tagged
    with `project_tag` and every run nested below it) are ended as KILLED. Call only under
    the project lock: then no live process of this project owns a run."""
    client = MlflowClient()
    exp = mlflow.get_experiment_by_name(experiment)
    running = client.search_runs(
        [exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000
    )
    mine, verdict = project_tag(root), {}

    def ours(run) -> bool:
        run_id = run.info.run_id
        if run_id not in verdict:
            parent = run.data.tags.get("mlflow.parentRunId")
            verdict[run_id] = run.data.tags.get("gruflow.project") == mine or (
                bool(parent) and ours(client.get_run(parent))
            )
        return verdict[run_id]

    closed = [r.info.run_id for r in running if ours(r)]
    for run_id in closed:
        client.set_terminated(run_id, status="KILLED")
    if closed:
        log.warning("closed %d MLflow run(s) a killed gruflow run left RUNNING", len(closed))
    return closed


def drop_orphan_versions(root: Path, name: str) -> list[str]:
    """Versions of `name` without a `model_md5` tag logged by this project's pipeline runs:
    a registration killed before its tags (gruflow < this version set tags afterwards; now
    they are written with the version in one transaction). Deleted, so a rerun registers the
    model once."""
    client = MlflowClient()
    mine, dropped = project_tag(root), []
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("model_md5"):
            continue
        # search_model_versions leaves `aliases` empty (MLflow 3): ask for the version itself
        if client.get_model_version(name, mv.version).aliases:
            continue
        try:
            owner = (
                client.get_run(mv.run_id).data.tags.get("gruflow.project") if mv.run_id else None
            )
        except mlflow.exceptions.MlflowException:
            owner = None
        if owner == mine:
            client.delete_model_version(name, mv.version)
            dropped.append(str(mv.version))
    if dropped:
        log.warning(
            "deleted %s version(s) %s: registration was interrupted before its tags",
            name,
            ", ".join(dropped),
        )
    return dropped


def log_and_register_model(
    root: Path, params: Params, run_id: str, tags: dict[str, str], metrics: dict
) -> str:
    """Log the pyfunc (tokenizer + Keras model) in `run_id` and register it as a new version
    of registry.model_name, created together with its tags (model_md5, lineage, metrics) in
    one registry call: a kill at any moment leaves either no version or a complete one."""
    import pandas as pd

    from flows.model_contract import example_text, serving_info, signature

    paths = params.paths
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "info.json"
        contents = serving_info(root, params)
        info.write_text(json.dumps(contents))
        text = example_text(root, params)
        if contents["objective"] == "masked":  # a masked LM fills: its example has a <mask>
            text = " ".join(text.split()[:-1] + ["<mask>"]) or "<mask>"
        example = pd.DataFrame({"text": [text]})
        model_signature = signature(contents)
        defaults = {p.name: p.default for p in model_signature.params.params}
        active = mlflow.active_run()
        if active is None or active.info.run_id != run_id:
            raise RuntimeError("register() must run inside the pipeline's parent run")
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(root / "components" / "lm" / "pyfunc.py"),
            artifacts={
                "model": str(root / paths.model),
                "tokenizer": str(root / paths.tokenizer),
                "info": str(info),
            },
            code_paths=[str(root / "components")],
            signature=model_signature,
            input_example=(example, defaults),
        )
    if (root / "dvc.lock").is_file():  # what reproduce pulls inputs by, even if uncommitted
        mlflow.log_artifact(str(root / "dvc.lock"), artifact_path="lineage")
    # `objective` (causal | masked): the gate compares only versions of the same objective
    version_tags = {
        **tags,
        "mlflow_run_id": run_id,
        "objective": contents["objective"],
        **{f"metric.{k}": str(v) for k, v in numbers(metrics).items()},
    }
    # MLflow prints "Successfully registered model" / "Created version" to stderr itself: the
    # gate's line in the summary says it (kept in the log file; on the console with --verbose)
    said = io.StringIO()
    with contextlib.redirect_stderr(sys.stderr if verbosity.is_verbose() else said):
        mv = mlflow.register_model(
            model_info.model_uri, params.registry.model_name, tags=version_tags
        )
    for line in said.getvalue().splitlines():
        log.debug("mlflow: %s", line)
    return str(mv.version)


def read_metrics(reports: Path) -> dict:
    path = reports / METRICS_REPORT
    return json.loads(path.read_text()) if path.is_file() else {}


def _embed_numbers(d: dict, prefix: str) -> dict[str, float]:
    """Numeric leaves of a nested report as dotted metric names (lists and strings skipped)."""
    out: dict[str, float] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= _embed_numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def log_embed(run_id: str, reports: Path, projector: Path | None = None) -> dict:
    """reports/embed.json in `run_id`: its numbers as `embed.*` metrics (e.g.
    embed.word_pairs.spearman, embed.analogies.accuracy), the file itself, and with `projector`
    the TensorBoard projector files under artifact path `projector`."""
    report = json.loads((reports / "embed.json").read_text(encoding="utf-8"))
    client = MlflowClient()
    for key, value in _embed_numbers(report, "embed.").items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "embed.algorithm", str(report.get("algorithm", "")))
    client.log_artifact(run_id, str(reports / "embed.json"))
    if projector is not None and projector.is_dir():
        client.log_artifacts(run_id, str(projector), artifact_path="projector")
    return report
