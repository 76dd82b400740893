"""`gruflow retrain` under `retrain.policy: on_drift`, end to end (real Prefect temporary server,
DVC repo, MLflow sqlite store, tiny corpus): the first run trains (no champion); new documents
in the same style are skipped as "no drift" with the numbers recorded; documents in another
language cross a threshold and retrain. `gruflow history` lists the decisions."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import (
    BIN,
    OBJECTS,
    SUBJECTS,
    VERBS,
    git,
    isolated_env,
    tiny_project,
)
from tests.test_retrain import copy_project

pytestmark = pytest.mark.slow

DE_SUBJECTS = ["der Parser", "ein Socket", "der Puffer", "jeder Faden", "das Modul", "eine Datei"]
DE_VERBS = ["liest", "öffnet", "schließt", "prüft", "schreibt", "übergibt"]
DE_OBJECTS = [
    "die Kopfzeile",
    "eine Namensliste",
    "die nächste Zeile",
    "eine Ganzzahl",
    "den zwischengespeicherten Wert",
    "die Größe",
]


def append_docs(corpus: Path, first: int, n: int, words: tuple[list, list, list], seed: int):
    """n grammar-generated documents (ids first..first+n-1) added to the jsonl source."""
    rng = random.Random(seed)
    subjects, verbs, objects = words
    with corpus.open("a", encoding="utf-8") as f:
        for i in range(first, first + n):
            sentences = [
                f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
                for _ in range(rng.randint(3, 6))
            ]
            f.write(json.dumps({"text": f"Doc {i}: " + " ".join(sentences), "id": i}) + "\n")


# The `gruflow-retrain` artifacts the CLI's temporary server stored in this Prefect home, oldest
# first: read through Prefect's client on an in-process API over the same database (~10 s).
READ_ARTIFACTS = """
import asyncio, json
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.server.api.server import create_app

async def main():
    async with PrefectClient(api=create_app(ephemeral=True)) as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gruflow-retrain"])),
            sort=ArtifactSort.CREATED_DESC,
        )
    print(json.dumps([a.data for a in reversed(found)]))

asyncio.run(main())
"""


def published_artifacts(env: dict, cwd: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", READ_ARTIFACTS],
        cwd=cwd,
        env=env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def gruflow(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(BIN / "gruflow"), *args, "--project", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def drift_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("drift")
    project = tiny_project(base, copy_project, dvc_remote="../dvc-remote", placement={})
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["retrain"]["policy"] = "on_drift"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    git(project, "commit", "-qam", "on_drift")
    env = isolated_env(base)
    corpus = base / "corpus.jsonl"
    runs = {"project": project, "first": gruflow(project, env, "retrain")}
    # The tiny model may not beat the bigram baseline, and the gate then names no champion
    # (on_drift would train again, measuring nothing): a person promotes version 1.
    gruflow(project, env, "promote", "1")
    append_docs(corpus, 240, 40, (SUBJECTS, VERBS, OBJECTS), seed=1)
    runs["same"] = gruflow(project, env, "retrain")
    runs["same_report"] = json.loads((project / "reports/drift.json").read_text())
    runs["same_costs"] = json.loads((project / "reports/resources.json").read_text())["stages"]
    append_docs(corpus, 280, 40, (DE_SUBJECTS, DE_VERBS, DE_OBJECTS), seed=2)
    runs["other"] = gruflow(project, env, "retrain")
    runs["other_report"] = json.loads((project / "reports/drift.json").read_text())
    runs["other_costs"] = json.loads((project / "reports/resources.json").read_text())["stages"]
    runs["history"] = gruflow(project, env, "history").stdout
    runs["artifacts"] = published_artifacts(env, base)
    for key in ("same_report", "other_report"):
        r = runs[key]
        print(
            key,
            json.dumps(
                {
                    k: r.get(k)
                    for k in (
                        "documents",
                        "bits_per_byte",
                        "fallback_rate",
                        "js_divergence",
                        "decision",
                    )
                }
            ),
        )
    return runs


def test_first_on_drift_run_trains_without_a_champion(drift_runs):
    out = drift_runs["first"].stdout
    assert "gruflow: retrained" in out and "has no champion yet" in out, out


def test_same_style_text_is_skipped_with_the_numbers(drift_runs):
    import mlflow
    from mlflow.tracking import MlflowClient

    assert "gruflow: retrain skipped — no drift" in drift_runs["same"].stdout
    r = drift_runs["same_report"]
    assert r["decision"] == {"retrain": False, "reason": "no drift", "crossed": {}}
    assert r["champion"] == "1" and r["documents"]["new"] == 40  # by doc id vs its lineage
    assert r["documents"]["new_scored"] == 40 and len(r["per_document"]["new"]) == 40
    limits = r["thresholds"]
    assert 0 < r["bits_per_byte"]["ratio"] < limits["bpb_ratio"]
    assert r["fallback_rate"]["rise"] <= limits["fallback_rate"]
    assert 0 < r["js_divergence"] < limits["js_divergence"]
    assert sum(b["new"] for b in r["histogram"]) == 40
    mlflow.set_tracking_uri(f"sqlite:///{drift_runs['project'] / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("gruflow")
    skipped = client.search_runs([exp.experiment_id], "tags.retrain = 'skipped'")
    assert len(skipped) == 1
    run = skipped[0]
    assert run.data.tags["retrain_reason"] == "no drift"
    assert run.data.tags["retrain.policy"] == "on_drift"
    assert run.data.metrics["drift.bpb_ratio"] == pytest.approx(r["bits_per_byte"]["ratio"])
    assert run.data.metrics["drift.new_documents"] == 40
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert logged == {"drift/drift.json", "drift/drift.svg"}


def test_another_language_retrains(drift_runs):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{drift_runs['project'] / 'mlflow.db'}")
    assert "gruflow: retrained" in drift_runs["other"].stdout
    r = drift_runs["other_report"]
    assert r["decision"]["retrain"] and r["decision"]["reason"].startswith("drift: ")
    assert r["documents"]["new"] == 80  # still against champion 1's lineage
    assert r["bits_per_byte"]["ratio"] > r["thresholds"]["bpb_ratio"]
    assert r["fallback_rate"]["rise"] > 0  # ö, ü, ß: bytes the tokenizer never merged
    assert r["js_divergence"] > drift_runs["same_report"]["js_divergence"]
    client = MlflowClient()
    versions = client.search_model_versions("name = 'gruflow-lm'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    exp = client.get_experiment_by_name("gruflow")
    trained = client.search_runs(
        [exp.experiment_id], "tags.retrain = 'trained'", order_by=["attributes.start_time DESC"]
    )
    run = trained[0]  # the pipeline run of this retrain carries the drift record too
    assert run.data.tags["retrain.decision"] == "train"
    assert run.data.tags["retrain_reason"] == r["decision"]["reason"]
    assert run.data.metrics["drift.js_divergence"] == pytest.approx(r["js_divergence"])


def test_history_lists_the_decisions(drift_runs):
    lines = drift_runs["history"].split("retrain decisions", 1)[1].splitlines()
    rows = [line for line in lines if line.startswith("20")]
    assert [row.split()[1] for row in rows] == ["trained", "skipped", "trained"], lines
    assert "has no champion yet" in rows[0]
    assert "on_drift" in rows[1] and "bpb ratio" in rows[1] and rows[1].endswith("no drift")
    assert "drift: " in rows[2]


def _retrain_runs(project: Path) -> dict:
    """The skip run and the last trained run of the module's retrains (MLflow)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("gruflow")
    order = ["attributes.start_time DESC"]
    [skip] = client.search_runs([exp.experiment_id], "tags.retrain = 'skipped'")
    trained = client.search_runs([exp.experiment_id], "tags.retrain = 'trained'", order_by=order)
    return {"skip": skip, "trained": trained[0]}


def _expected_total(costs: dict, ran: list[str], metrics: dict) -> str:
    """The artifact's total row for the stages that ran (reports/resources.json as that run
    left it) plus the drift scoring (its cost, as logged on the retrain's MLflow run)."""
    from flows.resources import NUMBERS, total

    rows = {s: costs[s] for s in ran}
    rows["drift"] = {k: metrics.get(f"resources.drift.{k}") for k in NUMBERS}
    t = total(rows)
    cells = ["-" if t[k] is None else f"{t[k]:g}" for k in NUMBERS]
    return "| total | " + " | ".join(cells) + " |"


def test_published_artifacts_show_decision_numbers_plot_and_costs(drift_runs):
    """What the retrains published to Prefect (`gruflow-retrain`, read back from the server's
    database): the decision, the drift numbers, the plot, what the run cost (ingest, clean and
    the drift scoring included) and, for the skip, what it saved."""
    first, skip, trained = drift_runs["artifacts"]
    runs = _retrain_runs(drift_runs["project"])
    assert first.startswith("# gruflow retrain: trained") and "has no champion yet" in first
    assert "Stages executed: ingest, clean, tokenize, embed, tune, train, evaluate" in first

    r, costs = drift_runs["same_report"], drift_runs["same_costs"]
    assert skip.startswith("# gruflow retrain: skipped\n\nno drift.")
    assert "## Drift (policy on_drift): skip — no drift" in skip
    assert f"(ratio {r['bits_per_byte']['ratio']:.4f})" in skip
    assert f"| JS divergence new vs old train tokens | {r['js_divergence']:.4f} |" in skip
    assert "| bits/byte | new documents | champion's test documents |" in skip  # the plot
    spent, saved = skip.split("## What this skip cost")[1].split("## What this skip saved")
    m = runs["skip"].data.metrics
    assert m["resources.clean.cpu_s"] == costs["clean"]["cpu_s"]  # clean ran, logged on the run
    assert m["resources.drift.cpu_s"] > 0
    assert "| drift scoring |" in spent
    assert _expected_total(costs, ["ingest", "clean"], m) in spent
    assert "| clean |" not in saved and "| train |" in saved
    rest = [s for s in costs if s not in ("ingest", "clean")]
    assert _expected_total(costs, rest, {}) in saved
    assert runs["skip"].data.tags["executed_stages"] == "ingest,clean"

    r, costs = drift_runs["other_report"], drift_runs["other_costs"]
    assert trained.startswith("# gruflow retrain: trained")
    assert f"## Drift (policy on_drift): train — {r['decision']['reason']}" in trained
    assert f"(ratio {r['bits_per_byte']['ratio']:.4f})" in trained
    ran = runs["trained"].data.tags["executed_stages"].split(",")
    assert ran[:3] == ["ingest", "clean", "tokenize"]
    assert f"Stages executed: {', '.join(ran)}" in trained
    assert f"stages executed: {', '.join(ran)}" in drift_runs["other"].stdout
    section = trained.split("## Resources of this run")[1]
    assert _expected_total(costs, ran, runs["trained"].data.metrics) in section
