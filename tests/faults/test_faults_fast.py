"""Fault handling without a pipeline run: redaction, the one error line, the project lock,
rollback of a failed stage or run in a real DVC repository, paths outside the project."""

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
from dvc.exceptions import ReproductionError

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


# --- rollback in a real DVC repository ------------------------------------------------------


def _dvc_project(root: Path) -> None:
    """Two stages: `first` writes a cached file and an uncached metric from input.txt,
    `second` copies it (and fails when input.txt says 'fail-second')."""
    from dvc.repo import Repo

    first = (
        "import json, sys; t = open('input.txt').read(); "
        "sys.exit(2) if t == 'fail-first' else None; "
        "open('out1.txt', 'w').write(t.upper()); "
        "json.dump({'n': len(t)}, open('m1.json', 'w'))"
    )
    second = (
        "import sys; t = open('out1.txt').read(); "
        "sys.exit(2) if t == 'FAIL-SECOND' else open('out2.txt', 'w').write(t * 2)"
    )
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "first": {
                        "cmd": f'python -c "{first}"',
                        "deps": ["input.txt"],
                        "outs": ["out1.txt"],
                        "metrics": [{"m1.json": {"cache": False}}],
                    },
                    "second": {
                        "cmd": f'python -c "{second}"',
                        "deps": ["out1.txt"],
                        "outs": ["out2.txt"],
                    },
                }
            }
        )
    )
    Repo.init(str(root), no_scm=True).close()
    (root / "input.txt").write_text("good")
    with Repo(str(root)) as repo:
        repo.reproduce(targets=[str(root / "dvc.yaml")])


def test_failed_stage_restores_cached_and_uncached_outputs(tmp_path, monkeypatch):
    from flows.stages import StageCrashed, reproduce

    monkeypatch.chdir(tmp_path)  # DVC's run cache resolves paths against the working dir
    _dvc_project(tmp_path)
    before = digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock")
    (tmp_path / "input.txt").write_text("fail-first")
    with pytest.raises(ReproductionError) as info:
        reproduce(tmp_path, "first")
    assert not isinstance(info.value, StageCrashed)  # a plain command: DVC's own error
    assert digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock") == before
    assert not list((tmp_path / ".gruflow").glob("snapshot.*"))


def test_failed_run_rolls_back_the_stages_that_succeeded(tmp_path, monkeypatch):
    """`first` succeeds on new input and rewrites out1/m1/dvc.lock, then `second` fails: the
    whole run's outputs and dvc.lock come back as before (flows.rollback.keep_outputs, as the
    pipeline flow uses it)."""
    from flows.rollback import keep_outputs
    from flows.stages import reproduce

    monkeypatch.chdir(tmp_path)
    _dvc_project(tmp_path)
    before = digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock")
    (tmp_path / "input.txt").write_text("fail-second")
    with pytest.raises(ReproductionError), keep_outputs(tmp_path):
        assert reproduce(tmp_path, "first")  # ran: new out1, m1 and lock entry
        assert (tmp_path / "out1.txt").read_text() == "FAIL-SECOND"
        reproduce(tmp_path, "second")
    assert digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock") == before


def test_rollback_with_a_stage_that_never_ran_is_quiet(tmp_path, monkeypatch, capfd, caplog):
    """A project where a later stage never ran (`dvc repro` of the first stages only): the
    rollback of a failed run brings back what existed and prints nothing about the rest (DVC
    warned twice per missing out of such a stage on the terminal, around the one error line)."""
    from flows.rollback import keep_outputs

    monkeypatch.chdir(tmp_path)
    _dvc_project(tmp_path)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    stages["stages"]["third"] = {
        "cmd": "python -c \"open('out3.txt', 'w').write('x')\"",
        "deps": ["out2.txt"],
        "outs": ["out3.txt"],
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    before = digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock")
    capfd.readouterr()
    with pytest.raises(RuntimeError), keep_outputs(tmp_path):
        (tmp_path / "out1.txt").write_text("half-written")
        raise RuntimeError("a later stage failed")
    assert digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock") == before
    assert not (tmp_path / "out3.txt").exists()
    err = capfd.readouterr().err + caplog.text
    assert "No file hash info" not in err and "won't be created" not in err


def test_sweep_removes_atomic_write_leftovers(tmp_path):
    from flows.project_lock import sweep_temp

    (tmp_path / "data" / ".clean.abc123").mkdir(parents=True)
    (tmp_path / "data" / ".tokens.old").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / ".metrics.json.x1.json").write_text("{}")
    (tmp_path / "reports" / ".gitignore").write_text("keep")
    removed = sweep_temp(tmp_path, ["data/clean", "data/tokens", "reports/metrics.json"])
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".gitignore"]


def test_sweep_removes_the_lock_a_killed_tune_left(tmp_path):
    """Optuna's symlink lock beside tune's journal, as a SIGKILL mid-append leaves it (the
    stage's relative journal path makes it dangle); the journal itself stays."""
    import os

    from flows.project_lock import sweep_temp

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    tune = tmp_path / "artifacts" / "tune"
    tune.mkdir(parents=True)
    (tune / "study.journal").write_text("{}\n")
    os.symlink("artifacts/tune/study.journal", tune / "study.journal.lock")
    (tune / "study.journal.lock1234.rename").symlink_to("artifacts/tune/study.journal")
    assert sweep_temp(tmp_path, []) == [
        tune / "study.journal.lock",
        tune / "study.journal.lock1234.rename",
    ]
    assert sorted(p.name for p in tune.iterdir()) == ["study.journal"]


def test_dvc_lock_conflict_is_one_line_and_touches_nothing(tmp_path, monkeypatch):
    """A plain `dvc` command holds DVC's repository lock: the stage is refused, its outputs
    stay as they are, and the CLI's line says what to do."""
    from dvc.lock import LockError

    from flows.entry import explain
    from flows.stages import reproduce

    monkeypatch.chdir(tmp_path)
    _dvc_project(tmp_path)
    (tmp_path / "input.txt").write_text("changed")
    before = digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dvc.repo import Repo\n"
            "with Repo(sys.argv[1]).lock:\n    print('held', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError) as info:
            reproduce(tmp_path, "first")
    finally:
        holder.kill()
        holder.wait()
    assert digests(tmp_path, "out1.txt", "m1.json", "out2.txt", "dvc.lock") == before
    code, line = explain(info.value)
    assert code == 1 and "another dvc command runs in this project" in line and "\n" not in line


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
