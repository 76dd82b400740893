"""Scheduled retraining: refresh the source snapshot; stop cheaply when nothing changed since the
registered model was trained, otherwise run the pipeline (evaluate, gate, promote) and push.

Usage: `gruflow retrain [--force] [--project DIR]` or the `gruflow-retrain` deployment
(prefect.yaml, scheduled by `gruflow deploy`). The skip path never imports TensorFlow: it needs
only DVC (`dvc status`) and the MLflow registry (the `model_md5` tag of the registered version).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from components.drift import Decision, decide
from components.errors import GruflowError
from components.params import Params, load_params
from flows import resources, tracking
from flows.placement import push_after_run
from flows.project_lock import project_lock
from flows.secrets import redact, redacted_errors
from flows.stages import reproduce

CONCURRENCY_LIMIT = "gruflow-retrain"  # Prefect global concurrency limit (gruflow deploy makes it)


@dataclass
class Drifted:
    report: dict
    decision: Decision
    path: Path


@dataclass
class RetrainResult:
    skipped: bool
    reason: str
    executed: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    run_id: str = ""
    model_version: str | None = None
    pushed: int = 0
    seconds: float = 0.0
    decision: str = ""  # the gate's decision line (flows.registry.decision_line)


@contextlib.contextmanager
def exclusive(root: Path, wait: bool = True) -> Iterator[None]:
    """At most one retrain (or run) per project: the project lock (works without a server),
    plus the Prefect global concurrency limit `gruflow-retrain` when a Prefect server is
    configured and has it."""
    with project_lock(root, wait=wait, command=f"gruflow retrain, flow run {flow_run.id or '-'}"):
        if os.environ.get("PREFECT_API_URL"):
            from prefect.concurrency.sync import concurrency

            try:
                with concurrency(CONCURRENCY_LIMIT, occupy=1, timeout_seconds=10):
                    yield
            except TimeoutError:
                raise GruflowError(
                    f"another retrain holds the Prefect concurrency limit '{CONCURRENCY_LIMIT}'"
                ) from None
        else:
            yield


@task(name="refresh-source")
def refresh_source(root: Path, timeout: float) -> bool:
    """Re-snapshot the source (forced ingest, stopped after `timeout` s). An unchanged snapshot
    keeps its hash, so DVC then sees every downstream stage as up to date."""
    return reproduce(root, "ingest", force=True, timeout=timeout)


@task(name="what-changed", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
@redacted_errors
def what_changed(root: Path, params: Params) -> tuple[bool, str | None, str]:
    """(nothing to do?, registered version holding the current model, why) — from `dvc status`
    and the registry's `model_md5` tags."""
    from dvc.repo import Repo

    from flows import registry

    with Repo(str(root)) as repo:
        changed = sorted(repo.status())
    tags = tracking.lineage_tags(root, params, None)
    model_md5 = tags.get(f"dvc.{params.paths.model}", "")
    name = params.registry.model_name
    version = tracking.registered_version(name, model_md5) if model_md5 else None
    if changed:
        return False, version, f"changed since the last run: {', '.join(changed)}"
    if version is None:
        return False, None, "the current model is not in the registry yet"
    if not registry.is_gated(name, version):
        return False, version, f"version {version} was registered but never gated"
    role = "champion" if registry.champion_version(name) == version else "challenger (not promoted)"
    return (
        True,
        version,
        (f"nothing changed: data, params and code match {name} version {version}, the {role}"),
    )


@task(name="measure-drift")
@redacted_errors
def measure_drift(root: Path, params: Params, why_changed: str) -> Drifted:
    """Before any training: the clean stage (new documents cleaned and split), then the
    champion's drift on them (reports/drift.json) and the policy's decision."""
    from flows import drift_check
    from flows.pipeline import step  # the clean stage where params place it

    not_data = drift_check.non_data_changes(root)  # before clean: its deps still say why
    step(root, params, "clean", False)
    report = drift_check.measure(root, params)
    decision = decide(params.retrain, report, report.get("age_days"), why_changed, not_data)
    return Drifted(report, decision, drift_check.write(root, params, report, decision))


@task(name="record-skip", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
@redacted_errors
def record_skip(
    root: Path, params: Params, version: str, reason: str, drifted: Drifted | None = None
) -> str:
    tags = tracking.lineage_tags(root, params, str(flow_run.id or ""))
    with mlflow.start_run(
        run_name="retrain-skipped",
        tags={
            **tags,
            "retrain": "skipped",
            "retrain_reason": reason,
            "retrain.policy": params.retrain.policy,
            "model_version": version,
            "executed_stages": "none",
        },
    ) as run:
        pass
    text = (
        f"# gruflow retrain: skipped\n\n{reason}.\n\n| | |\n|---|---|\n"
        f"| model | {params.registry.model_name} version {version} |\n"
        f"| MLflow run | {run.info.run_id} ({redact(mlflow.get_tracking_uri())}) |\n"
    )
    if drifted is not None:
        text += "\n" + _drift_record(run.info.run_id, params, drifted)
    text += resources.markdown(root, None)
    create_markdown_artifact(text, key="gruflow-retrain", description="retrain decision")
    return run.info.run_id


def _drift_record(run_id: str, params: Params, drifted: Drifted) -> str:
    """Drift numbers and decision onto the MLflow run; the artifact's drift section."""
    from flows import drift_check

    policy = params.retrain.policy
    drift_check.log_to_run(run_id, drifted.path, drifted.report, drifted.decision, policy)
    return drift_check.markdown(drifted.report, drifted.decision, policy)


def _report(params: Params, result: RetrainResult, reason: str, tracking_uri: str) -> str:
    from mlflow.tracking import MlflowClient

    name = params.registry.model_name
    lines = [
        "# gruflow retrain: trained\n",
        f"Why: {reason}.\n",
        f"Stages executed: {', '.join(result.executed) or 'none'}\n",
        f"MLflow parent run `{result.run_id}` in `{redact(tracking_uri)}`\n",
    ]
    m = result.metrics
    if m:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4f} |"
            for k, v in m.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        lines.append("")
    if result.model_version:
        tags = MlflowClient().get_model_version(name, result.model_version).tags
        lines += [
            f"## Gate: {name} version {result.model_version} (models:/{name}/"
            f"{result.model_version})\n",
            "| | |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in sorted(tags.items()) if k.startswith("gate.")]
    else:
        lines.append("No new model version (the registry already holds this model).")
    lines.append(f"\n{result.pushed} file(s) pushed to the DVC remote.")
    return "\n".join(lines)


@flow(name="gruflow-retrain", log_prints=True)
@redacted_errors
def retrain(project: str = ".", force: bool = False, wait: bool = True) -> RetrainResult:
    start = time.perf_counter()
    root = Path(project).resolve()
    params = load_params(root / "params.yaml")
    os.chdir(root)  # stage commands resolve params.yaml and outputs from the working directory
    log = get_run_logger()
    with exclusive(root, wait):
        tracking_uri = tracking.configure(root, params.mlflow.experiment)
        refresh_source(root, params.orchestration.stage_timeout)
        unchanged, version, reason = what_changed(root, params)
        always = params.retrain.policy == "always"
        if unchanged and not (force or always):
            run_id = record_skip(root, params, version, reason)
            log.info("retrain skipped: %s", reason)
            return RetrainResult(
                skipped=True,
                reason=reason,
                run_id=run_id,
                model_version=version,
                seconds=time.perf_counter() - start,
            )
        drifted = measure_drift(root, params, reason)
        reason = drifted.decision.reason
        if not (force or drifted.decision.retrain):
            champion = str(drifted.report.get("champion") or version)
            run_id = record_skip(root, params, champion, reason, drifted)
            log.info("retrain skipped: %s", reason)
            return RetrainResult(
                skipped=True,
                reason=reason,
                run_id=run_id,
                model_version=champion,
                seconds=time.perf_counter() - start,
            )
        log.info("retraining: %s", "forced" if force else reason)
        from flows.pipeline import pipeline  # only now: the pipeline path may load TensorFlow

        out = pipeline(project=str(root), force=force or always)
        result = RetrainResult(
            skipped=False,
            reason=reason,
            executed=out.executed,
            metrics=out.metrics,
            run_id=out.parent_run_id,
            model_version=out.model_version,
            decision=out.decision,
        )
        mlflow.MlflowClient().set_tag(out.parent_run_id, "retrain", "trained")
        section = _drift_record(out.parent_run_id, params, drifted)
        result.pushed = push_after_run(root, result.model_version)
        create_markdown_artifact(
            _report(params, result, reason, tracking_uri)
            + "\n\n"
            + section
            + resources.markdown(root, ["ingest", *result.executed]),
            key="gruflow-retrain",
            description="retrain decision",
        )
    result.seconds = time.perf_counter() - start
    return result


if __name__ == "__main__":
    retrain()
