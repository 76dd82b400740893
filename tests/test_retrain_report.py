"""What a retrain publishes and records, without a pipeline run: the `gruflow-retrain` artifact
text (flows/retrain_report.py: decision, drift section, what the run or the skip cost, what a
skip saved), the costs of the stages that ran before the retrain's MLflow run existed (real
sqlite MLflow store), and a drift measurement that fails without failing the retrain."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from components import drift
from flows import retrain_drift, retrain_report

ROOT = Path(__file__).resolve().parents[1]


def _entry(wall: float, cpu: float, rss: float) -> dict:
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "gpu_s": None, "gpu_peak_mb": None}


STAGES = {
    "ingest": _entry(1.5, 0.5, 40),
    "clean": _entry(2.0, 1.25, 60),
    "tokenize": _entry(3.0, 2.0, 80),
    "train": _entry(40.0, 30.0, 900),
}
DRIFT = {"wall_s": 4.0, "cpu_s": 3.5}


def test_skip_artifact_shows_decision_drift_cost_and_savings():
    cost = retrain_report.resources_markdown(STAGES, ["ingest", "clean"], DRIFT, skipped=True)
    text = retrain_report.skip_markdown(
        "gruflow-lm", "3", "no drift", "abc123", "sqlite:///mlflow.db", ["## Drift ...", cost]
    )
    assert text.startswith("# gruflow retrain: skipped\n\nno drift.")
    assert "| model | gruflow-lm version 3 |" in text and "| MLflow run | abc123 (" in text
    spent, saved = text.split("## What this skip cost", 1)[1].split("## What this skip saved")
    assert text.index("## Drift ...") < text.index("## What this skip cost")
    # what it cost: the forced ingest, the clean stage and the drift scoring, summed
    assert "| ingest | 1.5 | 0.5 | 40 | - | - |" in spent and "| clean |" in spent
    assert "| drift scoring | 4 | 3.5 | - | - | - |" in spent
    assert "| total | 7.5 | 5.25 | 60 | - | - |" in spent
    # what it saved: every other stage's last cost, neither ingest nor clean
    assert "| ingest |" not in saved and "| clean |" not in saved
    assert "| tokenize |" in saved and "| total | 43 | 32 | 900 | - | - |" in saved


def test_trained_artifact_lists_the_whole_retrains_stages_and_their_total():
    head = retrain_report.trained_markdown(
        "gruflow-lm",
        "drift: bpb_ratio 1.8 > 1.2",
        ["ingest", "clean", "tokenize", "train"],
        "run9",
        "sqlite:///mlflow.db",
        {"test_bits_per_byte": 2.5, "objective": "causal", "ok": True},
        "2",
        {"gate.promoted": "True", "gate.reason": "beats champion", "other": "x"},
        4,
    )
    assert "Why: drift: bpb_ratio 1.8 > 1.2." in head
    assert "Stages executed: ingest, clean, tokenize, train" in head
    assert "| test_bits_per_byte | 2.5000 |" in head and "objective" not in head
    assert "## Gate: gruflow-lm version 2" in head and "| gate.promoted | True |" in head
    assert "| other |" not in head and "4 file(s) pushed" in head
    cost = retrain_report.resources_markdown(
        STAGES, ["ingest", "clean", "tokenize", "train"], DRIFT
    )
    assert "## Resources of this run" in cost and "What this skip" not in cost
    assert "| total | 50.5 | 37.25 | 900 | - | - |" in cost  # 4 stages + drift scoring
    none = retrain_report.trained_markdown("m", "r", [], "r", "u", {}, None, {}, 0)
    assert "No new model version" in none and "Stages executed: none" in none


def test_cli_cost_lines():
    line = retrain_report.cost_line(STAGES, ["ingest", "clean"], DRIFT)
    assert line == "cost 7.5 s wall, 5.2 CPU s (ingest, clean, drift scoring)"
    saved = retrain_report.saved_line(STAGES, ["ingest", "clean"])
    assert saved == "saved about 43 s wall, 32 CPU s: the last measured cost of 2 stage(s)"
    assert retrain_report.saved_line(STAGES, list(STAGES)) == "no stage cost recorded yet"
    assert retrain_report.cost_line({}, ["ingest"], None) == "cost: nothing recorded"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def _measure(project: Path, monkeypatch, policy: str, fail: Exception | None):
    from components.params import load_params
    from flows import drift_check, pipeline

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["retrain"]["policy"] = policy
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(drift_check, "non_data_changes", lambda root: [])
    monkeypatch.setattr(pipeline, "step", lambda root, params, stage, force: (True, {}))

    def broken(root, params):
        raise fail

    monkeypatch.setattr(drift_check, "measure", broken)
    return retrain_drift.measure_drift.fn(project, load_params(project / "params.yaml"), "why")


@pytest.mark.parametrize("policy", ["on_change", "on_drift", "always"])
def test_a_failing_drift_measurement_never_fails_the_retrain(project, monkeypatch, caplog, policy):
    """Any error of the measurement (here a RuntimeError, neither LookupError nor GruflowError)
    is recorded as unavailable with a one-line warning, and every policy trains."""
    with caplog.at_level(logging.WARNING):
        drifted = _measure(project, monkeypatch, policy, RuntimeError("disk on fire\nsecond"))
    assert drifted.decision.retrain and drifted.clean_ran
    why = "drift measurement failed: RuntimeError: disk on fire"
    assert drifted.report == {"unavailable": why}
    written = json.loads((project / "reports" / "drift.json").read_text())
    assert written["unavailable"] == why and written["decision"]["retrain"] is True
    assert [r.getMessage() for r in caplog.records] == [f"gruflow retrain: {why}"]
    assert set(drifted.cost) == {"wall_s", "cpu_s"} and drifted.cost["wall_s"] >= 0


def test_an_interrupt_during_the_measurement_still_stops_the_retrain(project, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        _measure(project, monkeypatch, "on_change", KeyboardInterrupt())


def test_costs_of_stages_run_before_the_mlflow_run_are_logged_onto_it(project, monkeypatch):
    """record_costs puts resources.json's ingest/clean entries and the drift scoring's cost on
    the retrain's run (a real sqlite MLflow store); a stage that did not run is not logged."""
    import mlflow

    from flows import resources

    (project / "reports").mkdir()
    report = {"stages": {**STAGES}, "total": resources.total(STAGES)}
    (project / "reports" / "resources.json").write_text(json.dumps(report))
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:  # no active run or experiment: earlier tests may have left theirs set
        client = mlflow.MlflowClient()
        run = client.create_run(client.create_experiment("costs"))
        drifted = retrain_drift.Drifted({}, drift.Decision(False, "no drift", {}), project, True)
        drifted.cost = DRIFT
        stages = retrain_drift.record_costs(project, run.info.run_id, ["ingest", "clean"], drifted)
        metrics = client.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(before)
    assert stages == STAGES
    assert metrics["resources.ingest.cpu_s"] == 0.5 and metrics["resources.clean.wall_s"] == 2.0
    assert metrics["resources.drift.cpu_s"] == 3.5
    assert not any(k.startswith(("resources.train", "resources.tokenize")) for k in metrics)
    assert not any(k.endswith("gpu_s") for k in metrics)  # no GPU: nothing to log
