"""Reproducible by construction: two fresh copies of a tiny project, tuning on, one run while
other processes keep every core busy, give identical DVC output hashes and metrics; and
`gruflow reproduce` rebuilds a registered version from its lineage and says `identical`, or
`differs` naming the stage when a recorded hash was tampered with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import BIN, git, isolated_env, tiny_project
from tests.test_pipeline_e2e import gruflow as run_gruflow

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def busy_cores():
    """One spinning process per core (at least two) for the duration of the block."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(max(2, os.cpu_count() or 1))
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def tuned_project(base: Path, corpus: Path | None = None) -> Path:
    """The e2e tiny project with a real (if small) study: 3 trials on half the train split;
    reading `corpus` when given (the snapshot records its source's path, so two copies that
    should agree must read the same source)."""
    project = tiny_project(base)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tune"].update(n_trials=3, data_fraction=0.5, sampler_startup_trials=1)
    if corpus is not None:
        params["data"]["source"] = str(corpus)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    git(project, "commit", "-qam", "tune 3 trials")
    return project


def gruflow(project: Path, env: dict) -> subprocess.CompletedProcess:
    """`gruflow run`, with room for a machine kept busy on purpose (and by others)."""
    return run_gruflow(project, env, timeout=2400)


def out_hashes(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage["outs"]}


def read_json(project: Path, name: str) -> dict:
    return json.loads((project / "reports" / name).read_text())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    runs, corpus = {}, None
    for name in ("quiet", "busy"):
        base = tmp_path_factory.mktemp(f"repro-{name}")
        project, env = tuned_project(base, corpus), isolated_env(base)
        corpus = corpus or base / "corpus.jsonl"
        with busy_cores() if name == "busy" else contextlib.nullcontext():
            done = gruflow(project, env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[name] = {"project": project, "env": env, "base": base}
    return runs


def test_busy_and_quiet_runs_give_identical_outputs_and_metrics(two_runs):
    quiet, busy = two_runs["quiet"]["project"], two_runs["busy"]["project"]
    hashes = out_hashes(quiet)
    assert len(hashes) >= 20 and "artifacts/model.keras" in hashes  # every stage's outs
    assert out_hashes(busy) == hashes
    assert read_json(busy, "metrics.json") == read_json(quiet, "metrics.json")
    tune = read_json(quiet, "tune.json")
    assert tune["reproducible"] is True and sum(tune["n_trials"].values()) == 3


def version_tags(project: Path) -> dict[str, str]:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return MlflowClient().get_model_version("gruflow-lm", "1").tags


def reproduce(run: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "gruflow"), "reproduce", "1", "--project", str(run["project"])],
        cwd=run["project"],
        env=run["env"],
        capture_output=True,
        text=True,
        timeout=2400,
    )


def test_version_records_clean_lineage(two_runs):
    tags = version_tags(two_runs["quiet"]["project"])
    assert tags["git_dirty"] == "False" and tags["reproducible"] == "true"
    assert (
        tags["dvc.artifacts/model.keras"]
        == out_hashes(two_runs["quiet"]["project"])["artifacts/model.keras"]
    )


def test_reproduce_comes_back_identical(two_runs):
    run = two_runs["quiet"]
    done = reproduce(run)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "inputs (ingest outputs) pulled from the DVC remote" in out
    # progress: every stage after ingest, numbered (clean ... evaluate, finetune)
    assert re.search(r"\[1/(\d+)\] clean \.\.\.", out), out[-3000:]
    total = int(re.search(r"\[1/(\d+)\] clean", out).group(1))
    assert f"[{total}/{total}] " in out and "evaluate done" in out
    assert "gruflow: gruflow-lm version 1: identical" in out
    assert "train: artifacts/model.keras" in out and "metric perplexity" in out
    tags = version_tags(run["project"])
    assert tags["reproduce.verdict"] == "identical" and tags["reproduce.mismatches"] == "none"
    assert tags["reproduce.date"]
    # isolated: the user's registry still holds one version, and no worktree is left behind
    from mlflow.tracking import MlflowClient

    assert len(MlflowClient().search_model_versions("name = 'gruflow-lm'")) == 1
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=run["project"], capture_output=True, text=True
    ).stdout
    assert len(worktrees.strip().splitlines()) == 1


def test_tampered_record_differs_naming_the_stage(two_runs):
    """A recorded tokenize hash that no run produces; the remote is gone too, so the inputs
    are rebuilt from data.source (and it says so)."""
    from mlflow.tracking import MlflowClient

    run = two_runs["busy"]
    version_tags(run["project"])  # point MLflow at this project's store
    MlflowClient().set_model_version_tag(
        "gruflow-lm", "1", "dvc.data/tokens", "0123456789abcdef0123456789abcdef.dir"
    )
    shutil.rmtree(run["base"] / "gruflow-dvc-remote")
    done = reproduce(run)
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]
    assert "the DVC remote lacks the inputs" in out and "rebuilding them from data.source" in out
    assert "gruflow: gruflow-lm version 1: differs (1 mismatch(es): tokenize: data/tokens)" in out
    tags = version_tags(run["project"])
    assert tags["reproduce.verdict"] == "differs"
    assert tags["reproduce.mismatches"] == "tokenize: data/tokens"
