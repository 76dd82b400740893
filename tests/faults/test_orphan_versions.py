"""Orphan registry versions (a registration killed before its tags, gruflow < the one-call
registration) on a real sqlite MLflow store: `flows.tracking.drop_orphan_versions` deletes
this project's versions without `model_md5` and nothing else."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

NAME = "gruflow-lm"


@pytest.fixture
def store(tmp_path):
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        yield MlflowClient(uri, uri)
    finally:
        mlflow.set_tracking_uri(previous)


def _version(client: MlflowClient, tmp_path, project: str | None, **tags: str) -> str:
    """A version of NAME logged under a run tagged with `project` (None: no tag)."""
    exp = client.get_experiment_by_name("gruflow") or client.get_experiment(
        client.create_experiment("gruflow", artifact_location=(tmp_path / "art").as_uri())
    )
    run_tags = {"gruflow.project": project} if project else {}
    run = client.create_run(exp.experiment_id, tags=run_tags)
    client.set_terminated(run.info.run_id)
    return str(
        client.create_model_version(
            NAME, str(tmp_path / "model"), run_id=run.info.run_id, tags=tags
        ).version
    )


def test_drop_orphan_versions_removes_only_this_projects_untagged(store, tmp_path):
    from flows.tracking import drop_orphan_versions, project_tag

    root = tmp_path / "project"
    root.mkdir()
    mine = project_tag(root)
    store.create_registered_model(NAME)
    complete = _version(store, tmp_path, mine, model_md5="abc")
    orphan = _version(store, tmp_path, mine)
    other = _version(store, tmp_path, f"{mine}-other")  # another project on a shared server
    untagged_run = _version(store, tmp_path, None)
    aliased = _version(store, tmp_path, mine)
    store.set_registered_model_alias(NAME, "champion", aliased)

    assert drop_orphan_versions(root, NAME) == [orphan]
    left = sorted(str(mv.version) for mv in store.search_model_versions(f"name = '{NAME}'"))
    assert left == sorted([complete, other, untagged_run, aliased])
    assert drop_orphan_versions(root, NAME) == []  # nothing more to do
