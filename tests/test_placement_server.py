"""Placement on real components over loopback: a Prefect server on 127.0.0.1, a process work pool
`gpu` with a worker, a bare git repository as the code remote and a local DVC remote. A retrain
places `train` on the worker, completes and promotes; a second retrain is skipped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import BIN, git, gruflow, tiny_project
from tests.test_retrain import copy_project

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError("prefect server did not become healthy")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("placement")
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "GRUFLOW_"))
    }
    env |= {
        "PREFECT_HOME": str(base / "prefect-home"),
        "PATH": f"{BIN}:{env['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = (base / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(env["PREFECT_API_URL"], proc)
        yield base, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_placed_train_on_worker_then_skip(server):
    base, env = server
    project = tiny_project(
        base,
        copy_project,
        branch="main",
        dvc_remote=str(base / "dvc-remote"),
        placement={"train": "gpu"},
        pool="gpu",
    )
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(project), str(base / "code.git")], check=True
    )
    git(project, "remote", "add", "origin", str(base / "code.git"))

    deploy = gruflow(project, env, command="deploy", timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    worker_log = (base / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "gruflow"), "worker", "--pool", "gpu"],
        cwd=base,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        first = gruflow(project, env, command="retrain")
        assert first.returncode == 0, (
            first.stdout[-3000:] + first.stderr[-3000:] + (base / "worker.log").read_text()[-3000:]
        )
        assert "placed on work pool gpu" in first.stdout + first.stderr
        assert "registered model version 1" in first.stdout
        start = time.perf_counter()
        second = gruflow(project, env, command="retrain", timeout=300)
        seconds = time.perf_counter() - start
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "retrain skipped" in second.stdout
        print(f"skipped retrain with a running server: {seconds:.1f} s")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    mv = client.get_model_version("gruflow-lm", "1")
    assert mv.tags.get("gate.promoted") == "False"  # as in test_pipeline_e2e: above its bigram
    assert Path(project / "artifacts/model.keras").is_file()
    # the placed train stage has its nested run under the pipeline's parent run, as a local
    # stage does: the worker's stage command logged its epochs live, the parent the rest
    exp = client.get_experiment_by_name("gruflow").experiment_id
    [parent] = client.search_runs([exp], "tags.retrain = 'trained'")
    children = {
        r.info.run_name: r
        for r in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    assert {"embed", "train", "evaluate"} <= set(children)
    train = children["train"]
    assert train.data.tags["placement.pool"] == "gpu"
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_loss")] == [0, 1]
    assert train.data.params["train.epochs"] == "2"
    assert "placement.pool" not in children["evaluate"].data.tags  # evaluate ran locally
    # the worker measured the placed stage; the parent recorded it with the local ones
    costs = json.loads((project / "reports/resources.json").read_text())["stages"]
    assert costs["train"]["cpu_s"] > 0 and costs["train"]["peak_rss_mb"] > 100
    assert parent.data.metrics["resources.train.cpu_s"] == costs["train"]["cpu_s"]
