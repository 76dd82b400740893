"""A retrain runs ingest and the clean stage before its pipeline (to measure drift): when a
stage of the pipeline then fails (and the pipeline's own rollback restored its stages), the
project is put back as it was before the retrain: ingest's and clean's outputs, their dvc.lock
entries and cost entries (real Prefect temporary server, DVC repo and MLflow store; the
pipeline replaced by a stage failure)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.faults.kit import digests
from tests.test_pipeline_e2e import ROOT, isolated_env, tiny_project
from tests.test_retrain import copy_project

pytestmark = pytest.mark.slow

FAIL_AFTER_CLEAN = """
import sys
import flows.pipeline

def broken(**kwargs):
    print("pipeline called with", sorted(kwargs.items()))
    raise RuntimeError("a later stage failed")  # before the stages all succeeded

flows.pipeline.pipeline = broken  # flows.retrain imports it when it trains
from flows.retrain import retrain

try:
    retrain(project=sys.argv[1])
except RuntimeError as exc:
    print("retrain failed:", exc)
"""


def test_a_failed_pipeline_restores_what_the_retrains_ingest_and_clean_wrote(tmp_path):
    """Under `always` (every stage forced): the pipeline is told that ingest and clean already
    ran, so it does not force them a second time."""
    project = tiny_project(tmp_path, copy_project, placement={})
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["retrain"]["policy"] = "always"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    before = digests(project, "data", "reports", "dvc.lock")
    out = subprocess.run(
        [sys.executable, "-c", FAIL_AFTER_CLEAN, str(project)],
        cwd=tmp_path,
        env=isolated_env(tmp_path, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert "retrain failed: a later stage failed" in out.stdout, (
        out.stdout[-3000:] + out.stderr[-3000:]
    )
    called = "pipeline called with [('done', ['ingest', 'clean']), ('force', True), ('project',"
    assert called in out.stdout + out.stderr, out.stderr[-3000:]  # print: a Prefect log line
    # the drift check ran clean (drift.json says why nothing was measured) ...
    drift = json.loads((project / "reports" / "drift.json").read_text())
    assert "has no champion yet" in drift["unavailable"]
    # ... and the failure took ingest's and clean's work back: the project is as before
    after = digests(project, "data", "reports", "dvc.lock")
    for report in ("reports/drift.json", "reports/drift.svg"):  # the retrain's record, no out
        after.pop(report, None)
    assert after == before
    assert not (project / "data" / "clean").exists()
