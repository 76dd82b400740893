"""The classifier's flow side: run the finetune stage in a nested MLflow run, register the
classifier as its own model (`finetune.model_name`), gate it on macro-F1, load it safely.

Usage (from the pipeline): `classifier.finetune_and_register(root, params, force)`;
`gruflow classify "text"` loads the champion through `load_classifier`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.runtime import flow_run

from components.contract import FINETUNE_PLOT, FINETUNE_REPORT, PLOTS_DIR
from components.errors import GruflowError
from components.params import Params
from flows import registry, tracking
from flows.stages import is_changed, reproduce

ARTIFACTS = {"model": "classifier.keras", "info": "labels.json"}  # inside paths.classifier


def read_report(root: Path, params: Params) -> dict:
    path = root / params.paths.reports / FINETUNE_REPORT
    return json.loads(path.read_text()) if path.is_file() else {"enabled": False}


def log_finetune(run_id: str, root: Path, params: Params, report: dict) -> None:
    """Each model's accuracy/macro-F1 (`pretrained.macro_f1`, ...), the report, the plot."""
    client = MlflowClient()
    for name, m in report["models"].items():
        for key in ("accuracy", "macro_f1"):
            client.log_metric(run_id, f"{name}.{key}", m[key])
    client.set_tag(run_id, "finetune.source", params.finetune.source)
    reports = root / params.paths.reports
    client.log_artifact(run_id, str(reports / FINETUNE_REPORT))
    client.log_artifact(run_id, str(reports / PLOTS_DIR / FINETUNE_PLOT), "plots")


def macro_f1(model, test: pd.DataFrame, classes: list[str]) -> float:
    from components.classify.scores import scores

    pred = model.predict(test[["text"]])["label"].tolist()
    return scores(test["label"].tolist(), pred, classes)["macro_f1"]


def gate(
    name: str, version: str, report: dict, test_file: Path, min_improvement: float, load=None
) -> dict:
    """Alias `version` challenger; champion if its macro-F1 on the *current* test split beats
    the champion's (re-scored there too) by min_improvement; a first version must beat the
    majority baseline."""
    load = load or (lambda v: load_classifier(f"models:/{name}/{v}"))
    client = MlflowClient()
    client.set_registered_model_alias(name, registry.CHALLENGER, version)
    test = pq.read_table(test_file).to_pandas()
    classes = report["classes"]
    new = macro_f1(load(version), test, classes)
    before = registry.champion_version(name)
    decision = {
        "challenger": version,
        "champion_before": before,
        "challenger_macro_f1": new,
        "majority_macro_f1": report["models"]["majority"]["macro_f1"],
    }
    if before is None:
        promote = new > decision["majority_macro_f1"]
        reason = (
            f"first version, macro-F1 {new:.4f} vs majority baseline "
            f"{decision['majority_macro_f1']:.4f}"
        )
    else:
        old = macro_f1(load(before), test, classes)
        decision["champion_macro_f1"] = old
        promote = new > old + min_improvement
        reason = (
            f"macro-F1 {new:.4f} vs champion {old:.4f} on the current test split "
            f"(needs +{min_improvement:.4f})"
        )
    decision |= {"promoted": promote, "reason": reason}
    for key in ("promoted", "reason"):
        client.set_model_version_tag(name, version, f"gate.{key}", str(decision[key]))
    if promote:
        registry.set_champion(name, version, "gate: " + reason)
    return decision


def register(root: Path, params: Params, tags: dict[str, str], report: dict) -> str:
    """Log the classifier pyfunc in the active run and register a new version with lineage
    (`lm.version`: the LM version it was fine-tuned from)."""
    folder = root / params.paths.classifier
    chosen = report["models"][report["classifier"]]
    info = mlflow.pyfunc.log_model(
        name="classifier",
        python_model=str(root / "components" / "classify" / "pyfunc.py"),
        artifacts={
            "model": str(folder / ARTIFACTS["model"]),
            "tokenizer": str(root / params.paths.tokenizer),
            "info": str(folder / ARTIFACTS["info"]),
        },
        code_paths=[str(root / "components")],
        registered_model_name=params.finetune.model_name,
    )
    version = str(info.registered_model_version)
    lm_md5 = report["lm_model_md5"]
    lm_version = tracking.registered_version(params.registry.model_name, lm_md5) or "unregistered"
    client = MlflowClient()
    all_tags = {
        **tags,
        "lm.model_name": params.registry.model_name,
        "lm.version": lm_version,
        "lm.model_md5": lm_md5,
        "encoder": report["classifier"],
        "metric.accuracy": str(chosen["accuracy"]),
        "metric.macro_f1": str(chosen["macro_f1"]),
    }
    for key, value in all_tags.items():
        client.set_model_version_tag(params.finetune.model_name, version, key, value)
    return version


@task(name="finetune")
def finetune_and_register(
    root: Path, params: Params, force: bool = False
) -> tuple[str | None, bool]:
    """Run the finetune stage (a nested MLflow run when it runs and is on), then register and
    gate the classifier unless the registry already holds this exact one. Returns (the
    classifier version or None when finetune is off, whether DVC executed the stage)."""
    on = bool(params.finetune.source)
    limit = params.orchestration.stage_timeout
    if on and (force or is_changed(root, "finetune")):
        with mlflow.start_run(run_name="finetune", nested=True) as run:
            ran = reproduce(root, "finetune", force=force, timeout=limit)
            log_finetune(run.info.run_id, root, params, read_report(root, params))
    else:
        ran = reproduce(root, "finetune", force=force, timeout=limit)
    report = read_report(root, params)
    if not report.get("enabled"):
        return None, ran
    tags = tracking.lineage_tags(root, params, str(flow_run.id or ""))
    md5 = tags.get(f"dvc.{params.paths.classifier}", "")
    name = params.finetune.model_name
    version = tracking.registered_version(name, md5) if md5 else None
    if version is None:
        version = register(root, params, {**tags, "model_md5": md5}, report)
    if not registry.is_gated(name, version):
        decision = gate(
            name,
            version,
            report,
            root / params.paths.classifier / "test.parquet",
            params.finetune.min_improvement,
        )
        get_run_logger().info(
            "classifier %s version %s: %s (%s)",
            name,
            version,
            "champion" if decision["promoted"] else "challenger",
            decision["reason"],
        )
    return version, ran


def load_classifier(uri: str):
    """The GruClassifier of a registered model folder, built from this gruflow's code (the
    folder's copy of pyfunc.py never runs; no pickle is read)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.model import PythonModelContext

    from components.classify.pyfunc import GruClassifier
    from flows.serve import PICKLE_SUFFIXES, _download

    local = _download(uri)
    if any(p.suffix.lower() in PICKLE_SUFFIXES for p in local.rglob("*")):
        raise GruflowError(f"model '{uri}' holds pickled files — not a gruflow classifier")
    found = {
        name: next(iter(local.rglob(f)), None)
        for name, f in {**ARTIFACTS, "tokenizer": "tokenizer.json"}.items()
    }
    if None in found.values():
        raise GruflowError(
            f"model '{uri}' is not a gruflow classifier (needs "
            f"{sorted(ARTIFACTS.values())} and tokenizer.json)"
        )
    model = GruClassifier()
    try:
        model.load_context(PythonModelContext({k: str(v) for k, v in found.items()}, {}))
    except (MlflowException, ValueError, OSError, KeyError) as exc:
        raise GruflowError(f"cannot load classifier '{uri}' ({exc})".splitlines()[0]) from None
    return _Loaded(model)


class _Loaded:
    """`predict(frame)` like a pyfunc model."""

    def __init__(self, model):
        self.model = model

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.model.predict(None, frame)
