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

from components.errors import GruflowError
from components.params import Params, load_params
from flows import resources, retrain_report, tracking
from flows.placement import push_after_run
from flows.project_lock import project_lock
from flows.retrain_drift import Drifted, drift_record, measure_drift, record_costs
from flows.rollback import after_stages, keep_outputs, stages_failed
from flows.secrets import redact, redacted_errors
from flows.stages import reproduce

CONCURRENCY_LIMIT = "gruflow-retrain"  # Prefect global concurrency limit (gruflow deploy makes it)


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
    cost: dict | None = None  # wall_s, cpu_s of the drift scoring (None: not measured)


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


@task(name="record-skip", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2))
@redacted_errors
def record_skip(
    root: Path,
    params: Params,
    version: str,
    reason: str,
    ran: list[str],
    drifted: Drifted | None = None,
) -> str:
    """The MLflow run `retrain=skipped` (tags, drift numbers, the costs of the stages that
    ran) and the `gruflow-retrain` artifact: the decision, the drift, what the skip cost and
    what it saved."""
    tags = tracking.lineage_tags(root, params, str(flow_run.id or ""))
    with mlflow.start_run(
        run_name="retrain-skipped",
        tags={
            **tags,
            "retrain": "skipped",
            "retrain_reason": reason,
            "retrain.policy": params.retrain.policy,
            "model_version": version,
            "executed_stages": ",".join(ran) or "none",
        },
    ) as run:
        pass
    stages = record_costs(root, run.info.run_id, ran, drifted)
    sections = [] if drifted is None else [drift_record(run.info.run_id, params, drifted)]
    sections.append(
        retrain_report.resources_markdown(
            stages, ran, drifted.cost if drifted else None, skipped=True
        )
    )
    text = retrain_report.skip_markdown(
        params.registry.model_name,
        version,
        reason,
        run.info.run_id,
        redact(mlflow.get_tracking_uri()),
        sections,
    )
    create_markdown_artifact(text, key="gruflow-retrain", description="retrain decision")
    return run.info.run_id


def _report(params: Params, result: RetrainResult, reason: str, tracking_uri: str) -> str:
    from mlflow.tracking import MlflowClient

    name = params.registry.model_name
    gate_tags = (
        MlflowClient().get_model_version(name, result.model_version).tags
        if result.model_version
        else {}
    )
    return retrain_report.trained_markdown(
        name,
        reason,
        result.executed,
        result.run_id,
        redact(tracking_uri),
        result.metrics,
        result.model_version,
        gate_tags,
        result.pushed,
    )


@flow(name="gruflow-retrain", log_prints=True)
@redacted_errors
def retrain(project: str = ".", force: bool = False, wait: bool = True) -> RetrainResult:
    start = time.perf_counter()
    root = Path(project).resolve()
    params = load_params(root / "params.yaml")
    os.chdir(root)  # stage commands resolve params.yaml and outputs from the working directory
    with exclusive(root, wait):
        tracking_uri = tracking.configure(root, params.mlflow.experiment)
        # ingest and clean run here, before the pipeline (whose own rollback covers only its
        # stages): a failure anywhere before the pipeline's stages all succeeded puts the
        # outputs, dvc.lock and reports/resources.json back as they were before the retrain;
        # one after them (registration, finetune) keeps the good outputs, as `gruflow run` does
        with keep_outputs(root, restore_if=stages_failed):
            ran = ["ingest"] if refresh_source(root, params.orchestration.stage_timeout) else []
            unchanged, version, reason = what_changed(root, params)
            forced = force or params.retrain.policy == "always"
            if unchanged and not forced:
                result, drifted = _skip(root, params, version, reason, ran, None), None
            else:
                drifted = measure_drift(root, params, reason, forced)
                ran += ["clean"] if drifted.clean_ran else []
                if force or drifted.decision.retrain:
                    result = _train(root, params, drifted, ran, forced)
                else:
                    champion = str(drifted.report.get("champion") or version)
                    result = _skip(root, params, champion, drifted.decision.reason, ran, drifted)
        if not result.skipped:
            with after_stages():  # a failed push keeps the good outputs (a CLI block is outside)
                _publish(root, params, result, drifted, tracking_uri)
    result.seconds = time.perf_counter() - start
    return result


def _skip(
    root: Path, params: Params, version: str, reason: str, ran: list[str], drifted: Drifted | None
) -> RetrainResult:
    run_id = record_skip(root, params, version, reason, ran, drifted)
    get_run_logger().info("retrain skipped: %s", reason)
    cost = drifted.cost if drifted else None
    return RetrainResult(
        skipped=True, reason=reason, executed=ran, run_id=run_id, model_version=version, cost=cost
    )


def _train(
    root: Path, params: Params, drifted: Drifted, ran: list[str], forced: bool
) -> RetrainResult:
    """The pipeline (ingest and clean, already run, are not forced again), then the retrain's
    record on its parent run: the stages of the whole retrain, their costs, the drift."""
    reason = drifted.decision.reason
    get_run_logger().info(
        "retraining: %s", "forced" if forced and not drifted.decision.retrain else reason
    )
    from flows.pipeline import pipeline  # only now: the pipeline path may load TensorFlow

    out = pipeline(project=str(root), force=forced, done=ran)
    executed = [*ran, *(s for s in out.executed if s not in ran)]
    with after_stages():  # the stages succeeded: a failure here keeps their outputs
        client = mlflow.MlflowClient()
        client.set_tag(out.parent_run_id, "retrain", "trained")
        client.set_tag(out.parent_run_id, "executed_stages", ",".join(executed))
        record_costs(root, out.parent_run_id, ran, drifted)
        drift_record(out.parent_run_id, params, drifted)
    return RetrainResult(
        skipped=False,
        reason=reason,
        executed=executed,
        metrics=out.metrics,
        run_id=out.parent_run_id,
        model_version=out.model_version,
        decision=out.decision,
        cost=drifted.cost,
    )


def _publish(root: Path, params: Params, result: RetrainResult, drifted: Drifted, uri: str) -> None:
    """After a training retrain: push, then the `gruflow-retrain` artifact."""
    from flows import drift_check

    result.pushed = push_after_run(root, result.model_version)
    stages = resources.read(root).get("stages", {})
    create_markdown_artifact(
        _report(params, result, result.reason, uri)
        + "\n\n"
        + drift_check.markdown(drifted.report, drifted.decision, params.retrain.policy)
        + retrain_report.resources_markdown(stages, result.executed, drifted.cost),
        key="gruflow-retrain",
        description="retrain decision",
    )


if __name__ == "__main__":
    retrain()
