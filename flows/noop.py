"""`gruflow run` with nothing to do, found before Prefect, the pipeline or TensorFlow load.

Usage: `line = noop.nothing_to_do(root, params)`; None means "run the pipeline". Nothing to do
means what a full run would find anyway: `dvc status` clean for every stage (DVC's own API, the
same answer as the command), and the registry already holding and having gated the current
model (its `model_md5` is the DVC hash in dvc.lock) — and the current classifier when finetune
is on. Only then are MLflow's client and the registry rules imported; Prefect never is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from components.params import Params

log = logging.getLogger(__name__)


def lock_md5(root: Path, path: str) -> str:
    """The DVC hash dvc.lock records for output `path` ('' when it has none)."""
    stages = (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {})
    return next(
        (
            o.get("md5", "")
            for s in stages.values()
            for o in s.get("outs", [])
            if o.get("path") == path
        ),
        "",
    )


def _dvc_clean(root: Path) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return not repo.status()


def _gated_version(name: str, md5: str) -> str | None:
    """The registered version of `name` holding the file with DVC hash `md5`, if gated."""
    from flows import registry, tracking

    version = tracking.registered_version(name, md5) if md5 else None
    return version if version and registry.is_gated(name, version) else None


def _first_run(root: Path) -> bool:
    """No dvc.lock or no MLflow store yet: certainly something to do."""
    from flows.tracking import store_uri

    uri = store_uri(root)
    return not (root / "dvc.lock").is_file() or (
        uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()
    )


def nothing_to_do(root: Path, params: Params) -> str | None:
    """The one-line summary of a run that has nothing to do, or None (run the pipeline)."""
    from flows import registry, tracking

    if _first_run(root) or not _dvc_clean(root):
        return None
    tracking.configure(root, params.mlflow.experiment)
    name = params.registry.model_name
    version = _gated_version(name, lock_md5(root, params.paths.model))
    if version is None:
        return None
    if (
        params.finetune.source
        and _gated_version(params.finetune.model_name, lock_md5(root, params.paths.classifier))
        is None
    ):
        return None
    champion = registry.champion_version(name)
    other = "" if champion in (version, None) else f"; the champion is version {champion}"
    return (
        f"stages executed: none, up to date (dvc status is clean); "
        f"{registry.current_decision(name, version)}{other}"
    )


def retrain_skipped(root: Path, params: Params) -> str | None:
    """`gruflow retrain`'s skip, decided before Prefect: re-snapshot the source (forced ingest,
    as the flow's refresh-source task), then `nothing_to_do`; when so, record the MLflow run
    `retrain=skipped` (the flow's record-skip, without its Prefect artifact: no server was
    started) and return the reason. None: run the retrain flow."""
    from flows.stages import reproduce

    if _first_run(root):  # the flow will snapshot the source; once is enough
        return None
    ingested = reproduce(root, "ingest", force=True, timeout=params.orchestration.stage_timeout)
    line = nothing_to_do(root, params)
    if line is None:
        return None
    import mlflow

    from flows import registry, tracking

    name = params.registry.model_name
    version = tracking.registered_version(name, lock_md5(root, params.paths.model))
    reason = f"nothing changed: data, params and code match {name} version {version}"
    tags = tracking.lineage_tags(root, params, None)
    with mlflow.start_run(
        run_name="retrain-skipped",
        tags={
            **tags,
            "retrain": "skipped",
            "retrain_reason": reason,
            "retrain.policy": params.retrain.policy,
            "model_version": version,
            "executed_stages": "ingest" if ingested else "none",
            "gruflow.project": tracking.project_tag(root),
        },
    ) as run:
        pass
    from flows import resources  # the forced ingest ran before this run existed

    entry = resources.read(root).get("stages", {}).get("ingest")
    if ingested and entry:
        resources.log_entries(run.info.run_id, {"ingest": entry})
    champion = registry.champion_version(name)
    return (
        f"{reason}, "
        + (
            "the champion"
            if champion == version
            else f"the challenger (champion: {champion or 'none'})"
        )
        + f" (MLflow run {run.info.run_id})"
    )
