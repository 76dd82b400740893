"""Ctrl-C and SIGTERM during `gruflow run`/`retrain`: stop, restore, end in one line.

Usage: `with interrupt.handled(): ...` (flows.entry.run), `with interrupt.own_server(): ...`
around a flow call (flows.cli, flows.cli_ops). The first SIGINT or SIGTERM raises
`Interrupted` — a KeyboardInterrupt, so Prefect marks the task and flow runs Crashed and
re-raises it, `flows.stages.reproduce` stops the stage command and `flows.rollback` puts the
previous outputs back; later signals are ignored until that is done. The pipeline then ends its
MLflow runs as KILLED (`end_killed`) and the CLI prints one line and exits 128 + the signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (`signum`); exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: KeyboardInterrupt) -> int:
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT/SIGTERM raise Interrupted once; the rollback after it must not be cut short, so
    later signals are ignored until the block ends. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, _frame) -> None:
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _die_with_parent() -> None:
    """In the server's child process: SIGTERM it when gruflow dies (even by SIGKILL), since it
    is in its own session and a kill of gruflow's process group does not reach it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux; elsewhere a harmless no-op call)


def _server_class():
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class OwnSessionServer(SubprocessASGIServer):
        """Prefect's temporary server, started in its own session: Ctrl-C in the terminal
        reaches the whole foreground process group, and a server that stopped on it would make
        the flow's last API calls (Crashed states) wait on a dead server. gruflow stops it."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect

            # the command and environment of SubprocessASGIServer._run_uvicorn_command
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    str(prefect.__module_path__.parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env={
                    **os.environ,
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                },
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    return OwnSessionServer


@contextlib.contextmanager
def own_server() -> Iterator[None]:
    """Prefect's temporary server for the block, unless PREFECT_API_URL names a server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = _server_class()(port=None)
    try:
        server.start()  # waits up to PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:  # the run's last log records reach the server before it stops (else
                # "--- Error logging to API --- All connection attempts failed" at exit)
                _drain_api_logs()
    finally:
        server.stop()


def _drain_api_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=5)
    except Exception as exc:  # only logs: never fail or hang a finished run for them
        logging.getLogger(__name__).debug("could not flush Prefect's API logs: %s", exc)


def end_killed(run_id: str) -> list[str]:
    """End MLflow run `run_id` and every run nested below it that is not FINISHED as KILLED
    (the `with start_run` blocks the interruption left ended them FAILED; a stage command's
    live runs were left RUNNING)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    ended, todo = [], [run_id]
    while todo:
        current = todo.pop()
        if client.get_run(current).info.status != "FINISHED":
            client.set_terminated(current, status="KILLED")
            ended.append(current)
        todo += [
            r.info.run_id
            for r in client.search_runs(
                [experiment], f"tags.mlflow.parentRunId = '{current}'", max_results=1000
            )
        ]
    return ended
