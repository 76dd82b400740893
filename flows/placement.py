"""Where stages run and how their data moves: the DVC remote, push/pull tasks, and placed stages.

A stage named in `orchestration.placement` (e.g. `train: gpu`) runs as the `gruflow-stage`
deployment on that work pool: the worker clones the flow's git commit (prefect.yaml pull step),
`dvc pull`s the stage's inputs, runs the stage, `dvc push`es its outputs and publishes its
`dvc.lock` entry as an artifact; the parent merges that entry into its `dvc.lock` and pulls the
outputs. Unplaced stages run in the flow's process (the default: no server needed).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from components.contract import LIVE_RUN_ENV
from components.errors import GruflowError
from components.params import Params, load_params
from flows import resources
from flows.entry import OneLineError
from flows.gitrepo import git_output
from flows.secrets import redact

REMOTE_NAME = "gruflow"
STAGE_DEPLOYMENT = "gruflow-stage/gruflow-stage"
LOCK_ARTIFACT = "gruflow-stage-lock"


def remote_url(root: Path, params: Params) -> str:
    """orchestration.dvc_remote (or $GRUFLOW_DVC_REMOTE, e.g. on a worker) as DVC wants it:
    URLs as they are, folders made absolute against the project root."""
    url = os.environ.get("GRUFLOW_DVC_REMOTE") or params.orchestration.dvc_remote
    if not url or "://" in url:
        return url
    return str((root / url).resolve())


def ensure_remote(root: Path, params: Params) -> tuple[str | None, dict | None]:
    """Make orchestration.dvc_remote the default remote (in .dvc/config.local, which git
    ignores, so lineage stays clean); "" keeps whatever .dvc/config says. A URL holding a
    password is never written to disk: it comes back as a config override for `Repo(config=)`.
    Returns (the remote's name, the override or None)."""
    from dvc.repo import Repo

    url = remote_url(root, params)
    override = {"remote": {REMOTE_NAME: {"url": url}}, "core": {"remote": REMOTE_NAME}}
    with Repo(str(root)) as repo:
        if url:
            if "://" not in url:
                Path(url).mkdir(parents=True, exist_ok=True)
            secret = redact(url) != url
            with repo.config.edit("local") as conf:
                if secret:  # drop what an earlier run may have written there
                    conf["remote"].pop(REMOTE_NAME, None)
                    if conf["core"].get("remote") == REMOTE_NAME:
                        conf["core"].pop("remote")
                else:
                    conf["remote"][REMOTE_NAME] = {"url": url}
                    conf["core"]["remote"] = REMOTE_NAME
            return REMOTE_NAME, override if secret else None
        return repo.config.get("core", {}).get("remote"), None


def _targets(root: Path, stages: list[str] | None) -> list[str] | None:
    from flows.stages import target

    return [target(root, s) for s in stages] if stages else None


@task(name="dvc-push", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def dvc_push(root: Path, targets: list[str] | None = None) -> int:
    """Push the cached outputs (all, or those of `targets` stages) to the default remote."""
    from dvc.repo import Repo

    params = load_params(root / "params.yaml")
    name, override = ensure_remote(root, params)
    log = get_run_logger() if TaskRunContext.get() else logging.getLogger(__name__)
    if name is None:
        log.warning('no DVC remote configured (orchestration.dvc_remote is ""); nothing pushed')
        return 0
    with Repo(str(root), config=override) as repo:
        n = repo.push(targets=_targets(root, targets))
    log.info("dvc push: %d file(s) uploaded to %s", n, redact(remote_url(root, params)))
    return n


def push_after_run(root: Path, version: str | None, in_flow: bool = True) -> int:
    """`dvc push` after a good run (`in_flow=False`: a run with nothing to do, no Prefect);
    a failure says in one line that the model is registered and what to do (the run itself
    is not undone)."""
    try:
        return dvc_push(root) if in_flow else dvc_push.fn(root)
    except Exception as exc:
        model = (
            f"model version {version} is registered"
            if version
            else "the run finished (no new model version)"
        )
        raise OneLineError(
            f"{model}, but `dvc push` failed ({type(exc).__name__}: "
            f"{redact(str(exc)).splitlines()[0] if str(exc) else ''}) — fix "
            "the DVC remote (orchestration.dvc_remote) and run `dvc push`"
        ) from exc


@task(name="dvc-pull", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def dvc_pull(root: Path, targets: list[str] | None = None, with_deps: bool = False) -> None:
    from dvc.repo import Repo

    _, override = ensure_remote(root, load_params(root / "params.yaml"))
    with Repo(str(root), config=override) as repo:
        repo.pull(targets=_targets(root, targets), with_deps=with_deps)


def placed_pool(params: Params, stage: str) -> str | None:
    pool = params.orchestration.placement.get(stage, "local")
    return None if pool in ("", "local") else pool


def _git_head(root: Path) -> str:
    head = git_output(root, "rev-parse", "HEAD")
    if not head:
        raise GruflowError(f"{root}: placed stages need a git repository with a commit")
    return head


def _lock_entry(root: Path, stage: str) -> dict:
    lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    return lock.get("stages", {}).get(stage, {})


def _pack_uncached(root: Path, stage: str) -> str:
    """The stage's `cache: false` outputs (metrics, plots, reports) as base64 tar.gz: the DVC
    remote carries only cached outputs, and downstream stages may read these."""
    import base64
    import io
    import tarfile

    from dvc.repo import Repo

    from flows.stages import target

    with Repo(str(root)) as repo:
        paths = [
            o.def_path for o in repo.stage.collect(target(root, stage))[0].outs if not o.use_cache
        ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in paths:
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel)
    return base64.b64encode(buf.getvalue()).decode()


def _unpack_uncached(root: Path, blob: str) -> None:
    import base64
    import io
    import tarfile

    if blob:
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(blob)), mode="r:gz") as tar:
            tar.extractall(root, filter="data")


def _merge_lock_entry(root: Path, stage: str, entry: dict) -> None:
    path = root / "dvc.lock"
    lock = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {
        "schema": "2.0",
        "stages": {},
    }
    lock.setdefault("stages", {})[stage] = entry
    tmp = path.with_suffix(".lock.tmp")
    tmp.write_text(yaml.safe_dump(lock, sort_keys=False))
    tmp.replace(path)


def stage_parameters(
    root: Path, params: Params, stage: str, commit: str, force: bool, mlflow_run_id: str
) -> dict:
    """The placed stage's flow-run parameters. Prefect shows them in its UI and keeps them in
    its database, so URLs go redacted (`user:***@host`): the worker takes the credentials from
    its own environment (`worker_remote`), never from Prefect."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "") if mlflow_run_id else ""
    return {
        "stage": stage,
        "commit": commit,
        "force": force,
        "lock": (root / "dvc.lock").read_text() if (root / "dvc.lock").is_file() else "",
        "remote": redact(remote_url(root, params)),
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": redact(tracking_uri),
    }


def worker_remote(remote: str, env_name: str = "GRUFLOW_DVC_REMOTE") -> str:
    """The remote URL a worker uses: the parent's `remote` parameter, unless it was redacted
    (it held a password): then the worker's own $GRUFLOW_DVC_REMOTE, which must name the same
    remote with its credentials."""
    if ":***@" not in remote:
        return remote
    own = os.environ.get(env_name, "")
    if not own or redact(own) != remote:
        raise GruflowError(
            f"the DVC remote {remote} needs credentials, which are not passed "
            f"through Prefect: set {env_name} to its full URL in the worker's "
            "environment"
        )
    return own


def run_placed(
    root: Path, params: Params, stage: str, force: bool = False, mlflow_run_id: str = ""
) -> bool:
    """Run `stage` as the gruflow-stage deployment on its pool; bring its outputs back.
    Called inside the pipeline flow, so the deployment's run is a subflow of it. With
    `mlflow_run_id` (the stage's nested run) the worker's stage command logs live to it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment

    pool = placed_pool(params, stage)
    log = get_run_logger()
    dvc_push.fn(root)  # the worker pulls the inputs from the remote
    commit = _git_head(root)
    log.info("stage %s: placed on work pool %s (commit %s)", stage, pool, commit[:12])
    limit = params.orchestration.stage_timeout
    parameters = stage_parameters(root, params, stage, commit, force, mlflow_run_id)
    run = run_deployment(
        STAGE_DEPLOYMENT, parameters=parameters, timeout=limit, poll_interval=2, job_variables={}
    )
    if run.state is None or not run.state.is_final():
        raise GruflowError(
            f"placed stage {stage} (flow run {run.id}) did not finish within "
            f"orchestration.stage_timeout ({limit} s) — raise "
            "orchestration.stage_timeout in params.yaml if it needs longer"
        )
    if not run.state.is_completed():
        raise GruflowError(
            f"placed stage {stage} (flow run {run.id}) ended {run.state.name}: "
            f"{run.state.message or ''}"
        )
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    payload = next(
        (
            json.loads(a.data.split("```json\n", 1)[1].split("\n```", 1)[0])
            for a in arts
            if a.key == LOCK_ARTIFACT
        ),
        None,
    )
    if payload is None:
        raise GruflowError(f"placed stage {stage}: flow run {run.id} published no lock entry")
    _merge_lock_entry(root, stage, payload["entry"])
    _unpack_uncached(root, payload.get("uncached", ""))
    dvc_pull.fn(root, [stage])
    if payload.get("cost"):  # the worker's measurement: its CPU, memory and GPU, not ours
        resources.record(root, resources.StageCost(stage, ran=True, **payload["cost"]))
    return bool(payload["ran"])


def _log_to(tracking_uri: str, run_id: str) -> bool:
    """Whether this worker reaches the parent's MLflow store and its run (a local sqlite store
    of another machine is not here: then the parent alone logs the stage's outputs)."""
    if (
        tracking_uri.startswith("sqlite:///")
        and not Path(tracking_uri.removeprefix("sqlite:///")).is_file()
    ):
        return False
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except Exception as exc:  # unreachable server, unknown run: the stage runs untracked
        get_run_logger().warning(
            "MLflow run %s in %s not reachable (%s): the stage will not log live",
            run_id,
            tracking_uri,
            exc,
        )
        return False
    return True


@flow(name="gruflow-stage", log_prints=True)
def stage_flow(
    stage: str,
    commit: str = "",
    force: bool = False,
    lock: str = "",
    remote: str = "",
    project: str = ".",
    mlflow_run_id: str = "",
    tracking_uri: str = "",
) -> bool:
    """Worker side of a placed stage: the pull steps cloned the branch; check out the parent's
    `commit`, take its `dvc.lock` (what the upstream stages produced) and its DVC `remote`;
    the stage logs live to the parent's nested MLflow run `mlflow_run_id` when given."""
    from flows.stages import STAGES, reproduce

    root = Path(project).resolve()
    os.chdir(root)
    if commit and _git_head(root) != commit:  # the pull step cloned the branch head
        for args in (["fetch", "-q", "origin", commit], ["checkout", "-q", "--detach", commit]):
            subprocess.run(["git", *args], cwd=root, check=True)
    if lock:
        (root / "dvc.lock").write_text(lock)
    if remote:
        os.environ["GRUFLOW_DVC_REMOTE"] = worker_remote(remote)
    tracking_uri = worker_remote(tracking_uri, "MLFLOW_TRACKING_URI") if tracking_uri else ""
    if mlflow_run_id and tracking_uri and _log_to(tracking_uri, mlflow_run_id):
        os.environ |= {"MLFLOW_TRACKING_URI": tracking_uri, LIVE_RUN_ENV: mlflow_run_id}
    upstream = list(STAGES[: STAGES.index(stage)])
    if upstream:
        dvc_pull(root, upstream)
    limit = load_params(root / "params.yaml").orchestration.stage_timeout
    ran = reproduce(root, stage, force=force, timeout=limit)
    dvc_push(root, [stage])
    entry = _lock_entry(root, stage)
    # what the stage cost on this worker (stages.reproduce measured it): the parent records it
    cost = resources.read(root).get("stages", {}).get(stage) if ran else None
    payload = {"ran": ran, "entry": entry, "uncached": _pack_uncached(root, stage), "cost": cost}
    create_markdown_artifact(
        f"# stage {stage}\nran: {ran}, commit {commit}\n\n```json\n{json.dumps(payload)}\n```\n",
        key=LOCK_ARTIFACT,
        description=f"dvc.lock entry of stage {stage}",
    )
    return ran


if __name__ == "__main__":  # `python -m flows.placement pull`: the deployments' pull step
    import sys

    from dvc.repo import Repo

    if sys.argv[1:] != ["pull"]:
        sys.exit("usage: python -m flows.placement pull")
    here = Path.cwd()
    name, override = ensure_remote(here, load_params(here / "params.yaml"))
    if name:
        with Repo(str(here), config=override) as repo:
            repo.pull(allow_missing=True)
