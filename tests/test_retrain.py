"""`gruflow retrain` end to end on a tiny corpus: the first run trains, registers and pushes to
a local DVC remote; the second finds nothing changed and is skipped without running a stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import ROOT, gruflow, isolated_env, tiny_project
from tests.test_pipeline_e2e import copy_project as copy_tracked


def copy_project(dest: Path) -> None:
    """Tracked files plus new, not yet committed code (untracked files git does not ignore)."""
    copy_tracked(dest)
    new = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in new:
        if rel.endswith((".py", ".yaml")) and rel.startswith(("components/", "flows/", "prefect")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def _retrain(project: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    out = gruflow(project, env, command="retrain")
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def retrains(tmp_path_factory):
    base = tmp_path_factory.mktemp("retrain")
    project = tiny_project(base, copy_project, dvc_remote="../dvc-remote", placement={})
    env = isolated_env(base, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")  # busy CPUs
    first, t1 = _retrain(project, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    lock = (project / "dvc.lock").read_text()
    second, t2 = _retrain(project, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    print(f"retrain: first {t1:.1f} s, skipped second {t2:.1f} s")
    return {
        "project": project,
        "base": base,
        "first": first,
        "second": second,
        "lock": lock,
        "t2": t2,
    }


def test_first_retrain_trains_registers_and_pushes(retrains):
    out = retrains["first"].stdout
    assert "gruflow: retrained" in out and "registered model version 1" in out, out
    remote = retrains["base"] / "dvc-remote"
    files = [p for p in remote.rglob("*") if p.is_file()]
    assert len(files) > 5  # the DVC cache of every stage output
    config = (retrains["project"] / ".dvc" / "config.local").read_text()
    assert str(remote) in config


def test_second_retrain_is_skipped_without_running_a_stage(retrains):
    out = retrains["second"].stdout
    assert "gruflow: retrain skipped" in out, out
    assert "nothing changed" in out
    assert "gruflow: saved about" in out and "CPU s: the last measured cost of 7 stage(s)" in out
    assert "gruflow: this skip's cost " in out and "CPU s (ingest)" in out  # the forced ingest
    assert "Running stage 'clean'" not in out + retrains["second"].stderr
    assert (retrains["project"] / "dvc.lock").read_text() == retrains["lock"]
    # how fast a skip is: bench/noop.py (no timed assertion in tests: machines are busy)


def test_skipped_run_recorded_and_no_new_version(retrains):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{retrains['project'] / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("gruflow")
    skipped = client.search_runs([exp.experiment_id], "tags.retrain = 'skipped'")
    assert len(skipped) == 1
    skip = skipped[0].data
    assert skip.tags["executed_stages"] == "ingest"  # the forced re-snapshot, nothing else
    assert skip.tags["retrain.policy"] == "on_change"  # `gruflow history` shows the policy
    assert skip.tags["model_version"] == "1"
    costs = json.loads((retrains["project"] / "reports/resources.json").read_text())["stages"]
    assert skip.metrics["resources.ingest.cpu_s"] == costs["ingest"]["cpu_s"]
    trained = client.search_runs([exp.experiment_id], "tags.retrain = 'trained'")
    assert len(trained) == 1
    # the first retrain's forced ingest ran before its pipeline run existed: logged onto it
    assert trained[0].data.tags["executed_stages"].startswith("ingest,clean,tokenize")
    assert "resources.ingest.cpu_s" in trained[0].data.metrics
    assert "resources.clean.cpu_s" in trained[0].data.metrics
    versions = client.search_model_versions("name = 'gruflow-lm'")
    assert [str(v.version) for v in versions] == ["1"]


def test_skip_path_does_not_import_tensorflow(retrains):
    """In-process: the skip decision and record need no TensorFlow, Keras or MLflow's pyfunc
    (which would pull in model flavours): the registry client and DVC are enough."""
    heavy = ("tensorflow", "keras", "mlflow.pyfunc", "components.lm.model", "components.train")
    code = (
        "import sys; from flows.retrain import retrain; "
        f"r = retrain(project={str(retrains['project'])!r}); "
        "assert r.skipped, r.reason; "
        f"print(sorted(set({heavy!r}) & set(sys.modules)) or 'noTF')"
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "GRUFLOW_"))
    }
    env |= {
        "PREFECT_HOME": str(retrains["base"] / "prefect-home"),
        "PYTHONPATH": str(ROOT),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=retrains["base"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "noTF"
