"""Run one DVC stage of the project and report whether it executed (DVC decides)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from components.errors import STAGE_ERROR_ENV, GruflowError
from flows import resources
from flows.interrupt import Interrupted
from flows.rollback import KEPT, keep_outputs

log = logging.getLogger(__name__)

STAGES = ("ingest", "clean", "tokenize", "embed", "tune", "train", "evaluate")
TIMEOUT_PARAM = "orchestration.stage_timeout"


class StageFailed(GruflowError):
    """A stage stopped on a user error (its command exited 2 with a one-line message)."""


class StageCrashed(RuntimeError):
    """A stage's command failed unexpectedly (its traceback is in the log file)."""


class StageTimeout(GruflowError, TimeoutError):
    """A stage ran past orchestration.stage_timeout (a TimeoutError, so Prefect marks the task
    run TimedOut)."""


def stage_timeout(stage: str, seconds: float) -> StageTimeout:
    return StageTimeout(
        f"stage {stage} did not finish within {TIMEOUT_PARAM} ({seconds:g} s) "
        f"and was stopped — raise {TIMEOUT_PARAM} in params.yaml if it needs "
        "longer"
    )


def stage_env() -> None:
    """Make `python` in dvc.yaml commands resolve to this interpreter's environment."""
    logging.getLogger("dvc").propagate = False  # DVC prints its own lines; no echo via Prefect
    from flows.entry import quiet_dvc_console

    quiet_dvc_console()  # no command echo or "Updating lock file" per stage (unless verbose)
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


def all_outs(root: Path) -> list[str]:
    """Every output path dvc.yaml declares (for the temp-file sweep)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [o.def_path for s in repo.index.stages for o in s.outs]


def _stage_error(stage: str, error_file: Path) -> Exception | None:
    """The failed command's own one-line reason (written by components.errors.guarded)."""
    try:
        report = json.loads(error_file.read_text())
    except (OSError, ValueError):
        return None
    # to the log file only (the console filter drops errors; the redact filter cleans it)
    log.error(
        "stage %s: command %s failed:\n%s",
        stage,
        report.get("command", ""),
        report.get("traceback", ""),
    )
    kind = StageFailed if report.get("code") == 2 else StageCrashed
    return kind(f"stage {stage} failed: {report.get('message', '')}{KEPT}")


def _stopped_by_sigint(exc: BaseException) -> bool:
    """The stage command ended on Ctrl-C (exit 130, see components/__init__.py, or killed by
    SIGINT). DVC ignores SIGINT in this process while its command runs, so this is how the
    flow learns of it."""
    while exc is not None:
        if type(exc).__name__ == "StageCmdFailedError":
            return str(exc).endswith((", exited with 130", ", exited with -2"))
        exc = exc.__cause__ or exc.__context__
    return False


def reproduce(root: Path, stage: str, force: bool = False, timeout: float | None = None) -> bool:
    """`dvc repro --single-item STAGE`; True when the stage's command actually ran. With
    `timeout` (seconds) a watchdog stops the command when it runs longer (it works in any
    thread, unlike Prefect's task timeout, which cannot interrupt a blocking wait there).
    A failed stage leaves its outputs exactly as they were (DVC deletes them first)."""
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
    state = root / ".gruflow"
    state.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f"error-{stage}.", dir=state) as tmp,
        keep_outputs(root, [stage]),
    ):
        error_file = Path(tmp) / "error.json"
        os.environ[STAGE_ERROR_ENV] = str(error_file)
        try:
            with Repo(str(root)) as repo, resources.measure(root, stage) as cost:
                ran = repo.reproduce(targets=[target(root, stage)], single_item=True, force=force)
                cost.ran = bool(ran)  # an executed stage's cost goes to reports/resources.json
        except BaseException as exc:  # also Prefect's timeout (an alarm) and Ctrl-C
            _stop_new_processes(before)
            if expired.is_set():
                raise stage_timeout(stage, timeout) from exc
            signalled = (
                isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal"
            )  # Prefect's SIGTERM handler
            if signalled or _stopped_by_sigint(exc):
                from flows.project_lock import sweep_temp

                sweep_temp(root, all_outs(root))  # the command stopped mid-write
                if not signalled:
                    raise Interrupted(signal.SIGINT) from exc
            reason = _stage_error(stage, error_file)
            if reason is not None:
                raise reason from exc
            raise
        finally:
            os.environ.pop(STAGE_ERROR_ENV, None)
            if watchdog:
                watchdog.cancel()
    return bool(ran)
