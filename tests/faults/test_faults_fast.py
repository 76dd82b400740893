"""Fault handling without a pipeline run: redaction, the one error line, the project lock,
paths outside the project, the log files (rollback in a DVC repository: test_rollback_dvc.py)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.faults.kit import digests, error_lines, fault_env, gruflow
from tests.test_pipeline_e2e import BIN, ROOT, tiny_project

SECRET = "s3cr3t-P4ss"


# --- redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"http://user:{SECRET}@host:5000/api", "http://user:***@host:5000/api"),
        (
            f"in https://u:{SECRET}@h.example.com (browse)",
            "in https://u:***@h.example.com (browse)",
        ),
        (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        (f"ssh://git:p@ss:{SECRET}@host/x", "ssh://git:***@host/x"),  # '@' and ':' in a password
        (
            "s3://bucket/x sqlite:////a/b.db ssh://git@host/x http://host/a@b",
            "s3://bucket/x sqlite:////a/b.db ssh://git@host/x http://host/a@b",
        ),  # nothing to hide
    ],
)
def test_redact_hides_passwords_only(text, expected):
    from flows.secrets import redact

    assert redact(text) == expected


def test_redact_filter_cleans_message_args_and_traceback():
    from flows.secrets import RedactFilter

    try:
        raise ConnectionError(f"API request to http://u:{SECRET}@h/api failed")
    except ConnectionError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "store %s", (f"http://u:{SECRET}@h",), sys.exc_info()
        )
    assert RedactFilter().filter(record)
    text = logging.Formatter().format(record)
    assert SECRET not in text and "http://u:***@h" in text and "ConnectionError" in text


# --- one error line, exit codes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny project, committed, never run (enough for errors raised before any stage)."""
    return tiny_project(tmp_path_factory.mktemp("fast"))


def test_explain_maps_exceptions_to_exit_codes():
    from components.errors import GruflowError
    from flows.entry import OneLineError, explain

    assert explain(GruflowError("bad source")) == (2, "bad source")
    assert explain(OneLineError("push failed"))[0] == 1
    code, line = explain(
        RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")
    )
    assert code == 1 and "prefect server start" in line and "PREFECT_API_URL" in line
    code, line = explain(KeyError("x\nmore"))
    assert code == 1 and line.startswith("KeyError:") and "\n" not in line


@pytest.mark.parametrize(
    "message, shown",
    [
        ("Stopping temporary server on http://127.0.0.1:8411", False),  # at exit, after the error
        ("Finished in state Failed('stage ingest failed')", False),
        ("Finished in state Completed()", False),  # quiet: the CLI's summary says it
        ("dvc push: 40 file(s) uploaded to /remote", False),  # the summary says "pushed 40"
        ("Starting temporary server on http://127.0.0.1:8411", False),  # gone at exit
        ("View at http://127.0.0.1:8411/runs/flow-run/x", False),
        ("stage ingest: up to date, skipped", True),
        ("stage ingest: starting", False),  # quiet by default: DVC's "Running stage" says it
        ("stage ingest: done", False),
    ],
)
def test_console_filter_keeps_the_error_line_last(message, shown, monkeypatch):
    from flows.entry import ConsoleFilter

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # a temporary server
    monkeypatch.delenv("GRUFLOW_VERBOSE", raising=False)

    record = logging.LogRecord("prefect", logging.INFO, __file__, 1, message, None, None)
    assert ConsoleFilter().filter(record) is shown


def test_console_filter_shows_routine_lines_when_verbose(monkeypatch):
    from flows.entry import ConsoleFilter, DvcConsoleFilter

    task = logging.LogRecord(
        "prefect.task_runs", logging.INFO, __file__, 1, "Finished in state Completed()", None, None
    )
    task.task_run_id = "abc"
    dvc_echo = logging.LogRecord(
        "dvc.stage.run", logging.INFO, __file__, 1, "> %s", ("python -m components.clean",), None
    )
    assert not ConsoleFilter().filter(task) and not DvcConsoleFilter().filter(dvc_echo)
    page = logging.LogRecord(
        "prefect.flow_runs", logging.INFO, __file__, 1, "View at http://srv/runs/x", None, None
    )
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert not ConsoleFilter().filter(page)
    monkeypatch.setenv("PREFECT_API_URL", "http://srv/api")  # a real server: its page stays
    assert ConsoleFilter().filter(page)
    monkeypatch.setenv("GRUFLOW_VERBOSE", "1")
    assert ConsoleFilter().filter(task)


@pytest.mark.parametrize("raw", ["../outside/raw", "/elsewhere/raw"])
def test_param_path_outside_project_is_one_line_exit_2(project, tmp_path, raw):
    """`../outside/raw`: the field's validator; `/elsewhere/raw` (absolute paths are allowed
    below the project): the check against the project root."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["paths"]["raw"] = raw
    bad = tmp_path / "project"
    subprocess.run(["cp", "-a", str(project), str(bad)], check=True)
    (bad / "params.yaml").write_text(yaml.safe_dump(params))
    out = gruflow(bad, fault_env(tmp_path))
    assert out.returncode == 2, out.stderr
    assert error_lines(out.stderr) == [line for line in out.stderr.splitlines() if line]
    assert "'paths.raw': must be a path inside the project" in out.stderr
    assert "Traceback" not in out.stderr


def test_param_path_absolute_inside_the_project_is_accepted(project, tmp_path):
    from components.params import load_params

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["paths"]["raw"] = str(tmp_path / "data" / "raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "params.yaml").paths.raw == str(tmp_path / "data" / "raw")


def test_unreachable_tracking_store_fails_fast_in_one_line(project, tmp_path):
    """Nothing listens on port 9 of loopback: one line before Prefect or any stage starts
    (MLflow's own client would retry with back-off for minutes)."""
    env = fault_env(tmp_path, MLFLOW_TRACKING_URI=f"http://user:{SECRET}@127.0.0.1:9")
    began = time.monotonic()
    out = gruflow(project, env)
    seconds = time.monotonic() - began
    print(f"unreachable tracking store: exit {out.returncode} after {seconds:.1f} s")
    assert out.returncode == 2
    lines = error_lines(out.stderr)
    assert (
        len(lines) == 1 and "tracking store http://user:***@127.0.0.1:9 is unreachable" in lines[0]
    )
    assert "Traceback" not in out.stderr and SECRET not in out.stderr + out.stdout
    log = Path(lines[0].rsplit("(log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and SECRET not in log.read_text()
    assert "Starting temporary server" not in log.read_text()  # failed before Prefect started


def test_no_wait_names_the_holder_in_one_line(project, tmp_path):
    """Another process holds the project lock: `gruflow run --no-wait` fails at once naming
    its pid; `retrain --no-wait` too."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from flows.project_lock import "
            "project_lock\nwith project_lock(Path(sys.argv[1]), command='holder'):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(project),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in ("run", "retrain"):
            out = gruflow(project, fault_env(tmp_path), "--no-wait", command=command)
            assert out.returncode == 2, out.stderr
            lines = [line for line in out.stderr.splitlines() if line]
            assert lines == error_lines(out.stderr) and len(lines) == 1
            assert f"in use by pid {holder.pid} (holder" in lines[0]
    finally:
        holder.kill()
        holder.wait()


# --- commands that read the registry --------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["history"], ["lineage", "3"], ["generate", "hi"], ["rollback"]]
)
def test_registry_command_without_a_store_is_one_line_and_creates_nothing(
    project, tmp_path, command
):
    """Before any run there is no mlflow.db: a look-up fails in one line (exit 2) instead of
    creating the store and its tables in the project (and printing MLflow's INFO lines)."""
    fresh = tmp_path / "project"
    subprocess.run(["cp", "-a", str(project), str(fresh)], check=True)

    def files() -> dict[str, str]:  # .gruflow/: the lock and the command's log file
        return {k: v for k, v in digests(fresh, ".").items() if not k.startswith(".gruflow/")}

    before = files()
    out = gruflow(fresh, fault_env(tmp_path), *command[1:], command=command[0])
    assert out.returncode == 2, out.stderr
    assert [line for line in out.stderr.splitlines() if line] == error_lines(out.stderr)
    assert len(error_lines(out.stderr)) == 1 and "no MLflow store yet" in out.stderr
    assert files() == before and not (fresh / "mlflow.db").exists()


def test_generate_without_a_champion_is_one_line(project, tmp_path):
    """An empty registry: one line, no MLflow UserWarning about predict()'s type hints."""
    from mlflow.tracking import MlflowClient

    fresh = tmp_path / "project"
    subprocess.run(["cp", "-a", str(project), str(fresh)], check=True)
    MlflowClient(f"sqlite:///{fresh / 'mlflow.db'}").search_experiments()  # creates the tables
    out = gruflow(fresh, fault_env(tmp_path), "hi", command="generate")
    assert out.returncode == 2, out.stderr
    assert [line for line in out.stderr.splitlines() if line] == error_lines(out.stderr)
    assert len(error_lines(out.stderr)) == 1 and "cannot load model" in out.stderr


# --- the log file, the project folder, Prefect's start-up wait ---------------------------------


def _failing(args):
    from components.errors import GruflowError

    raise GruflowError("bad source")


def test_logs_keep_exactly_the_last_50(tmp_path):
    """README: the last 50 logs are kept — the new one included (pruning happens before it
    is created, so it keeps 49 old ones)."""
    from flows import entry

    logs = tmp_path / ".gruflow" / "logs"
    logs.mkdir(parents=True)
    old = [logs / f"20200101T0000{i:02d}-1.log" for i in range(60)]
    for f in old:
        f.write_text("old\n")
    code = entry.run(_failing, argparse.Namespace(command="history"), tmp_path)
    kept = sorted(logs.glob("*.log"))
    assert code == 2 and len(kept) == entry.KEEP_LOGS == 50
    assert kept[:-1] == old[-49:] and "GruflowError: bad source" in kept[-1].read_text()


def test_log_folder_that_cannot_be_made_falls_back_to_temp(project, tmp_path):
    """`.gruflow` is a file (or the project read-only): the log goes to the temp folder and the
    one line names it; no traceback on the terminal."""
    fresh = tmp_path / "project"
    fresh.mkdir()
    (fresh / "params.yaml").write_text((project / "params.yaml").read_text())
    (fresh / ".gruflow").write_text("")
    temp = tmp_path / "temp"
    temp.mkdir()
    out = gruflow(fresh, fault_env(tmp_path, TMPDIR=str(temp)), command="history")
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line]
    assert len(lines) == 1 and lines == error_lines(out.stderr), out.stderr
    log = Path(lines[0].rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.parent == temp / "gruflow-logs" and "Traceback" in log.read_text()


def test_traceback_goes_to_temp_when_the_log_cannot_be_written(tmp_path, monkeypatch):
    """The project's log folder became unwritable after the command started."""
    from flows import entry

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "blocked").write_text("")  # a file where the log folder should be
    try:
        raise ValueError("boom")
    except ValueError as exc:
        written = entry._write_traceback(tmp_path / "blocked" / "logs" / "x.log", exc)
    assert written == tmp_path / "temp" / "gruflow-logs" / "x.log"
    assert "ValueError: boom" in written.read_text()


def test_missing_project_folder_is_one_line_and_creates_nothing(tmp_path):
    missing = tmp_path / "nowhere"
    out = subprocess.run(
        [str(BIN / "gruflow"), "history", "--project", str(missing)],
        cwd=tmp_path,
        env=fault_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr == (
        f"gruflow: error: no project at {missing} — give --project the folder that holds "
        "params.yaml\n"
    )
    assert not missing.exists()


def test_prefect_startup_wait_is_180_s_unless_the_user_set_one(tmp_path, monkeypatch):
    """Prefect's temporary server gets 180 s (its default 20 s fails on a busy 2-core
    machine); a value the user exported is kept. Set before the command (and Prefect) runs."""
    from flows import entry

    seen = []

    def command(args):
        seen.append(os.environ.get(entry.STARTUP_ENV))
        return 0

    monkeypatch.delenv(entry.STARTUP_ENV, raising=False)
    assert entry.run(command, argparse.Namespace(command="run"), tmp_path) == 0
    assert entry.STARTUP_ENV not in os.environ  # restored after the command
    monkeypatch.setenv(entry.STARTUP_ENV, "400")
    assert entry.run(command, argparse.Namespace(command="run"), tmp_path) == 0
    assert seen == ["180", "400"]
