"""A retrain runs ingest and clean before the pipeline flow, whose own rollback covers only its
stages: the retrain's outer `keep_outputs` restores the state before the retrain when an inner
block rolled back (a stage failed), and keeps the outputs when the failure came after the
stages (registration, push: the outputs are good)."""

from __future__ import annotations

import pytest
from dvc.exceptions import ReproductionError

from tests.faults.kit import digests
from tests.faults.test_faults_fast import _dvc_project

FILES = ("out1.txt", "m1.json", "out2.txt", "dvc.lock")


def test_outer_block_restores_when_the_inner_one_rolled_back(tmp_path, monkeypatch):
    from flows.rollback import keep_outputs, rolled_back
    from flows.stages import reproduce

    monkeypatch.chdir(tmp_path)
    _dvc_project(tmp_path)
    before = digests(tmp_path, *FILES)
    (tmp_path / "input.txt").write_text("fail-second")
    with pytest.raises(ReproductionError), keep_outputs(tmp_path, restore_if=rolled_back):
        assert reproduce(tmp_path, "first")  # outside the inner block, like a retrain's ingest
        with keep_outputs(tmp_path):  # the pipeline's own rollback
            reproduce(tmp_path, "second")
    assert digests(tmp_path, *FILES) == before


def test_outer_block_keeps_outputs_of_a_failure_after_the_stages(tmp_path, monkeypatch):
    from flows.rollback import keep_outputs, rolled_back
    from flows.stages import reproduce

    monkeypatch.chdir(tmp_path)
    _dvc_project(tmp_path)
    before = digests(tmp_path, *FILES)
    (tmp_path / "input.txt").write_text("new text")
    with pytest.raises(RuntimeError), keep_outputs(tmp_path, restore_if=rolled_back):
        with keep_outputs(tmp_path):
            assert reproduce(tmp_path, "first") and reproduce(tmp_path, "second")
        raise RuntimeError("registration failed")  # after the stages: nothing rolled back
    after = digests(tmp_path, *FILES)
    assert after != before and (tmp_path / "out1.txt").read_text() == "NEW TEXT"
