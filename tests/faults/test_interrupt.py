"""Ctrl-C and SIGTERM during a real `gruflow run` (its own session, tiny project): the stage
stops, the outputs and dvc.lock come back byte-identical, the MLflow runs end KILLED, one line,
exit 130/143, no traceback, no hang, no process left. `make run`'s failure is one line too."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.faults.kit import digests, fault_env, runs_by_status, start, temp_leftovers
from tests.test_pipeline_e2e import BIN, ROOT, tiny_project

TUNE = "Running stage 'tune'"  # DVC prints it as it starts the stage (its command echo is
# in the log file only; the study journal outlives an interrupted run, so Optuna's own "new
# study" line is not printed twice); _interrupt then checks a stage command is running
OUTPUTS = (
    "data",
    "reports",
    "artifacts/tokenizer.json",
    "artifacts/model.keras",
    "artifacts/embeddings.npy",
    "artifacts/best_params.json",
    "dvc.lock",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny project whose data stages ran (`dvc repro clean`: outputs in place and in the
    cache, dvc.lock written) — previous outputs for an interrupted run to restore, without the
    cost of training."""
    base = tmp_path_factory.mktemp("interrupt")
    project = tiny_project(base)
    env = fault_env(base)
    out = subprocess.run(
        [str(BIN / "dvc"), "repro", "clean"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {"base": base, "project": project, "env": env}


def _bump(project: Path, section: str, key: str) -> str:
    """Raise an int param by one (its stage and every later one become stale)."""
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params[section][key] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return original


def _interrupt(trained, name: str, marker: str, sig: int, group: bool):
    """Start `gruflow run`, send `sig` (to its process group, as a terminal's Ctrl-C does, or
    to gruflow alone, as `kill` does) once `marker` is in its output; (rc, stderr, survivors)."""
    project, env, base = trained["project"], trained["env"], trained["base"]
    proc = start(project, env, base / name, "--no-push")
    out, err = (base / name).with_suffix(".out"), (base / name).with_suffix(".err")
    began = time.monotonic()
    while marker not in out.read_text() + err.read_text():
        assert proc.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() - began < 900, "marker never printed"
        time.sleep(0.05)
    time.sleep(2)  # into the stage's work
    tree = psutil.Process(proc.pid).children(recursive=True)  # stage command, Prefect server
    assert any("components." in " ".join(p.cmdline()) for p in tree), "no stage running"
    (os.killpg if group else os.kill)(proc.pid, sig)
    rc = proc.wait(timeout=300)  # a hang fails here
    _, alive = psutil.wait_procs(tree, timeout=15)
    try:
        os.killpg(proc.pid, 0)
        group_left = True
    except ProcessLookupError:
        group_left = False
    return rc, err.read_text(), [p.pid for p in alive], group_left


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize(
    "name, bump, marker, sig, group, code",
    [
        # Ctrl-C in the terminal during tune (its trials run in spawned workers)
        # (clean reran first: its new outputs and dvc.lock entry must be rolled back too)
        ("sigint-tune", ("clean", "min_chars"), TUNE, signal.SIGINT, True, 130),
        # `kill PID`: only gruflow gets it and stops the stage command itself
        ("sigterm-tune", ("clean", "min_chars"), TUNE, signal.SIGTERM, False, 143),
    ],
)
def test_interrupted_run_restores_everything(trained, name, bump, marker, sig, group, code):
    project = trained["project"]
    original = _bump(project, *bump)
    try:
        before = digests(project, *OUTPUTS)
        killed_before = (
            runs_by_status(project).get("KILLED", 0) if (project / "mlflow.db").exists() else 0
        )  # the first run creates the store
        rc, stderr, alive, group_left = _interrupt(trained, name, marker, sig, group)
        after = digests(project, *OUTPUTS)
    finally:
        (project / "params.yaml").write_text(original)
    assert rc == code, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("gruflow:")]
    assert len(ours) <= 2 and ours[-1].startswith(
        f"gruflow: interrupted ({signal.Signals(sig).name}): stopped, previous outputs "
        "restored (log: "
    ), ours
    assert after == before and "dvc.lock" in before and "data/clean/train.parquet" in before
    assert not alive and not group_left, "processes left"
    status = runs_by_status(project)
    assert "RUNNING" not in status and status.get("KILLED", 0) > killed_before, status
    assert not temp_leftovers(project), "temp leftovers"


_MAKE_VARS = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}


def test_make_run_failure_is_gruflow_line_then_makes_own(tmp_path):
    """GNU make always adds `make: *** [Makefile:N: run] Error 2` after a failing recipe (no
    option turns it off; see the Makefile): stderr is gruflow's one line, then make's."""
    if not shutil.which("make"):
        pytest.skip("GNU make is not installed")
    project = tiny_project(tmp_path)
    shutil.copy2(ROOT / "Makefile", project / "Makefile")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["no_such_key"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    # a user's shell: CI runs this test under `make test`, whose MAKELEVEL would turn make's
    # prefix into `make[1]:`
    env = {k: v for k, v in fault_env(tmp_path).items() if k not in _MAKE_VARS}
    # the worktree's .venv, already synced: a stamp newer than the copied uv.lock (UV: any
    # existing file), so make builds nothing whatever stamp the .venv itself has
    (project / ".synced").touch()
    out = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "run",
            f"VENV={BIN.parent}",
            f"UV={BIN / 'python'}",
            f"STAMP={project / '.synced'}",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 2
        and lines[0].startswith("gruflow: error: ")
        and "train.no_such_key" in lines[0]
        and re.fullmatch(r"make: \*\*\* \[Makefile:\d+: run\] Error 2", lines[1])
    ), out.stderr


def test_first_signal_raises_later_ones_wait_for_the_block():
    """The first SIGINT/SIGTERM raises Interrupted; one more while the rollback runs is ignored;
    the handlers are put back after."""
    from flows.interrupt import Interrupted, handled

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with handled():
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert info.value.exit_code == 143
        os.kill(os.getpid(), signal.SIGINT)  # the rollback runs here: not cut short
        time.sleep(0.2)
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_line_says_whether_the_outputs_came_back():
    from flows.entry import interrupted_line
    from flows.interrupt import Interrupted, exit_code
    from flows.rollback import NOT_RESTORED, RESTORED

    assert exit_code(KeyboardInterrupt()) == 130 and exit_code(Interrupted(signal.SIGINT)) == 130
    exc = Interrupted(signal.SIGINT)  # no rollback ran: nothing is claimed
    assert interrupted_line(exc) == ("interrupted (SIGINT): stopped; no outputs were rolled back")
    exc.add_note(RESTORED)  # what keep_outputs adds when it put the outputs back
    assert interrupted_line(exc) == "interrupted (SIGINT): stopped, previous outputs restored"
    exc.add_note(NOT_RESTORED)  # what keep_outputs adds when its own restore failed
    assert interrupted_line(exc).endswith("could not be restored — run `dvc checkout`")


@pytest.mark.parametrize("status, interrupted", [(130, True), (-2, True), (1, False), (2, False)])
def test_a_stage_command_ended_by_ctrl_c_is_an_interruption(status, interrupted):
    """DVC ignores SIGINT in the flow's process while a command runs: the command's exit
    status (130 from components/__init__.py, or killed by SIGINT) tells the flow."""
    from dvc.exceptions import ReproductionError
    from dvc.stage.exceptions import StageCmdFailedError

    from flows.stages import _stopped_by_sigint

    try:
        try:
            raise StageCmdFailedError("python -m components.tune", status)
        except StageCmdFailedError as cause:
            raise ReproductionError("failed to reproduce 'tune'") from cause
    except ReproductionError as exc:
        assert _stopped_by_sigint(exc) is interrupted


def test_stage_command_exits_130_quietly_on_ctrl_c(tmp_path):
    """A stage command run by the flow (GRUFLOW_STAGE_ERROR set) ends at once with 130 and
    prints nothing on Ctrl-C, even while still importing."""
    code = (
        "import components, os, signal, time; os.kill(os.getpid(), signal.SIGINT); "
        "time.sleep(30); print('not stopped')"
    )
    env = {
        **os.environ,
        "GRUFLOW_STAGE_ERROR": str(tmp_path / "error.json"),
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [str(BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 130 and out.stdout == "" and out.stderr == ""
