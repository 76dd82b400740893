"""A retrain runs ingest and clean before the pipeline flow, whose own rollback covers only its
stages: the retrain's outer `keep_outputs(restore_if=stages_failed)` restores the state before
the retrain when anything fails before the stages all succeeded, and keeps the outputs when
the failure came after them (registration, finetune: `after_stages`), even when an inner
rollback (finetune's own stage) ran there. Also: a second signal cannot cut a restore short,
and the CLI's lines say what the rollback did (notes along the exception chain)."""

from __future__ import annotations

import os
import signal

import pytest
from dvc.exceptions import ReproductionError

from tests.faults.kit import digests
from tests.faults.test_rollback_dvc import _dvc_project

FILES = ("out1.txt", "m1.json", "out2.txt", "dvc.lock")


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVC's run cache resolves paths against the working dir
    _dvc_project(tmp_path)
    return tmp_path


def test_outer_block_restores_a_failure_before_the_stages_succeeded(project):
    from flows.rollback import keep_outputs, stages_failed
    from flows.stages import reproduce

    before = digests(project, *FILES)
    (project / "input.txt").write_text("fail-second")
    with pytest.raises(ReproductionError), keep_outputs(project, restore_if=stages_failed):
        assert reproduce(project, "first")  # outside the inner block, like a retrain's ingest
        with keep_outputs(project):  # the pipeline's own rollback
            reproduce(project, "second")
    assert digests(project, *FILES) == before


def test_outer_block_restores_a_failure_no_inner_block_saw(project):
    """E.g. MLflow down as the pipeline flow starts, after the retrain's ingest ran."""
    from flows.rollback import keep_outputs, stages_failed
    from flows.stages import reproduce

    before = digests(project, *FILES)
    (project / "input.txt").write_text("new text")
    with pytest.raises(ConnectionError), keep_outputs(project, restore_if=stages_failed):
        assert reproduce(project, "first")
        raise ConnectionError("tracking server gone")
    assert digests(project, *FILES) == before


def test_outer_block_keeps_outputs_of_a_failure_after_the_stages(project):
    """Registration fails, or finetune's stage fails after the LM's stages succeeded (its own
    rollback runs inside `after_stages`): the LM's outputs stay."""
    from flows.rollback import after_stages, keep_outputs, stages_failed
    from flows.stages import reproduce

    before = digests(project, *FILES)
    (project / "input.txt").write_text("new text")
    with pytest.raises(RuntimeError), keep_outputs(project, restore_if=stages_failed):
        with keep_outputs(project):
            assert reproduce(project, "first")
        with after_stages(), keep_outputs(project, ["second"]):
            raise RuntimeError("finetune failed")
    assert digests(project, *FILES) != before
    assert (project / "out1.txt").read_text() == "NEW TEXT"


def test_a_second_sigterm_does_not_cut_the_restore_short(project, monkeypatch):
    from flows import rollback
    from flows.rollback import keep_outputs
    from flows.stages import reproduce

    before = digests(project, *FILES)
    real = rollback._restore
    steps = []

    def restore_with_a_second_signal(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # `kill` twice, `docker stop`
        steps.append("signalled")
        real(*args)
        steps.append("restored")

    def raise_on_sigterm(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
    monkeypatch.setattr(rollback, "_restore", restore_with_a_second_signal)
    (project / "input.txt").write_text("fail-second")
    try:
        with pytest.raises(ReproductionError) as info, keep_outputs(project):
            assert reproduce(project, "first")
            reproduce(project, "second")
    finally:
        signal.signal(signal.SIGTERM, previous)
    # the stage's own rollback and the run's: each restore finished despite its signal
    assert steps and steps == ["signalled", "restored"] * (len(steps) // 2)
    assert digests(project, *FILES) == before
    assert rollback.RESTORED in info.value.__notes__


def test_cli_lines_follow_the_notes_along_the_exception_chain():
    from components.errors import GruflowError
    from flows import interrupt
    from flows.entry import explain, interrupted_line
    from flows.rollback import AFTER_STAGES, KEPT, NOT_RESTORED, RESTORED

    failed = GruflowError(f"stage clean failed: bad{KEPT}")
    assert explain(failed) == (2, f"stage clean failed: bad{KEPT}")
    failed.add_note(NOT_RESTORED)
    code, line = explain(failed)
    assert code == 2 and KEPT not in line and "could not be restored" in line

    def chained(note: str | None) -> BaseException:
        """Prefect re-raises a SIGTERM as a new exception while handling the first."""
        first = KeyboardInterrupt()
        if note:
            first.add_note(note)
        second = interrupt.Interrupted(signal.SIGTERM)
        second.__context__ = first
        return second

    assert "previous outputs restored" in interrupted_line(chained(RESTORED))
    assert "could not be restored" in interrupted_line(chained(NOT_RESTORED))
    assert "outputs are kept" in interrupted_line(chained(AFTER_STAGES))
    assert "no outputs were rolled back" in interrupted_line(chained(None))
    finetune = chained(RESTORED)  # finetune's own rollback, then after_stages
    finetune.__context__.add_note(AFTER_STAGES)
    assert "outputs are kept" in interrupted_line(finetune)


def test_redacted_errors_keep_the_notes_and_the_user_error_class():
    from components.errors import GruflowError
    from flows.entry import explain
    from flows.rollback import RESTORED, has_note
    from flows.secrets import redacted_errors

    @redacted_errors
    def failing():
        exc = GruflowError("cannot reach http://user:S3cret@host/api")
        exc.add_note(RESTORED)
        raise exc

    with pytest.raises(GruflowError) as info:
        failing()
    assert RESTORED in info.value.__notes__ and has_note(info.value, RESTORED)
    code, line = explain(info.value)
    assert code == 2 and "S3cret" not in line and "user:***@host" in line


@pytest.mark.parametrize("fails", ["stage", "registration", "end_run"])
def test_pipeline_marks_only_failures_after_its_stages(fails, tmp_path, monkeypatch):
    """flows.pipeline._run: a failing stage carries no AFTER_STAGES note (a retrain around it
    restores); registration, or MLflow ending the parent run, after the stages does."""
    import contextlib

    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    from flows import pipeline
    from flows.rollback import stages_failed

    real_end_run = fluent.end_run

    monkeypatch.setattr(utils, "_tracking_uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(pipeline, "keep_outputs", lambda root: contextlib.nullcontext())

    def step(root, params, stage, force):
        if fails == "stage" and stage == "tokenize":
            raise RuntimeError("stage tokenize failed")
        return False, {}

    def register(*args):
        if fails == "registration":
            raise RuntimeError("registry down")
        return "1", "kept"

    monkeypatch.setattr(pipeline, "step", step)
    monkeypatch.setattr(pipeline, "register_and_gate", register)
    monkeypatch.setattr(pipeline.classifier, "finetune_and_register", lambda *a: (None, False))
    monkeypatch.setattr(pipeline.tracking, "lineage_tags", lambda *a: {})
    if fails == "end_run":

        def end_run(*args, **kwargs):
            raise OSError("tracking store locked")

        monkeypatch.setattr(fluent, "end_run", end_run)  # what ActiveRun.__exit__ calls
    from components.params import load_params
    from tests.test_pipeline_e2e import ROOT

    params = load_params(ROOT / "params.yaml")
    with pytest.raises((RuntimeError, OSError)) as info:
        pipeline._run(tmp_path, params, False, pipeline.PipelineResult(), [])
    if mlflow.active_run():  # end_run was patched: no run left active for later tests
        real_end_run()
    assert stages_failed(info.value) == (fails == "stage")


def test_a_restore_that_raises_a_base_exception_is_noted(project, monkeypatch):
    from flows import rollback
    from flows.rollback import NOT_RESTORED, keep_outputs
    from flows.stages import reproduce

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rollback, "_restore", interrupted)
    (project / "input.txt").write_text("fail-second")
    with pytest.raises(ReproductionError) as info, keep_outputs(project):
        reproduce(project, "first")
        raise ReproductionError("second")
    assert NOT_RESTORED in info.value.__notes__
