"""Run one DVC stage of the project and report whether it executed (DVC decides)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from components.errors import GruflowError

STAGES = ("ingest", "clean", "tokenize", "embed", "tune", "train", "evaluate")
TIMEOUT_PARAM = "orchestration.stage_timeout"


class StageTimeout(GruflowError, TimeoutError):
    """A stage ran past orchestration.stage_timeout (a TimeoutError, so Prefect marks the task
    run TimedOut)."""


def stage_timeout(stage: str, seconds: float) -> StageTimeout:
    return StageTimeout(f"stage {stage} did not finish within {TIMEOUT_PARAM} ({seconds:g} s) "
                        f"and was stopped — raise {TIMEOUT_PARAM} in params.yaml if it needs "
                        "longer")


def stage_env() -> None:
    """Make `python` in dvc.yaml commands resolve to this interpreter's environment."""
    logging.getLogger("dvc").propagate = False  # DVC prints its own lines; no echo via Prefect
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


def target(root: Path, stage: str) -> str:
    """The stage as a DVC target that does not depend on the working directory (DVC resolves
    a bare stage name against the current folder's dvc.yaml)."""
    return f"{root / 'dvc.yaml'}:{stage}"


def is_changed(root: Path, stage: str) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.status(targets=[target(root, stage)]))


def _descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _stop_new_processes(before: set[int]) -> None:
    """Terminate (then kill) the processes started since `before`: the stage's command. DVC
    waits on it in this process, so nothing else would stop it on a timeout."""
    import psutil

    procs = []
    for pid in _descendants() - before:
        try:
            procs.append(psutil.Process(pid))
            procs[-1].terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def reproduce(root: Path, stage: str, force: bool = False, timeout: float | None = None) -> bool:
    """`dvc repro --single-item STAGE`; True when the stage's command actually ran. With
    `timeout` (seconds) a watchdog stops the command when it runs longer (it works in any
    thread, unlike Prefect's task timeout, which cannot interrupt a blocking wait there)."""
    from dvc.repo import Repo

    stage_env()
    before = _descendants()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _stop_new_processes(before)

    watchdog = threading.Timer(timeout, expire) if timeout else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    try:
        with Repo(str(root)) as repo:
            ran = repo.reproduce(targets=[target(root, stage)], single_item=True, force=force)
    except BaseException as exc:  # also Prefect's timeout (an alarm) and Ctrl-C
        _stop_new_processes(before)
        if expired.is_set():
            raise stage_timeout(stage, timeout) from exc
        raise
    finally:
        if watchdog:
            watchdog.cancel()
    return bool(ran)
