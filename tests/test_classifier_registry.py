"""The classifier as its own registered model: lineage tags, the macro-F1 gate (a better
classifier promoted, a worse one not), its pyfunc over a real `mlflow models serve` on
loopback (label + probabilities, 400 on a bad request) and `gruflow classify`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows import classifier, registry, tracking
from tests import tiny_labelled, tiny_lm

ROOT = Path(__file__).resolve().parents[1]
LM_NAME = "tiny-ft-lm"
NAME = f"{LM_NAME}-classifier"

pytestmark = pytest.mark.slow


def _constant(src: Path, dst: Path) -> None:
    """A copy of the trained classifier whose head always says the first class."""
    import keras
    import numpy as np

    from components.classify import model as _layers  # noqa: F401

    shutil.copytree(src, dst)
    clf = keras.saving.load_model(src / "classifier.keras", safe_mode=True)
    kernel, bias = clf.get_layer("head").get_weights()
    bias = np.full_like(bias, -10.0)
    bias[0] = 10.0
    clf.get_layer("head").set_weights([np.zeros_like(kernel), bias])
    (dst / "classifier.keras").unlink()
    clf.save(dst / "classifier.keras")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    proj = tiny_labelled.project(root, LM_NAME, encoder="scratch")
    p = proj["params"]
    out = subprocess.run(
        [sys.executable, "-m", "components.finetune"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    _constant(Path(p.paths.classifier), root / "constant")
    prev = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        tracking.configure(root, "gruflow")
        # the LM this classifier was fine-tuned from, registered
        tiny_lm.register(
            proj,
            p.model_copy(
                update={"registry": p.registry.model_copy(update={"model_name": LM_NAME})}
            ),
            {},
            "flow-1",
        )
        yield proj
        mlflow.set_tracking_uri(prev)


def _report(p) -> dict:
    return json.loads((Path(p.paths.reports) / "finetune.json").read_text())


def _register(proj, folder: Path) -> tuple[str, dict]:
    p = proj["params"]
    p = p.model_copy(update={"paths": p.paths.model_copy(update={"classifier": str(folder)})})
    report = _report(p)
    with mlflow.start_run():
        version = classifier.register(proj["root"], p, {"model_md5": folder.name}, report)
    decision = classifier.gate(NAME, version, report, folder / "test.parquet", 0.0)
    return version, decision


@pytest.fixture(scope="module")
def versions(project):
    """v1 constant (a human makes it champion), v2 trained (better: promoted), v3 constant
    again (worse than the champion: kept as challenger)."""
    p = project["params"]
    v1, d1 = _register(project, project["root"] / "constant")
    registry.promote(NAME, v1)
    v2, d2 = _register(project, Path(p.paths.classifier))
    v3, d3 = _register(project, project["root"] / "constant")
    return {"v1": (v1, d1), "v2": (v2, d2), "v3": (v3, d3)}


def test_gate_promotes_a_better_classifier_and_keeps_a_worse_one_out(versions):
    (v1, d1), (v2, d2), (v3, d3) = versions["v1"], versions["v2"], versions["v3"]
    assert not d1["promoted"]  # constant = the majority baseline, not above it
    assert d2["promoted"] and d2["champion_before"] == v1
    assert d2["challenger_macro_f1"] > d2["champion_macro_f1"]
    assert not d3["promoted"] and d3["champion_before"] == v2
    assert registry.champion_version(NAME) == v2
    tags = MlflowClient().get_model_version(NAME, v3).tags
    assert tags["gate.promoted"] == "False"


def test_version_names_the_lm_it_was_fine_tuned_from(project, versions):
    tags = MlflowClient().get_model_version(NAME, versions["v2"][0]).tags
    assert tags["lm.model_name"] == LM_NAME and tags["lm.version"] == "1"
    assert tags["lm.model_md5"] == _report(project["params"])["lm_model_md5"]
    assert float(tags["metric.macro_f1"]) > 0.5


def test_loaded_classifier_returns_label_and_probabilities(versions):
    import pandas as pd

    model = classifier.load_classifier(f"models:/{NAME}@champion")
    out = model.predict(
        pd.DataFrame({"text": ["the film was great and lovely", "an awful and terrible story"]})
    )
    assert list(out["label"]) == ["pos", "neg"]
    probs = out[["prob_neg", "prob_pos"]].to_numpy()
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_mlflow_models_serve_answers_labels_and_400_on_bad_requests(project, versions):
    root = project["root"]
    proc, url = tiny_lm.serve_model(root, "serve.log", f"models:/{NAME}@champion")
    try:
        tiny_lm.wait_until_up(proc, url, root / "serve.log", timeout=180)
        status, body = tiny_lm.http(
            url + "/invocations", {"dataframe_records": [{"text": "the film was great and lovely"}]}
        )
        assert status == 200, body
        pred = body["predictions"][0]
        assert pred["label"] == "pos" and pred["prob_pos"] > pred["prob_neg"]
        for bad in (
            {"dataframe_records": [{"body": "no text column"}]},
            {"dataframe_records": [{"text": ""}]},
            {"dataframe_records": [{"text": 5}]},
        ):
            status, body = tiny_lm.http(url + "/invocations", bad)
            assert 400 <= status < 500, (bad, status, body)
    finally:
        tiny_lm.stop(proc)


def test_gruflow_classify_prints_label_and_probabilities(project, versions):
    out = subprocess.run(
        [
            str(tiny_lm.VENV_BIN / "gruflow"),
            "classify",
            "an awful and terrible story",
            "--project",
            str(project["root"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=tiny_lm.env(),
    )
    assert out.returncode == 0, out.stderr
    label, probs = out.stdout.strip().split("\t")
    assert label == "neg" and "pos " in probs and "neg " in probs
