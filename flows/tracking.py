"""MLflow side of the pipeline: store location, lineage tags, nested runs, registration."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from components.contract import (
    METRICS_REPORT,
    MODEL_SUMMARY,
    TENSORBOARD,
    TRAIN_HISTORY,
    TRAIN_REPORT,
    TUNE_PLOTS,
    TUNE_REPORT,
)
from components.params import Params, params_digest
from components.tuning.best import effective_params

log = logging.getLogger(__name__)


def configure(root: Path, experiment: str) -> str:
    """sqlite store + artifact root in the project unless MLFLOW_TRACKING_URI says otherwise."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # stage subprocesses log to the same store
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http") else \
            (root / "mlartifacts").resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def lineage_tags(root: Path, params: Params, flow_run_id: str | None) -> dict[str, str]:
    """git commit + dirty flag, DVC hashes of every stage output, params and lock digests."""
    tags = {
        "git_commit": _git(root, "rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git(root, "status", "--porcelain", "--untracked-files=no"))),
        "params_digest": params_digest(params),
        "uv_lock_digest": _digest(root / "uv.lock"),
        "prefect_flow_run_id": flow_run_id or "",
    }
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                tags[f"dvc.{out['path']}"] = out.get("md5", "")
    return tags


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


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
    for key, value in _numbers(summary).items():
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
    for key in ("best_value", "defaults_val_loss", "seconds"):
        if summary[key] is not None:
            metrics[key] = summary[key]
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for name in (*TUNE_PLOTS, TUNE_REPORT):
        if (reports / name).is_file():
            client.log_artifact(run_id, str(reports / name), "tune")
    return summary


def log_evaluate(run_id: str, reports: Path) -> dict:
    metrics = json.loads((reports / METRICS_REPORT).read_text())
    client = MlflowClient()
    by_position = {f"loss_position_{k}": v for k, v in metrics.get("loss_by_position", {}).items()}
    for key, value in (_numbers(metrics) | by_position).items():
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


def serving_info(root: Path, params: Params) -> dict:
    """The registered model's info.json: the window length it was trained with (the tuned one
    when tuning changed it) and the digest of its tokenizer, which serving checks."""
    from components.lm.pyfunc import file_digest

    effective, _ = effective_params(params, root)
    return {"seq_len": effective.train.seq_len,
            "tokenizer_sha256": file_digest(root / params.paths.tokenizer)}


def register(root: Path, params: Params, run_id: str, tags: dict[str, str],
             metrics: dict) -> str:
    """Log the pyfunc (tokenizer + Keras model) in `run_id` and register a new version."""
    import pandas as pd
    from mlflow.models import infer_signature

    from components.lm.pyfunc import DEFAULT_PARAMS

    paths = params.paths
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "info.json"
        info.write_text(json.dumps(serving_info(root, params)))
        example = pd.DataFrame({"text": ["The return value"]})
        signature = infer_signature(example, pd.DataFrame({"text": [" is"]}), DEFAULT_PARAMS)
        active = mlflow.active_run()
        if active is None or active.info.run_id != run_id:
            raise RuntimeError("register() must run inside the pipeline's parent run")
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(root / "components" / "lm" / "pyfunc.py"),
            artifacts={"model": str(root / paths.model),
                       "tokenizer": str(root / paths.tokenizer), "info": str(info)},
            code_paths=[str(root / "components")],
            signature=signature,
            input_example=(example, DEFAULT_PARAMS),
            registered_model_name=params.registry.model_name,
        )
    version = str(model_info.registered_model_version)
    client = MlflowClient()
    version_tags = {**tags, "mlflow_run_id": run_id,
                    **{f"metric.{k}": str(v) for k, v in _numbers(metrics).items()}}
    for key, value in version_tags.items():
        client.set_model_version_tag(params.registry.model_name, version, key, value)
    return version


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
    report = json.loads((reports / "embed.json").read_text())
    client = MlflowClient()
    for key, value in _embed_numbers(report, "embed.").items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "embed.algorithm", str(report.get("algorithm", "")))
    client.log_artifact(run_id, str(reports / "embed.json"))
    if projector is not None and projector.is_dir():
        client.log_artifacts(run_id, str(projector), artifact_path="projector")
    return report
