"""A run leaves git alone: what the pipeline writes outside git's view is ignored, nothing git
tracks is in an ignored path or is a stage's output, and every DVC output is already in the
.gitignore DVC would write it to (so a first `dvc repro` does not edit a tracked .gitignore).
`dvc metrics show` and the documented `dvc exp show` view fit a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.contract import HEADLINE_KEYS, HEADLINE_REPORT, MASKED_HEADLINE_KEYS, headline
from components.finetune import blank_png
from components.params import load_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")


def _ignored(path: str) -> bool:
    check = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    return check.returncode == 0


def _outs(sections=("outs",), cached_only: bool = True) -> list[str]:
    """The paths of dvc.yaml's `sections` (cached ones only, unless told), with params.yaml's
    values templated in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    found = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for out in (o for section in sections for o in stage.get(section, [])):
            path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            if opts.get("cache", True) or not cached_only:
                for key, value in params["paths"].items():
                    path = path.replace(f"${{paths.{key}}}", str(value))
                found.append(path)
    return found


ALL = ("outs", "metrics", "plots")


def test_transient_paths_the_pipeline_writes_are_ignored():
    paths = load_params(ROOT / "params.yaml").paths
    transient = [
        f"{paths.checkpoints}/epoch.keras",
        f"{paths.tune_dir}/journal.log",
        f"{paths.reports}/tensorboard/train/events.out.tfevents.1.host.1.v2",
        f"{paths.reports}/resources.json",
        f"{paths.reports}/drift.json",
        f"{paths.reports}/drift.svg",
        f"{paths.reports}/cards/gruflow-lm-v1.html",
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
    outs = _outs(ALL)
    assert "artifacts/model.keras" in outs and "artifacts/classifier" in outs
    assert [p for p in outs if not _ignored(p)] == []


def test_every_stage_output_is_cached_ignored_and_untracked():
    """What a run writes is DVC's (restored by `dvc checkout`/`dvc pull`), never git's: a fresh
    clone's run rewrites no tracked file but dvc.lock."""
    paths = _outs(ALL, cached_only=False)
    assert "reports/metrics.json" in paths and f"reports/{HEADLINE_REPORT}" in paths
    assert sorted(_outs(ALL)) == sorted(paths)  # no `cache: false` output left
    assert [p for p in paths if not _ignored(p)] == []
    tracked = subprocess.run(
        ["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == []


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
    """Every plot of dvc.yaml present (a fresh clone has none: they are DVC outputs), as images
    like the stages write them."""
    project = _dvc_project(tmp_path / "project", CAUSAL)
    for rel in _outs(("plots",), cached_only=False):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".svg"):
            (project / rel).write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
        else:
            blank_png(project / rel)
    _dvc(project, "plots", "show", "-o", str(tmp_path / "page"), columns=100)
    page = (tmp_path / "page" / "index.html").read_text()
    assert page.count("<img") >= 4 and "<script src=" not in page and "cdn." not in page


# README, Git and DVC hygiene: the experiments table with the headline metrics only
EXP_SHOW = ["exp", "show", "--no-pager", "--drop", ".*", "--keep"]
EXP_KEEP = "Experiment|Created|^perplexity|bits_per_byte|bigram"
METRICS = {k: 12345.678901234 for k in HEADLINE_KEYS + MASKED_HEADLINE_KEYS} | {
    "token_accuracy": 0.25,
    "loss_by_position": {"0-0": 4.5, "1-1": 4.4},
    "baseline_word_perplexity": 182291.957,
}


_DVC = str(Path(sys.executable).parent / "dvc")

CAUSAL = {k: v for k, v in METRICS.items() if not k.startswith("masked")}


def _dvc_project(tmp_path: Path, metrics: dict) -> Path:
    """A git + DVC repository with this dvc.yaml and params.yaml and evaluate's metrics file."""
    tmp_path.mkdir(exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / HEADLINE_REPORT).write_text(json.dumps(headline(metrics)))
    for cmd in (["git", "init", "-q"], [_DVC, "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]
    subprocess.run(git, cwd=tmp_path, check=True, capture_output=True)
    return tmp_path


def _dvc(project: Path, *args: str, columns: int) -> str:
    env = os.environ | {"COLUMNS": str(columns)}
    out = subprocess.run(
        [_DVC, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_evaluate_metrics_are_the_only_dvc_metrics_file():
    assert _outs(("metrics",), cached_only=False) == [f"reports/{HEADLINE_REPORT}"]


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_dvc_metrics_show_fits_100_columns(tmp_path, objective):
    metrics = METRICS if objective == "masked" else CAUSAL
    table = _dvc(_dvc_project(tmp_path, metrics), "metrics", "show", columns=100)
    keys = MASKED_HEADLINE_KEYS if objective == "masked" else HEADLINE_KEYS
    assert all(k in table for k in keys) and "token_accuracy" not in table, table
    assert max(len(line) for line in table.splitlines()) <= 100, table


def test_documented_dvc_exp_show_view_fits_80_columns(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert f"dvc exp show --drop '.*' --keep '{EXP_KEEP}'" in readme
    table = _dvc(_dvc_project(tmp_path, CAUSAL), *EXP_SHOW, EXP_KEEP, columns=80)
    # rich squeezes a table wider than the terminal with "…": every header must be whole
    assert "…" not in table and "bigram_perplexity" in table and "bits_per_byte" in table, table
    assert "12346" in table and max(len(line) for line in table.splitlines()) <= 80, table


def _dotted(tree: dict, prefix: str = "") -> dict:
    """{"train.epochs": 4, ...}: a params section flattened to dvc.lock's dotted keys."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat |= _dotted(value, name + ".") if isinstance(value, dict) else {name: value}
    return flat


def test_committed_dvc_lock_matches_the_code_and_params():
    """README, Git and DVC hygiene: the committed dvc.lock is what `make run` writes for the
    committed code and params.yaml, so a fresh clone's first run (deterministic,
    tests/test_reproducible.py) leaves `git status` clean. Fails naming the stage when a
    component, dvc.yaml or params.yaml changed without a new run: then `make run` and commit
    dvc.lock."""
    import hashlib

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = _dotted(tree)
    assert sorted(lock) == sorted(stages), "dvc.lock's stages are not dvc.yaml's"
    outs = {o["path"]: o["md5"] for entry in lock.values() for o in entry.get("outs", [])}
    stale = []
    for name, entry in lock.items():
        for dep in entry.get("deps", []):
            path = ROOT / dep["path"]
            if dep["path"] in outs:  # another stage's output: the lock must agree with itself
                ok = dep["md5"] == outs[dep["path"]]
            elif any(dep["path"].startswith(out + "/") for out in outs):
                continue  # a file inside another stage's output folder: data, not code
            else:
                ok = path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == dep["md5"]
            if not ok:
                stale.append(f"{name}: {dep['path']}")
        for key, value in entry.get("params", {}).get("params.yaml", {}).items():
            recorded = _dotted(value, key + ".") if isinstance(value, dict) else {key: value}
            stale += [f"{name}: params {k}" for k, v in recorded.items() if params.get(k) != v]
        stale += _shape_differences(name, stages[name], entry, tree)
    assert stale == [], "dvc.lock is stale (run `make run`, commit dvc.lock): " + ", ".join(stale)


def _resolve(text: str, tree: dict) -> str:
    """dvc.yaml's ${a.b} templates, filled from params.yaml."""

    return re.sub(r"\$\{([^}]+)\}", lambda m: str(_subtree(tree, m.group(1))), text)


def _subtree(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _shape_differences(name: str, stage: dict, entry: dict, tree: dict) -> list[str]:
    """What DVC compares besides hashes: the command, the set of deps, outs and params, and
    each params entry as a whole (a section: every key in it, new ones included)."""
    found = []
    if _resolve(stage["cmd"], tree) != entry["cmd"]:
        found.append(f"{name}: cmd")
    for section, declaring in (("deps", ("deps",)), ("outs", ("outs", "metrics", "plots"))):
        declared = {
            _resolve(next(iter(o)) if isinstance(o, dict) else o, tree).rstrip("/")
            for key in declaring
            for o in stage.get(key, [])
        }
        if declared != {o["path"] for o in entry.get(section, [])}:
            found.append(f"{name}: {section} list")
    keys = [_resolve(k, tree) for k in stage.get("params", []) if isinstance(k, str)]
    recorded = entry.get("params", {}).get("params.yaml", {})
    if set(keys) != set(recorded):
        found.append(f"{name}: params list")
    found += [f"{name}: params {k}" for k in keys if recorded.get(k) != _subtree(tree, k)]
    return found
