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

from components.params import Params, params_digest

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


def _dirty(root: Path, outputs: set[str]) -> bool:
    """Tracked files changed since the commit, other than what the pipeline itself writes
    (dvc.lock and the stage outputs committed to git, e.g. reports/*.json): the code and
    params.yaml that made the model are the commit's exactly when this is False."""
    for path in _git(root, "diff", "--name-only", "HEAD").splitlines():
        if path != "dvc.lock" and not any(path == o or path.startswith(o.rstrip("/") + "/")
                                          for o in outputs):
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
        return str(json.loads((root / params.paths.reports / "train.json").read_text())
                   .get("device", ""))
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
        "git_commit": _git(root, "rev-parse", "HEAD") or "unknown",
        "git_dirty": str(_dirty(root, outputs)),
        "params_digest": params_digest(params),
        "uv_lock_digest": _digest(root / "uv.lock"),
        "dvc_lock_digest": _digest(lock),
        "prefect_flow_run_id": flow_run_id or "",
        "reproducible": _reproducible(root, params),
        "train_device": _train_device(root, params),
        **tags,
    }


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def log_train(run_id: str, params: Params, reports: Path) -> None:
    """Params, summary metrics and the history of a finished train run (epochs are live)."""
    from components.tune import load_best, merge_best

    params, tuned = merge_best(params, load_best(params))  # what train really used
    client = MlflowClient()
    client.set_tag(run_id, "tuned_params", json.dumps(tuned, sort_keys=True) or "{}")
    flat = {f"model.{k}": v for k, v in params.model.model_dump().items()}
    flat |= {f"train.{k}": v for k, v in params.train.model_dump().items()}
    for key, value in flat.items():
        client.log_param(run_id, key, value)
    summary = json.loads((reports / "train.json").read_text())
    for key, value in _numbers(summary).items():
        client.log_metric(run_id, key, value)
    for name in ("train.json", "train_history.csv", "model_summary.txt"):
        if (reports / name).is_file():
            client.log_artifact(run_id, str(reports / name))
    if (reports / "tensorboard").is_dir():
        client.log_artifacts(run_id, str(reports / "tensorboard"), artifact_path="tensorboard")


def log_evaluate(run_id: str, reports: Path) -> dict:
    metrics = json.loads((reports / "metrics.json").read_text())
    client = MlflowClient()
    by_position = {f"loss_position_{k}": v for k, v in metrics.get("loss_by_position", {}).items()}
    for key, value in (_numbers(metrics) | by_position).items():
        client.log_metric(run_id, key, value)
    client.log_artifact(run_id, str(reports / "metrics.json"))
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


def register(root: Path, params: Params, run_id: str, tags: dict[str, str],
             metrics: dict) -> str:
    """Log the pyfunc (tokenizer + Keras model) in `run_id` and register a new version."""
    import pandas as pd
    from mlflow.models import infer_signature

    from components.lm_pyfunc import DEFAULT_PARAMS, file_digest

    paths = params.paths
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / "info.json"
        info.write_text(json.dumps({"seq_len": params.train.seq_len,
                                    "tokenizer_sha256": file_digest(root / paths.tokenizer)}))
        example = pd.DataFrame({"text": ["The return value"]})
        signature = infer_signature(example, pd.DataFrame({"text": [" is"]}), DEFAULT_PARAMS)
        active = mlflow.active_run()
        if active is None or active.info.run_id != run_id:
            raise RuntimeError("register() must run inside the pipeline's parent run")
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(root / "components" / "lm_pyfunc.py"),
            artifacts={"model": str(root / paths.model),
                       "tokenizer": str(root / paths.tokenizer), "info": str(info)},
            code_paths=[str(root / "components")],
            signature=signature,
            input_example=(example, DEFAULT_PARAMS),
            registered_model_name=params.registry.model_name,
        )
    if (root / "dvc.lock").is_file():  # what reproduce pulls inputs by, even if uncommitted
        mlflow.log_artifact(str(root / "dvc.lock"), artifact_path="lineage")
    version = str(model_info.registered_model_version)
    client = MlflowClient()
    version_tags = {**tags, "mlflow_run_id": run_id,
                    **{f"metric.{k}": str(v) for k, v in _numbers(metrics).items()}}
    for key, value in version_tags.items():
        client.set_model_version_tag(params.registry.model_name, version, key, value)
    return version


def read_metrics(reports: Path) -> dict:
    path = reports / "metrics.json"
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
