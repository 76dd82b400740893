"""End to end with `train.objective: masked` and the finetune stage on: the real Prefect flow,
DVC repo and MLflow store on the tiny corpus of tests/test_pipeline_e2e.py, the classifier
fine-tuned on a tiny labelled JSONL from the masked LM's bidirectional encoder."""

from __future__ import annotations

import json

import pytest
import yaml
from test_pipeline_e2e import BIN, isolated_env, tiny_project
from tiny_labelled import rows, write_jsonl

from flows.stages import STAGES


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("masked-e2e")
    project = tiny_project(base)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(objective="masked", epochs=2)
    params["tune"].update(n_trials=0)  # tuning a masked LM: tests/test_tune.py
    labelled = write_jsonl(base / "labelled.jsonl", rows(30))
    params["finetune"].update(
        source=str(labelled),
        epochs=3,
        batch_size=16,
        max_len=16,
        learning_rate=0.01,
        compare_scratch=False,
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    import subprocess

    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "masked"],
        cwd=project,
        check=True,
    )
    env = isolated_env(base)
    # a longer limit than test_pipeline_e2e's: this run trains the classifier too
    out = subprocess.run(
        [str(BIN / "gruflow"), "run", "--project", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"project": project, "out": out, "env": env}


@pytest.mark.slow
def test_masked_pipeline_evaluates_registers_and_finetunes(masked_run):
    project, out = masked_run["project"], masked_run["out"].stdout
    # finetune is on: its cost is in the run's summary line and the parent run's stage list
    assert f"stages executed: {', '.join(STAGES)}, finetune" in out
    costs = json.loads((project / "reports/resources.json").read_text())["stages"]
    cpu = sum(costs[s]["cpu_s"] for s in (*STAGES, "finetune"))
    line = next(x for x in out.splitlines() if "resources:" in x)
    assert f"{cpu:.1f} CPU s" in line and f"over {len(STAGES) + 1} stage(s)" in line, line
    assert "test masked perplexity" in out
    m = json.loads((project / "reports/metrics.json").read_text())
    assert m["objective"] == "masked" and m["masked_tokens"] > 0
    assert m["masked_perplexity"] < m["masked_baseline_perplexity"]
    ft = json.loads((project / "reports/finetune.json").read_text())
    assert set(ft["models"]) >= {"pretrained", "majority", "tfidf_logreg"}
    assert ft["models"]["pretrained"]["macro_f1"] > ft["models"]["majority"]["macro_f1"]

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    lm = client.get_model_version("gruflow-lm", "1")
    assert lm.tags["objective"] == "masked" and lm.tags["gate.promoted"] == "True"
    clf = client.get_model_version("gruflow-classifier", "1")
    assert clf.tags  # registered, with its lineage (tests/test_classifier_registry.py)
    parent = client.get_run(lm.tags["mlflow_run_id"])  # the pipeline's parent run
    assert parent.data.tags["executed_stages"].endswith(",evaluate,finetune")
    assert parent.data.metrics["resources.finetune.cpu_s"] == costs["finetune"]["cpu_s"]


@pytest.mark.slow
def test_classifier_keras_is_byte_stable_across_reruns(masked_run):
    """finetune's classifier.keras is written byte-stable (components/artifacts.py
    stable_keras_file): forcing the stage again gives the same file, so DVC's hash holds."""
    import subprocess

    project = masked_run["project"]
    path = project / "artifacts/classifier/classifier.keras"
    before = path.read_bytes()
    rerun = subprocess.run(
        ["dvc", "repro", "--force", "--single-item", "finetune"],
        cwd=project,
        env=masked_run["env"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert path.read_bytes() == before
