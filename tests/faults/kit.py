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

import psutil

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
    """SIGKILL the process group of `proc` as soon as `ready()`; seconds waited. Every process
    of its tree (stage commands, Prefect's temporary server in its own session, which the group
    kill does not reach) must be gone within 60 s: README promises the server dies with
    gruflow even on SIGKILL."""
    start_time = time.monotonic()
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() - start_time < limit, "kill point never reached"
        time.sleep(0.005)
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    seconds = time.monotonic() - start_time
    deadline = time.monotonic() + 60
    while (left := [d for p in tree if (d := _described(p))]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left running 60 s after the SIGKILL: {left}"
    return seconds


def _described(p: psutil.Process) -> str:
    """pid and command line of a live process; '' once it is gone or a zombie (its parent
    died; nothing runs, whether or not PID 1 reaps it)."""
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            return ""
        return f"{p.pid}: {' '.join(p.cmdline())[:200]}"
    except psutil.NoSuchProcess:
        return ""


def stage_command_running(proc: subprocess.Popen, stage: str) -> bool:
    """`python -m components.<stage>` (the DVC stage's command) runs below `proc`."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for p in tree:
        try:
            if f"components.{stage}" in p.cmdline():
                return True
        except psutil.Error:  # ended meanwhile
            continue
    return False


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
