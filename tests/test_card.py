"""`gruflow card VERSION`: a registered version's model card, from a real MLflow sqlite store.

The fast tests check what the page holds (every section, embedded plots, escaped text, the
description summary written once); the slow one opens the page in a real headless Chromium
(Debian's `chromium` package) and checks the screenshot is not blank and the console is silent.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import base64  # noqa: E402
import csv  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.image as mpimg  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from components.lm import plots  # noqa: E402
from flows import card, tracking  # noqa: E402
from flows.cli import main  # noqa: E402
from tests import tiny_lm  # noqa: E402

METRICS = {
    "perplexity": 41.5,
    "bigram_perplexity": 77.25,
    "baseline_perplexity": 300.0,
    "bits_per_byte": 1.625,
}
HOSTILE_SAMPLE = "**the parser** <script>console.error('injected')</script> & more"


def _stage_artifacts(tmp: Path) -> Path:
    """The evaluate stage's plots and samples, made by gruflow's own plot code."""
    reports = tmp / "eval_reports"
    (reports / "plots").mkdir(parents=True)
    history = tmp / "history.csv"
    with history.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_loss"])
        writer.writerows([[0, 5.1, 5.0], [1, 4.2, 4.4], [2, 3.9, 4.3]])
    plots.learning_curves(history, reports / "plots" / "learning_curves.png")
    tokens = ["the", "parser", "reads", "a"]
    alpha = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    plots.attention_maps([(tokens, alpha)], reports / "plots" / "attention.png")
    (reports / "samples.md").write_text(f"# Samples\n\n{HOSTILE_SAMPLE}\n")
    (reports / "data_profile.json").write_text('{"documents": 123, "characters": 4567}')
    return reports


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Version 1 of `cardlm`: the pyfunc, nested train/evaluate runs, a gate decision."""
    root = tmp_path_factory.mktemp("card")
    project = tiny_lm.build_project(root, "cardlm")
    params = project["params"]
    prev_uri = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        tracking.configure(root, params.mlflow.experiment)
        reports = _stage_artifacts(root)
        with mlflow.start_run(run_name="pipeline") as parent:
            with mlflow.start_run(run_name="train", nested=True):
                mlflow.log_params({"model.units": 8, "train.learning_rate": 0.018})
                mlflow.set_tag("tuned_params", '{"train.learning_rate": 0.018}')
            with mlflow.start_run(run_name="evaluate", nested=True):
                mlflow.log_artifacts(str(reports / "plots"), "plots")
                mlflow.log_artifact(str(reports / "samples.md"))
            version = tracking.log_and_register_model(
                root,
                params,
                parent.info.run_id,
                {"git_commit": "abc123def4567890", "git_dirty": "False"},
                METRICS,
            )
            card.log_data_profile(parent.info.run_id, reports)
        client = MlflowClient()
        client.set_model_version_tag("cardlm", version, "gate.promoted", "True")
        client.set_model_version_tag(
            "cardlm", version, "gate.reason", "first version, beats the bigram baseline"
        )
        client.set_registered_model_alias("cardlm", "champion", version)
        yield {
            "root": root,
            "params": params,
            "version": version,
            "run_id": parent.info.run_id,
            "reports": root / "reports",
        }
        mlflow.set_tracking_uri(prev_uri)


@pytest.fixture(scope="module")
def written(registered):
    path, version = card.write_card("cardlm", "champion", None, registered["reports"])
    return {**registered, "path": path, "html": path.read_text(encoding="utf-8")}


def test_card_has_every_section_with_the_versions_numbers(written):
    page = written["html"]
    assert written["path"] == written["reports"] / "cards" / "cardlm-v1.html"
    for heading in (
        "Intended use and limits",
        "Metrics against the baselines",
        "Gate decision",
        "Data",
        "Parameters",
        "Learning curves",
        "Attention",
        "Samples",
        "Lineage",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert "41.5" in page and "77.25" in page  # the model and its bigram baseline
    assert "first version, beats the bigram baseline" in page
    assert "abc123def4567890" in page and "0.018" in page
    assert "Tuned values: <code>{&quot;train.learning_rate&quot;: 0.018}</code>" in page
    assert "<td>documents</td><td>123</td>" in page  # data profile from the version's run


def test_card_embeds_the_logged_plots_as_images(written):
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", written["html"])
    assert len(uris) == 2  # learning curves + attention (no length plot was logged)
    assert all(base64.b64decode(u).startswith(b"\x89PNG") for u in uris)
    assert "perplexity by document length: not logged for this version" in written["html"]


def test_card_escapes_the_texts_it_shows(written):
    assert "<script>" not in written["html"]
    assert "&lt;script&gt;console.error(&#x27;injected&#x27;)&lt;/script&gt;" in written["html"]


def test_card_is_logged_and_summarised_once_in_the_description(written):
    client = MlflowClient()
    card.write_card("cardlm", "1", None, written["reports"])  # a second card: no 2nd summary
    description = client.get_model_version("cardlm", written["version"]).description
    lines = [line for line in description.splitlines() if line.startswith(card.SUMMARY_MARK)]
    assert len(lines) == 1
    assert "champion" in lines[0] and "41.50" in lines[0] and "promoted" in lines[0]
    logged = [a.path for a in client.list_artifacts(written["run_id"], card.CARD_ARTIFACT)]
    assert logged == [f"{card.CARD_ARTIFACT}/{card.CARD_FILE}"]


def test_card_of_a_missing_version_is_one_line(registered, capsys):
    rc = main(["card", "7", "--project", str(registered["root"])])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no version or alias '7'" in err[0]


# --- a real browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(page: Path, shot: Path) -> list[str]:
    """Open `page` in headless Chromium, write a screenshot; the console messages it logged."""
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def ink(shot: Path) -> float:
    """Share of the screenshot's pixels that are not (near) white."""
    pixels = mpimg.imread(shot)[..., :3]
    return float((pixels.min(axis=-1) < 0.9).mean())


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)"
)
def test_card_renders_in_a_real_browser(written, tmp_path):
    # The check itself must be able to fail: a page with a script error and nothing drawn.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefined_fn()</script></body></html>")
    assert browse(bad, tmp_path / "bad.png") and ink(tmp_path / "bad.png") < 0.001
    assert browse(written["path"], tmp_path / "card.png") == []
    assert ink(tmp_path / "card.png") > 0.02  # text, tables and two plots on the page
