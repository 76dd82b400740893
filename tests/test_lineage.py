"""Alias history, `gruflow history` / `lineage`, reproduce's refusals and comparison, and the
lineage tags — on a real MLflow sqlite registry and real git repositories (no model files are
needed: promote/rollback and the first-version gate never load a model)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from components.errors import GruflowError
from flows import alias_history, cli, registry, reproduce, tracking

ROOT = Path(__file__).resolve().parents[1]
NAME = "gruflow-lm"
GOOD = {"perplexity": 20.0, "bigram_perplexity": 50.0}


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A git project with the default params.yaml and an empty sqlite registry."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    MlflowClient().create_registered_model(NAME)
    return tmp_path


def add_version(root: Path, **tags: str) -> str:
    mv = MlflowClient().create_model_version(NAME, source=str(root), tags=tags)
    return str(mv.version)


def champion() -> str | None:
    return registry.champion_version(NAME)


# --- alias history ----------------------------------------------------------------------------


def test_every_alias_change_is_appended_and_rollback_walks_back(project):
    v1, v2, v3 = (add_version(project) for _ in range(3))
    registry.gate(NAME, v1, GOOD, project / "unused.parquet", 0.01)  # first: beats bigram
    registry.promote(NAME, v2)
    registry.promote(NAME, v3)
    assert registry.rollback(NAME) == v2 and champion() == v2
    assert registry.rollback(NAME) == v1 and champion() == v1  # history: not just one step
    with pytest.raises(GruflowError, match="no previous champion"):
        registry.rollback(NAME)
    events = alias_history.events(NAME)
    assert [(e["alias"], e["old"], e["new"], e["kind"]) for e in events] == [
        ("challenger", None, "1", "gate"),
        ("champion", None, "1", "gate"),
        ("champion", "1", "2", "promote"),
        ("champion", "2", "3", "promote"),
        ("champion", "3", "2", "rollback"),
        ("champion", "2", "1", "rollback"),
    ]
    assert all(e["time"] and e["by"] and e["reason"] for e in events)
    assert "bigram" in events[1]["reason"] and "rollback from version 3" in events[4]["reason"]
    periods = alias_history.champion_periods(events)
    assert [(v, until is None) for v, _, until, _ in periods] == [
        ("1", False),
        ("2", False),
        ("3", False),
        ("2", False),
        ("1", True),
    ]


def test_rollback_after_a_new_promotion_goes_to_the_one_before(project):
    v1, v2, v3 = (add_version(project) for _ in range(3))
    registry.promote(NAME, v1)
    registry.promote(NAME, v2)
    registry.rollback(NAME)  # back to 1
    registry.promote(NAME, v3)
    assert registry.rollback(NAME) == v1  # 2 was rolled back: it is not where 3 returns to


def test_gruflow_history_prints_who_was_champion_when(project, capsys):
    v1, v2 = add_version(project), add_version(project)
    registry.promote(NAME, v1)
    registry.promote(NAME, v2)
    assert cli.main(["history", "--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert "gruflow-lm: champion periods" in out
    lines = out.splitlines()
    first = next(line for line in lines if line.strip().startswith("1 "))
    assert "promote:" in first and "(now)" not in first
    assert any(line.strip().startswith("2 ") and "(now)" in line for line in lines)
    assert "1 -> 2" in out


def test_history_of_a_model_without_changes(project, capsys):
    assert cli.main(["history", "--project", str(project)]) == 0
    assert "no alias changes recorded yet" in capsys.readouterr().out


# --- lineage ------------------------------------------------------------------------------------


def test_lineage_shows_commit_params_diff_hashes_metrics_gate_verdict_history(project, capsys):
    commit = git(project, "rev-parse", "HEAD")
    v = add_version(
        project,
        git_commit=commit,
        git_dirty="False",
        reproducible="true",
        **{
            "dvc.data/clean": "abc.dir",
            "metric.perplexity": "20.5",
            "gate.promoted": "True",
            "gate.reason": "first version",
            "reproduce.verdict": "identical",
            "reproduce.date": "2026-01-01",
        },
    )
    registry.promote(NAME, v)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 9
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "dvc.lock").write_text(
        yaml.safe_dump({"stages": {"clean": {"outs": [{"path": "data/clean", "md5": "abc.dir"}]}}})
    )
    assert cli.main(["lineage", v, "--project", str(project)]) == 0
    out = capsys.readouterr().out
    assert f"commit {commit}  dirty: False" in out
    assert "train.epochs: 4 then, 9 now" in out
    assert "clean" in out and "data/clean" in out and "abc.dir" in out
    assert "perplexity" in out and "20.5" in out
    assert "promoted: True — first version" in out
    assert "identical on 2026-01-01" in out
    assert "champion: - -> 1" in out


def test_lineage_of_a_missing_version_is_one_line(project, capsys):
    assert cli.main(["lineage", "7", "--project", str(project)]) == 2
    assert "has no version 7" in capsys.readouterr().err


# --- reproduce: refusals and the comparison -------------------------------------------------


def test_reproduce_refuses_a_dirty_version(project):
    v = add_version(project, git_commit=git(project, "rev-parse", "HEAD"), git_dirty="True")
    with pytest.raises(GruflowError, match="uncommitted changes") as err:
        reproduce.reproduce(project, None, NAME, v)
    assert "\n" not in str(err.value)


def test_reproduce_refuses_an_unreachable_commit(project):
    v = add_version(project, git_commit="f" * 40, git_dirty="False")
    with pytest.raises(GruflowError, match="commit f{40} is not in the repository"):
        reproduce.reproduce(project, None, NAME, v)


LOCK = {
    "stages": {
        "ingest": {"outs": [{"path": "data/raw", "md5": "r.dir"}]},
        "tokenize": {"outs": [{"path": "data/tokens", "md5": "t.dir"}]},
        "train": {"outs": [{"path": "artifacts/model.keras", "md5": "m"}]},
    }
}
RECORDED = {
    "dvc.data/raw": "r.dir",
    "dvc.data/tokens": "t.dir",
    "dvc.artifacts/model.keras": "m",
    "metric.perplexity": "20.0",
}


def test_compare_identical_and_differs_naming_the_stage():
    rows, mismatches, verdict = reproduce.compare(
        RECORDED, LOCK, {"perplexity": 20.0}, {"data/raw"}, gpu=False, rtol=0.01
    )
    assert verdict == "identical" and mismatches == []
    assert ("ingest: data/raw", "r.dir", "r.dir", "input") in rows
    tampered = {**RECORDED, "dvc.data/tokens": "x.dir"}
    _, mismatches, verdict = reproduce.compare(
        tampered, LOCK, {"perplexity": 20.0}, set(), gpu=False, rtol=0.01
    )
    assert verdict == "differs" and mismatches == ["tokenize: data/tokens"]
    table = reproduce.table(
        reproduce.compare(tampered, LOCK, {"perplexity": 20.0}, set(), False, 0.01)[0]
    )
    assert table.splitlines()[0].split() == [
        "stage",
        "or",
        "metric",
        "recorded",
        "reproduced",
        "match",
    ]
    assert any(
        "tokenize: data/tokens" in line and line.endswith("NO") for line in table.splitlines()
    )


def test_compare_tolerance_only_on_gpu():
    gpu_lock = {
        "stages": {
            **LOCK["stages"],
            "train": {"outs": [{"path": "artifacts/model.keras", "md5": "other"}]},
        }
    }
    near = {"perplexity": 20.1}
    assert (
        reproduce.compare(RECORDED, gpu_lock, near, set(), gpu=True, rtol=0.01)[2]
        == "within_tolerance"
    )
    assert (
        reproduce.compare(RECORDED, gpu_lock, {"perplexity": 21.0}, set(), True, 0.01)[2]
        == "differs"
    )
    assert reproduce.compare(RECORDED, gpu_lock, near, set(), gpu=False, rtol=0.01)[2] == "differs"


# --- lineage tags -------------------------------------------------------------------------


def test_dirty_flag_ignores_what_the_pipeline_writes(project, params):
    (project / "reports").mkdir()
    (project / "reports" / "metrics.json").write_text("{}")
    (project / "reports" / "tune.json").write_text(json.dumps({"reproducible": False}))
    (project / "dvc.lock").write_text(
        yaml.safe_dump(
            {"stages": {"evaluate": {"outs": [{"path": "reports/metrics.json", "md5": "a"}]}}}
        )
    )
    git(project, "add", "-A")
    git(project, "commit", "-qm", "outputs")
    (project / "reports" / "metrics.json").write_text('{"perplexity": 3}')
    (project / "dvc.lock").write_text(
        yaml.safe_dump(
            {"stages": {"evaluate": {"outs": [{"path": "reports/metrics.json", "md5": "b"}]}}}
        )
    )
    tags = tracking.lineage_tags(project, params, None)
    assert tags["git_dirty"] == "False"  # a run rewrote its outputs and dvc.lock: still clean
    assert tags["reproducible"] == "false" and tags["dvc.reports/metrics.json"] == "b"
    assert len(tags["dvc_lock_digest"]) == 16
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\n# edit\n")
    assert tracking.lineage_tags(project, params, None)["git_dirty"] == "True"
