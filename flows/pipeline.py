"""Prefect flow: run the DVC stages in DAG order, track them in MLflow, register the model.

Usage: `gruflow run` (or `python -m flows.pipeline`). Each task runs its DVC stage, so DVC
decides what is up to date; Prefect adds retries, logs, UI and the MLflow side effects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.task_engine import TaskRunTimeoutError

from components.contract import LIVE_RUN_ENV
from components.params import Params, load_params
from flows import card, classifier, placement, registry, tracking
from flows.interrupt import end_killed
from flows.project_lock import project_lock, sweep_temp
from flows.rollback import AFTER_STAGES, add_note, after_stages, keep_outputs
from flows.secrets import redact, redacted_errors
from flows.stages import STAGES, StageTimeout, all_outs, is_changed, reproduce, stage_timeout

TRACKED = ("embed", "tune", "train", "evaluate")  # stages that get a nested MLflow run


@dataclass
class PipelineResult:
    executed: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    parent_run_id: str = ""
    model_version: str | None = None
    tracking_uri: str = ""
    decision: str = ""  # the gate's decision on the current model, why, what to do next


@task(name="stage")
def run_stage(root: Path, stage: str, force: bool = False, timeout: float | None = None) -> bool:
    get_run_logger().info("stage %s: starting", stage)
    ran = reproduce(root, stage, force=force, timeout=timeout)
    get_run_logger().info("stage %s: %s", stage, "done" if ran else "up to date, skipped")
    return ran


def _log_stage(root: Path, params: Params, stage: str, run_id: str) -> dict:
    """After a tracked stage ran: log what it produced into its nested MLflow run."""
    reports = root / params.paths.reports
    if stage == "embed":
        return tracking.log_embed(run_id, reports, root / params.paths.projector)
    if stage == "tune":
        return tracking.log_tune(run_id, reports)
    if stage == "train":
        tracking.log_train(run_id, params, reports)
    if stage == "evaluate":
        return tracking.log_evaluate(run_id, reports)
    return {}


@task(name="tracked-stage")
@redacted_errors
def tracked_stage(root: Path, params: Params, stage: str, force: bool) -> tuple[bool, dict]:
    """A stage inside its own nested MLflow run (opened only when the stage will run); the
    stage logs live to it through GRUFLOW_MLFLOW_RUN_ID (train epochs, tune trials)."""
    limit = params.orchestration.stage_timeout
    if not (force or is_changed(root, stage)):
        return run_stage.fn(root, stage, timeout=limit), {}
    with mlflow.start_run(run_name=stage, nested=True) as run:
        os.environ[LIVE_RUN_ENV] = run.info.run_id
        try:
            ran = run_stage.fn(root, stage, force, limit)
        finally:
            os.environ.pop(LIVE_RUN_ENV, None)
    return ran, _log_stage(root, params, stage, run.info.run_id)


def placed_stage(root: Path, params: Params, stage: str, force: bool) -> tuple[bool, dict]:
    """A stage on its work pool; a tracked one gets its nested MLflow run here, as locally,
    and the worker's stage command logs live to it (run id and store passed as parameters)."""
    if stage not in TRACKED or not (force or is_changed(root, stage)):
        return placement.run_placed(root, params, stage, force), {}
    with mlflow.start_run(run_name=stage, nested=True) as run:
        mlflow.set_tag("placement.pool", placement.placed_pool(params, stage))
        ran = placement.run_placed(root, params, stage, force, mlflow_run_id=run.info.run_id)
    return ran, _log_stage(root, params, stage, run.info.run_id)


def step(root: Path, params: Params, stage: str, force: bool) -> tuple[bool, dict]:
    """One stage where params place it, within orchestration.stage_timeout; (ran, logged)."""
    limit = params.orchestration.stage_timeout
    try:
        if placement.placed_pool(params, stage):  # runs on a work pool's worker
            return placed_stage(root, params, stage, force)
        if stage in TRACKED:
            return tracked_stage.with_options(name=stage, timeout_seconds=limit)(
                root, params, stage, force
            )
        return run_stage.with_options(name=stage, timeout_seconds=limit)(
            root, stage, force, limit
        ), {}
    except StageTimeout:
        raise
    except TaskRunTimeoutError as exc:  # Prefect's timer fired before the stage's watchdog
        raise stage_timeout(stage, limit) from exc


@task(name="register", retries=2, retry_delay_seconds=[2, 10])
@redacted_errors
def register_and_gate(
    root: Path, params: Params, parent_run_id: str, metrics: dict
) -> tuple[str | None, str]:
    """Register the current model unless the registry already holds this exact file (its
    `model_md5` tag), then gate it. Idempotent, so a retry after a partial failure, or a rerun
    after a kill, finishes the job without a second version. Returns (the new version or None,
    the gate's decision line)."""
    tags = tracking.lineage_tags(root, params, str(flow_run.id or ""))
    model_md5 = tags.get(f"dvc.{params.paths.model}", "")
    name = params.registry.model_name
    metrics = metrics or tracking.read_metrics(root / params.paths.reports)
    version = tracking.registered_version(name, model_md5) if model_md5 else None
    new = version is None
    if new:
        version = tracking.log_and_register_model(
            root, params, parent_run_id, {**tags, "model_md5": model_md5}, metrics
        )
    if registry.is_gated(name, version):
        get_run_logger().info("model already registered and gated as %s version %s", name, version)
        return (version if new else None), registry.current_decision(name, version)
    decision = registry.gate(
        name,
        version,
        metrics,
        root / params.paths.clean / "test.parquet",
        params.registry.min_improvement,
    )
    card.log_data_profile(parent_run_id, root / params.paths.reports)
    card_path, _ = card.write_card(name, version, None, root / params.paths.reports)
    get_run_logger().info("model card: %s", card_path.relative_to(root))
    create_markdown_artifact(
        registry.gate_markdown(name, decision, parent_run_id),
        key="gruflow-gate",
        description="champion/challenger decision",
    )
    get_run_logger().info("%s: %s", name, decision["line"])
    return version, decision["line"]


def recover(root: Path, params: Params) -> None:
    """What a killed run of this project left: temp files beside the outputs, MLflow runs
    still RUNNING, registry versions without their tags. Runs under the project lock."""
    sweep_temp(root, all_outs(root))
    tracking.close_interrupted_runs(root, params.mlflow.experiment)
    tracking.drop_orphan_versions(root, params.registry.model_name)


@flow(name="gruflow-pipeline", log_prints=True)
@redacted_errors
def pipeline(
    project: str = ".", force: bool = False, done: list[str] | None = None
) -> PipelineResult:
    """`done`: stages the caller already ran in this run (a retrain's forced ingest and its
    clean): not forced a second time, DVC only confirms they are up to date."""
    root = Path(project).resolve()
    params = load_params(root / "params.yaml")  # fail before any work on bad params
    with project_lock(root, command="gruflow pipeline"):  # re-entrant: the CLI may hold it
        result = PipelineResult(tracking_uri=tracking.configure(root, params.mlflow.experiment))
        recover(root, params)
        try:
            _run(root, params, force, result, done or [])
        # Ctrl-C/SIGTERM (flows/interrupt.py; Prefect turns a SIGTERM during a flow run into
        # its TerminationSignal first), the outputs already restored
        except (KeyboardInterrupt, TerminationSignal):
            if result.parent_run_id:
                end_killed(result.parent_run_id)
            raise
    return result


def _run(root: Path, params: Params, force: bool, result: PipelineResult, done: list[str]) -> None:
    """The stages, registration and finetune hook inside the parent MLflow run."""
    stages_done: list[bool] = []
    try:
        _stages_then_register(root, params, force, result, done, stages_done)
    except BaseException as exc:  # after the stages (MLflow's end_run on exit included)
        if stages_done:
            add_note(exc, AFTER_STAGES)
        raise


def _stages_then_register(
    root: Path,
    params: Params,
    force: bool,
    result: PipelineResult,
    done: list[str],
    stages_done: list[bool],
) -> None:
    with mlflow.start_run(
        run_name="pipeline", tags={"gruflow.project": tracking.project_tag(root)}
    ) as parent:
        result.parent_run_id = parent.info.run_id
        mlflow.log_params(
            {
                "data.source": redact(str(params.data.source)),
                "registry.model_name": params.registry.model_name,
            }
        )
        with keep_outputs(root):  # a failed stage rolls back the run's earlier stages too
            for stage in STAGES:
                ran, logged = step(root, params, stage, force and stage not in done)
                if stage == "evaluate":
                    result.metrics = logged
                if ran:
                    result.executed.append(stage)
        stages_done.append(True)
        with after_stages():  # a failure from here on keeps the stages' good outputs
            result.model_version, result.decision = register_and_gate(
                root, params, parent.info.run_id, result.metrics
            )
            # the parent run carries the outcome, so MLflow's runs table compares pipelines
            mlflow.log_metrics(
                tracking.numbers(
                    result.metrics or tracking.read_metrics(root / params.paths.reports)
                )
            )
            mlflow.set_tags({"gate.decision": result.decision[:5000]})
            _, ran = classifier.finetune_and_register(root, params, force)
            if ran and params.finetune.source:  # off, the stage is a no-op marker: not listed
                result.executed.append("finetune")
            mlflow.set_tags(
                {
                    **tracking.lineage_tags(root, params, str(flow_run.id or "")),
                    "executed_stages": ",".join(result.executed) or "none",
                }
            )


if __name__ == "__main__":
    pipeline()
