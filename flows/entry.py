"""The one error path of every `gruflow` command: one line on stderr, the traceback in a file.

Usage: `return entry.run(args.func, args, root)` from `flows.cli.main`. Before any Prefect
import it sets the environment the commands need:
- `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` (180 s unless set): Prefect's temporary
  server needs more than its 20 s default on a busy 2-core machine;
- `PREFECT_LOGGING_SETTINGS_PATH` (flows/logging.yml unless set): Prefect's console shows no
  tracebacks or errors, every record goes to the run's log file, credentials are redacted;
- `GRUFLOW_LOG_FILE`: `.gruflow/logs/<UTC time>-<pid>.log` in the project (stage commands
  append their tracebacks there too), or in `<temp dir>/gruflow-logs/` when the project's
  folder cannot be created (a read-only project, `.gruflow` a file).
Exit codes: 2 for user errors (`GruflowError`: bad params, bad source, lock held with
--no-wait), 1 for everything else, 130 on Ctrl-C (SIGINT), 143 on SIGTERM (flows/interrupt.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from components import verbosity
from components.errors import GruflowError
from flows import interrupt
from flows.rollback import (
    AFTER_STAGES,
    KEPT,
    NOT_RESTORED,
    NOT_RESTORED_HINT,
    RESTORED,
    has_note,
)
from flows.secrets import redact

STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
STARTUP_SECONDS = "180"
LOGGING_ENV = "PREFECT_LOGGING_SETTINGS_PATH"
LOG_FILE_ENV = "GRUFLOW_LOG_FILE"
LOG_DIR = Path(".gruflow") / "logs"
KEEP_LOGS = 50


class OneLineError(RuntimeError):
    """A failure that is not the user's mistake, already worded for the user (exit 1)."""


class RunLogHandler(logging.FileHandler):
    """Appends to the run's log file ($GRUFLOW_LOG_FILE); a no-op sink when it is unset."""

    def __init__(self) -> None:
        path = os.environ.get(LOG_FILE_ENV)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path or os.devnull, delay=True, encoding="utf-8")


class ConsoleFilter(logging.Filter):
    """Keeps tracebacks and error records off the console: they are in the log file, and the
    CLI says what failed in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.exc_info:
            return False
        # Prefect's "Finished in state Failed('...')" repeats the error the CLI prints
        message = record.getMessage()
        if message.startswith("Stopping temporary server"):
            return False  # said at exit, after the error line: the failure must end with it
        if message.startswith("Still processing items"):
            return False  # Prefect's events worker draining its queue at exit: nothing to do
        if not verbosity.is_verbose() and _routine(record, message):
            return False
        return not (message.startswith("Finished in state") and "Completed" not in message)


def _routine(record: logging.LogRecord, message: str) -> bool:
    """Lines a run prints per stage that say nothing DVC's "Running stage" and the stage's own
    summary line do not (kept in the log file; shown with --verbose)."""
    if message == "Finished in state Completed()" or message.startswith(
        "dvc push: "  # the CLI summary says "pushed N file(s)"
    ):
        return True
    if getattr(record, "task_run_id", None) and (
        message.startswith("model card: ")  # the card's path (and `gruflow card N`)
        or REGISTERED.match(message)  # the gate's line: the CLI summary prints it
    ):
        return True
    if not os.environ.get("PREFECT_API_URL") and message.startswith(TEMPORARY_SERVER):
        return True  # the temporary server and its run page are gone when the command ends
    return message.startswith("stage ") and message.endswith((": starting", ": done"))


TEMPORARY_SERVER = ("Starting temporary server", "Beginning flow run", "View at ")


REGISTERED = re.compile(r"\S+: (registered )?model version \d+ ")


class DvcConsoleFilter(logging.Filter):
    """DVC's per-stage bookkeeping lines, repeated for every stage of a run: the command echo
    (`> python -m components.x`, dvc.yaml says it) and "Updating/Generating lock file"."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("> ", "Updating lock file", "Generating lock file"))


def quiet_dvc_console() -> None:
    """DvcConsoleFilter on DVC's console handlers (unless verbose; once)."""
    if verbosity.is_verbose():
        return
    for handler in logging.getLogger("dvc").handlers:
        if not any(isinstance(f, DvcConsoleFilter) for f in handler.filters):
            handler.addFilter(DvcConsoleFilter())


FALLBACK_LOG_DIR = "gruflow-logs"  # under tempfile.gettempdir()


def _can_create(folder: Path) -> bool:
    """`folder` exists as a writable folder or can be made (without making it now)."""
    while not folder.exists():
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def log_file_for(root: Path) -> Path:
    """The command's log file (created when first written: by Prefect's logging or a failure);
    the older logs beyond the last KEEP_LOGS - 1 are deleted, so with it KEEP_LOGS remain."""
    logs = root / LOG_DIR
    if not _can_create(logs):
        logs = Path(tempfile.gettempdir()) / FALLBACK_LOG_DIR
    for old in sorted(logs.glob("*.log"))[: -(KEEP_LOGS - 1)]:  # names sort by time
        old.unlink(missing_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return logs / f"{stamp}-{os.getpid()}.log"


def prepare(root: Path, prefect_logging: bool = True) -> Path:
    """Environment for a command run in project `root` (before Prefect is imported).
    `prefect_logging=False` for commands that hand over to the `prefect` CLI (deploy, worker):
    their processes keep Prefect's own logging."""
    os.environ.setdefault(STARTUP_ENV, STARTUP_SECONDS)
    verbosity.quiet_environment(os.environ)  # before TensorFlow/Prefect load; stages inherit it
    verbosity.quiet_libraries()
    # dvc push after the flow runs as a task outside any flow run: nothing to send to the API
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # even verbose
    if prefect_logging:
        os.environ.setdefault(LOGGING_ENV, str(Path(__file__).with_name("logging.yml")))
    log_file = log_file_for(root)
    os.environ[LOG_FILE_ENV] = str(log_file)
    return log_file


def explain(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line saying what failed and what to do)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, GruflowError | OneLineError):
        line = str(exc)
        if has_note(exc, NOT_RESTORED):  # the stage's message said they were kept
            line = line.replace(KEPT, "") + NOT_RESTORED_HINT
        return (2 if isinstance(exc, GruflowError) else 1), line
    if isinstance(exc, RuntimeError) and "ephemeral Prefect API server" in text:
        return 1, (
            f"Prefect's temporary server did not start within {os.environ.get(STARTUP_ENV)}"
            f" s (busy machine?) — raise {STARTUP_ENV}, or run `prefect server start` "
            "once and export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    if type(exc).__name__ == "LockError" and type(exc).__module__.startswith("dvc"):
        return 1, (
            f"DVC's repository lock is taken ({text}) — another dvc command runs in "
            "this project: wait for it to finish, then run again"
        )
    first = text[:300] + ("…" if len(text) > 300 else "")
    hint = NOT_RESTORED_HINT if has_note(exc, NOT_RESTORED) else ""
    return 1, f"{type(exc).__name__}: {first}{hint}"


INTERRUPTED_CODES = (128 + 2, 128 + 15)  # SIGINT, SIGTERM


def exit_now(code: int) -> None:
    """End the process after an interruption without waiting for other threads: a flow run
    cut short leaves non-daemon worker threads (Prefect's, MLflow's) that the interpreter would
    wait for forever. The outputs are restored and the Prefect server stopped by then."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """What an interruption left: the stage stopped and (unless the rollback itself failed,
    see flows.rollback) the outputs as they were before the run."""
    how = exc.args[0] if isinstance(exc, interrupt.Interrupted) else "SIGINT"
    if has_note(exc, NOT_RESTORED):
        return (
            f"interrupted ({how}): stopped, but the previous outputs could not be restored"
            " — run `dvc checkout`"
        )
    if has_note(exc, AFTER_STAGES):  # before RESTORED: finetune's own rollback adds that
        return f"interrupted ({how}): stopped after the stages finished; their outputs are kept"
    if has_note(exc, RESTORED):
        return f"interrupted ({how}): stopped, previous outputs restored"
    return f"interrupted ({how}): stopped; no outputs were rolled back"


def _write_traceback(log_file: Path, exc: BaseException) -> Path:
    """Append the traceback to `log_file`, or (when that cannot be written: disk full, the
    folder gone read-only meanwhile) to a file in the temp folder; the file written."""
    text = f"--- gruflow {' '.join(sys.argv[1:])} failed:\n" + redact(
        "".join(traceback.format_exception(exc))
    )
    fallback = Path(tempfile.gettempdir()) / FALLBACK_LOG_DIR / log_file.name
    for path in (log_file, fallback):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return Path(os.devnull)  # nowhere to write: the one line still says what failed


def run(func: Callable, args, root: Path) -> int:
    """Run a command; any failure becomes one line on stderr (traceback in the log file)."""
    saved = {
        k: os.environ.get(k)
        for k in (
            STARTUP_ENV,
            LOGGING_ENV,
            LOG_FILE_ENV,
            verbosity.VERBOSE_ENV,
            *verbosity.QUIET_ENV,
            *verbosity.OFFLINE_ENV,
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW",
        )
    }
    if not root.is_dir():  # before anything is created there (the log folder)
        print(
            f"gruflow: error: no project at {root} — give --project the folder that holds "
            "params.yaml",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "verbose", False):
        os.environ[verbosity.VERBOSE_ENV] = "1"  # stage commands inherit it
    log_file = prepare(root, getattr(args, "command", "") not in ("deploy", "worker"))
    try:
        with interrupt.handled():
            return func(args)
    except KeyboardInterrupt as exc:
        written = _write_traceback(log_file, exc)
        print(f"gruflow: {interrupted_line(exc)} (log: {written})", file=sys.stderr)
        return interrupt.exit_code(exc)
    except Exception as exc:
        written = _write_traceback(log_file, exc)
        code, message = explain(exc)
        print(f"gruflow: error: {redact(message)} (log: {written})", file=sys.stderr)
        return code
    finally:  # a command called in-process (tests) leaves the environment as it found it
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
