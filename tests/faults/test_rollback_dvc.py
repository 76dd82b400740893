"""Rollback of a failed stage or run in a real DVC repository (two tiny stages), the sweep of
what a killed run left, and DVC's own lock held by another command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.exceptions import ReproductionError

from tests.faults.kit import digests
from tests.test_pipeline_e2e import ROOT

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
