"""Orchestration under faults, in-process against a temporary Prefect server: a local stage that
runs past orchestration.stage_timeout is stopped and named; the register task survives an MLflow
tracking server that is unreachable for its first attempt (a real `mlflow server` on loopback
behind a port that refuses connections until Prefect retries the task)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_uri(monkeypatch):
    """Whatever a test points MLflow at is undone afterwards (env and the fluent client)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    yield lambda uri: monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(previous)


def _params(dest: Path, **orchestration) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["orchestration"].update(orchestration)
    raw["train"]["seq_len"] = 16
    (dest / "params.yaml").write_text(yaml.safe_dump(raw))


# --- stage timeout -------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_local_stage_past_stage_timeout_is_stopped_and_named(tmp_path, prefect_api, mlflow_uri):
    """The pipeline's first stage sleeps far longer than orchestration.stage_timeout (2 s):
    the flow fails with the stage and the param named, and the stage's command is gone."""
    import psutil
    from dvc.repo import Repo

    from flows.pipeline import pipeline
    from flows.stages import StageTimeout

    _params(tmp_path, stage_timeout=2)
    sleeper = "import os, time; open('cmd.pid', 'w').write(str(os.getpid())); time.sleep(600)"
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"ingest": {"cmd": f'python -c "{sleeper}"', "outs": ["corpus.txt"]}}}
        )
    )
    Repo.init(str(tmp_path), no_scm=True).close()
    mlflow_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")

    state = pipeline(project=str(tmp_path), return_state=True)

    assert state.is_failed()
    assert "stage ingest" in state.message and "orchestration.stage_timeout" in state.message
    with pytest.raises(
        StageTimeout,
        match=r"stage ingest did not finish within "
        r"orchestration\.stage_timeout \(2 s\)",
    ):
        state.result()
    pid = int((tmp_path / "cmd.pid").read_text())
    try:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass  # stopped and reaped
    assert not (tmp_path / "corpus.txt").exists()


# --- MLflow outage during the register task --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Outage:
    """127.0.0.1:port in front of a server: while cut, nothing listens there (connection
    refused) and open connections are dropped; restored, each connection is piped through."""

    def __init__(self, target: int):
        self.port, self.target = _free_port(), target
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []

    def reachable(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            return True
        except OSError:
            return False

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        for conn in self.open:
            conn.close()
        self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server (sqlite store, served artifacts) on a free loopback port."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with (base / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{base / 'mlflow.db'}",
                "--artifacts-destination",
                str(base / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=base,
            env={**env, "PATH": f"{BIN}:{env['PATH']}"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield {"port": port, "proc": proc, "base": base}
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a loaded machine: gunicorn's workers stop slowly
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)


def _wait_up(server: dict, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server["proc"].poll() is None, (server["base"] / "server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server['port']}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("mlflow server did not come up")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # requested after mlflow_server: the server boots meanwhile
    """What the register task needs of a trained project: params.yaml, components/, an
    (untrained, 8-unit) Keras model with its tokenizer, and the model's md5 in dvc.lock."""
    from components.lm.model import build_model
    from components.params import load_params
    from components.tokenize import train_tokenizer

    root = tmp_path_factory.mktemp("trained")
    (root / "components").symlink_to(ROOT / "components")
    _params(root)
    params = load_params(root / "params.yaml")
    tok = train_tokenizer(
        iter(["the parser reads the header and returns a list"] * 8),
        params.tokenize.model_copy(update={"vocab_size": 280, "min_frequency": 1}),
    )
    (root / params.paths.tokenizer).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / params.paths.tokenizer))
    cfg = params.model.model_copy(
        update={"units": 8, "embedding_dim": 8, "embedding_init": "random"}
    )
    build_model(cfg, tok.get_vocab_size()).save(root / params.paths.model)
    (root / params.paths.best_params).write_text("{}")  # the tune stage's output: no change
    md5 = hashlib.md5((root / params.paths.model).read_bytes()).hexdigest()
    (root / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {"train": {"outs": [{"path": params.paths.model, "md5": md5}]}},
            }
        )
    )
    return root, params, md5


@pytest.mark.timeout(600)
def test_register_retry_succeeds_after_mlflow_outage(
    mlflow_server, trained, prefect_api, mlflow_uri, monkeypatch
):
    """The parent run exists; then the server becomes unreachable. The register task's first
    attempt fails (MLflow's own HTTP retries are off), Prefect retries it, the server is back
    by then (restored when the task enters Retrying) and the retry registers and gates."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from prefect import flow

    from flows import tracking
    from flows.pipeline import register_and_gate

    root, params, md5 = trained
    outage = Outage(mlflow_server["port"])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    mlflow_uri(f"http://127.0.0.1:{outage.port}")
    attempts: list[tuple[str, bool]] = []

    def on_running(task, task_run, state) -> None:
        if state.name == "Retrying":
            outage.restore()  # the server is back before the retry starts
        attempts.append((state.name, outage.reachable()))

    @flow
    def register_during_outage() -> tuple[str | None, str]:
        tracking.configure(root, params.mlflow.experiment)
        with mlflow.start_run(run_name="pipeline") as parent:
            outage.cut()
            version = register_and_gate.with_options(on_running=[on_running])(
                root, params, parent.info.run_id, {"perplexity": 20.0, "bigram_perplexity": 50.0}
            )
        return version, parent.info.run_id

    _wait_up(mlflow_server)
    outage.restore()
    version, run_id = register_during_outage()

    assert attempts == [("Running", False), ("Retrying", True)]  # one failed try, one retry
    assert version[0] == "1"  # (version, the gate's decision line)
    assert "registered model version 1 as champion" in version[1]
    client = MlflowClient(f"http://127.0.0.1:{mlflow_server['port']}")
    versions = client.search_model_versions(f"name = '{params.registry.model_name}'")
    assert [(str(v.version), v.tags["model_md5"]) for v in versions] == [("1", md5)]
    assert versions[0].tags["mlflow_run_id"] == run_id
    assert versions[0].tags["gate.promoted"] == "True"  # first version, beats the bigram
    assert client.get_run(run_id).info.status == "FINISHED"
