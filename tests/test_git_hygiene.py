"""A run leaves git alone where it can: what the pipeline writes outside git's view is ignored,
nothing git tracks is in an ignored path, and every cached DVC output is already in the
.gitignore DVC would write it to (so a first `dvc repro` does not edit a tracked .gitignore)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.params import load_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")


def _ignored(path: str) -> bool:
    check = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    return check.returncode == 0


def _outs() -> list[str]:
    """Every cached `outs` path of dvc.yaml, with params.yaml's values templated in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    found = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("outs", []):
            path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            if opts.get("cache", True):
                for key, value in params["paths"].items():
                    path = path.replace(f"${{paths.{key}}}", str(value))
                found.append(path)
    return found


def test_transient_paths_the_pipeline_writes_are_ignored():
    paths = load_params(ROOT / "params.yaml").paths
    transient = [
        f"{paths.checkpoints}/epoch.keras",
        f"{paths.tune_dir}/journal.log",
        f"{paths.reports}/tensorboard/train/events.out.tfevents.1.host.1.v2",
        ".gruflow/logs/20260101T000000-1.log",
        ".gruflow/run.lock",
        "mlflow.db",
        "mlartifacts/1/abc/artifacts/model/MLmodel",
        "dvc_plots/index.html",
        ".dvc-remote/files/md5/00/0",
        f"{paths.reports}/drift.json",  # gruflow retrain's drift check: not a DVC output
        f"{paths.reports}/drift.svg",
        f"{paths.reports}/resources.json",
        f"{paths.reports}/cards/gruflow-lm-v1.html",
        ".gruflow/watch.json",
    ]
    assert [p for p in transient if not _ignored(p)] == []


def test_cached_dvc_outputs_are_ignored_before_the_first_run():
    outs = _outs()
    assert "artifacts/model.keras" in outs and "artifacts/classifier" in outs
    assert [p for p in outs if not _ignored(p)] == []


def test_no_tracked_file_is_in_an_ignored_path():
    tracked_but_ignored = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked_but_ignored == []


IMAGES = (".png", ".svg", ".jpg", ".jpeg", ".gif")


def test_every_dvc_plot_is_an_image():
    """DVC renders data plots (csv/json) with Vega scripts from a CDN: blank offline. Images
    are embedded as files, so `dvc plots show` works without a network."""
    plots = [
        next(iter(p)) if isinstance(p, dict) else p
        for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
        for p in stage.get("plots", [])
    ]
    assert plots and [p for p in plots if not p.lower().endswith(IMAGES)] == []


def test_dvc_plots_page_loads_nothing_from_the_network(tmp_path):
    if not (ROOT / "reports" / "plots" / "learning_curves.png").is_file():
        pytest.skip("no evaluate plots in this checkout")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "plots", "show", "-o", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "index.html").read_text()
    assert "<img" in page and "<script src=" not in page and "cdn." not in page
