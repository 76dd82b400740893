"""Helpers of the fault tests: real `gruflow` processes on the tiny e2e project.

The Prefect start-up wait is left to the CLI (no PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
in the environment), so the tests exercise the default a user gets.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.test_pipeline_e2e import BIN, gruflow, isolated_env  # noqa: F401  (re-exported)

STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def fault_env(base: Path, **extra: str) -> dict:
    env = isolated_env(base, **extra)
    if STARTUP_ENV not in extra:
        env.pop(STARTUP_ENV)
    return env


def start(project: Path, env: dict, out: Path, *args: str) -> subprocess.Popen:
    """`gruflow run` in its own session (so a kill reaches the whole process tree)."""
    with (out.with_suffix(".out")).open("w") as o, (out.with_suffix(".err")).open("w") as e:
        return subprocess.Popen(
            [str(BIN / "gruflow"), "run", "--project", str(project), *args],
            cwd=project,
            env=env,
            stdout=o,
            stderr=e,
            start_new_session=True,
        )


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], limit: float = 900) -> float:
    """SIGKILL the process group of `proc` as soon as `ready()`; seconds waited."""
    start_time = time.monotonic()
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() - start_time < limit, "kill point never reached"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.monotonic() - start_time


def digests(project: Path, *rels: str) -> dict[str, str]:
    """sha256 of every file under the given project paths."""
    out = {}
    for rel in rels:
        base = project / rel
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            out[str(f.relative_to(project))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gruflow: error:")]


def dvc_status(project: Path, env: dict) -> str:
    out = subprocess.run(
        [str(BIN / "dvc"), "status"], cwd=project, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def runs_by_status(project: Path, uri: str | None = None) -> dict[str, int]:
    import sqlite3

    db = uri.removeprefix("sqlite:///") if uri else str(project / "mlflow.db")
    with sqlite3.connect(db) as con:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())


def versions(uri: str) -> list[tuple[str, str]]:
    """(version, model_md5 tag or '') of every registered gruflow-lm version."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(
        (str(v.version), v.tags.get("model_md5", ""))
        for v in client.search_model_versions("name = 'gruflow-lm'")
    )


def temp_leftovers(project: Path) -> list[Path]:
    """Dot-named files with a suffix that gruflow or DVC leave beside outputs (`.clean.*`,
    `.model.keras.*` temp copies), other than the project's own committed dotfiles."""
    return [
        p
        for p in project.rglob(".*.*")
        if ".git" not in p.parts
        and ".dvc" not in p.parts
        and ".gruflow" not in p.parts
        and p.name not in (".gitignore", ".dvcignore", ".pre-commit-config.yaml")
    ]
