"""A placed stage's Prefect flow-run parameters never carry a credential (Prefect shows them
in its UI and stores them); the worker takes the password from its own environment."""

from __future__ import annotations

import json

import pytest

from components.errors import GruflowError
from flows.placement import stage_parameters, worker_remote

SECRET = "Pl4ced-S3cret"
REMOTE = f"https://dvc:{SECRET}@store.example.com/remote"
TRACKING = f"http://mlflow:{SECRET}@mlflow.example.com:5000"


def test_stage_parameters_hold_no_password(params, tmp_path, monkeypatch):
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    p = params.model_copy(
        update={"orchestration": params.orchestration.model_copy(update={"dvc_remote": REMOTE})}
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING)
    monkeypatch.delenv("GRUFLOW_DVC_REMOTE", raising=False)
    out = stage_parameters(tmp_path, p, "train", "abc123", False, "run-1")
    assert SECRET not in json.dumps(out)
    assert out["remote"] == "https://dvc:***@store.example.com/remote"
    assert out["tracking_uri"] == "http://mlflow:***@mlflow.example.com:5000"
    assert out["lock"] == "schema: '2.0'\n" and out["stage"] == "train"


def test_worker_takes_the_password_from_its_environment(monkeypatch):
    redacted = "https://dvc:***@store.example.com/remote"
    monkeypatch.setenv("GRUFLOW_DVC_REMOTE", REMOTE)
    assert worker_remote(redacted) == REMOTE
    monkeypatch.setenv("GRUFLOW_DVC_REMOTE", "https://dvc:x@other.example.com/remote")
    with pytest.raises(GruflowError, match="set GRUFLOW_DVC_REMOTE to its full URL"):
        worker_remote(redacted)  # a different remote is not silently used instead
    monkeypatch.delenv("GRUFLOW_DVC_REMOTE")
    with pytest.raises(GruflowError, match="not passed through Prefect"):
        worker_remote(redacted)
    assert worker_remote("/srv/dvc-remote") == "/srv/dvc-remote"  # no credential: as given
