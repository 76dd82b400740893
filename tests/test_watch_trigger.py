"""Data-arrival trigger on real components over loopback: a Prefect server on 127.0.0.1 (its
triggers service evaluates the deployment trigger), `gruflow deploy` of prefect.yaml, a process
worker, and `gruflow watch` on a folder source. Two waves of files (two events) lead to exactly
one gruflow-retrain flow run — the real retrain of the tiny project — which completes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import BIN, git, gruflow, tiny_project
from tests.test_placement_server import server  # noqa: F401  (the loopback server fixture)
from tests.test_retrain import copy_project

pytestmark = pytest.mark.slow

DEBOUNCE = 300  # longer than the test's second wave and its wait for a second run


def _api(env: dict, path: str, body: dict | None = None):
    req = urllib.request.Request(
        f"{env['PREFECT_API_URL']}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _runs(env: dict, deployment_id: str) -> list[dict]:
    """The deployment's flow runs due now (the cron schedule's run on 1 January is not)."""
    runs = _api(
        env, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 50}
    )
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return [r for r in runs if dt.datetime.fromisoformat(r["expected_start_time"]) < soon]


def _drop(folder: Path, names: list[str]) -> None:
    for name in names:
        lines = [
            json.dumps({"text": f"New document {name} {i}: the parser reads the header."})
            for i in range(5)
        ]
        (folder / name).write_text("\n".join(lines) + "\n")
        time.sleep(0.2)


def _project(base: Path) -> tuple[Path, Path]:
    incoming = base / "incoming"
    incoming.mkdir()
    project = tiny_project(
        base,
        copy_project,
        branch="main",
        dvc_remote=str(base / "dvc-remote"),
        pool="watch",
        schedule="0 0 1 1 *",
        watch_interval=1,
        debounce=DEBOUNCE,
    )
    (base / "corpus.jsonl").rename(incoming / "corpus.jsonl")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = str(incoming)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    git(project, "commit", "-qam", "watch the incoming folder")
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(project), str(base / "code.git")], check=True
    )
    git(project, "remote", "add", "origin", str(base / "code.git"))
    return project, incoming


def _wait_for_final_run(env: dict, dep_id: str, seconds: float) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = _runs(env, dep_id)
        if runs and all(
            r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs
        ):
            return runs
        time.sleep(3)
    raise TimeoutError(f"no finished gruflow-retrain run: {_runs(env, dep_id)}")


def test_burst_of_files_starts_exactly_one_retrain(server):  # noqa: F811
    base, env = server
    project, incoming = _project(base)
    deploy = gruflow(project, env, command="deploy", timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    assert "trigger gruflow.data.changed debounce PT300S" in deploy.stdout
    dep = _api(env, "/deployments/name/gruflow-retrain/gruflow-retrain")
    logs = {n: (base / f"{n}.log").open("w") for n in ("worker", "watch")}
    worker = subprocess.Popen(
        [str(BIN / "gruflow"), "worker", "--pool", "watch"],
        cwd=base,
        env=env,
        stdout=logs["worker"],
        stderr=subprocess.STDOUT,
    )
    watcher = subprocess.Popen(
        [str(BIN / "gruflow"), "watch", "--project", str(project)],
        cwd=project,
        env=env,
        stdout=logs["watch"],
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while "watching" not in (base / "watch.log").read_text():
            assert watcher.poll() is None and time.monotonic() < deadline, (
                base / "watch.log"
            ).read_text()
            time.sleep(0.5)
        assert _runs(env, dep["id"]) == []  # the watcher's first snapshot sends nothing
        _drop(incoming, ["a.jsonl", "b.jsonl", "c.jsonl"])  # first wave: one event
        deadline = time.monotonic() + 180
        while (base / "watch.log").read_text().count("gruflow.data.changed:") < 1:
            assert watcher.poll() is None and time.monotonic() < deadline, (
                base / "watch.log"
            ).read_text()
            time.sleep(0.5)
        _drop(incoming, ["d.jsonl", "e.jsonl"])  # second wave: a second event, same burst
        runs = _wait_for_final_run(env, dep["id"], 900)
        time.sleep(15)  # a second run would have been created by now (triggers act in ~s)
        runs = _runs(env, dep["id"])
    finally:
        for proc in (watcher, worker):
            proc.terminate()
            proc.wait(timeout=30)
    watch_log = (base / "watch.log").read_text()
    assert watch_log.count("gruflow.data.changed:") == 2, watch_log
    assert "3 new or changed" in watch_log and "2 new or changed" in watch_log, watch_log
    assert len(runs) == 1, runs
    assert runs[0]["created_by"]["type"] == "AUTOMATION"  # the deployment trigger, not cron
    assert runs[0]["state_type"] == "COMPLETED", (base / "worker.log").read_text()[-4000:]
    state = json.loads((project / ".gruflow" / "watch.json").read_text())
    assert len(state) == 6  # the watcher's saved snapshot: the original file and five new
    events = _events(env, 2)
    assert [e["resource"]["prefect.resource.id"] for e in events] == [
        "gruflow.project.gruflow-lm"
    ] * 2
    waves = [e["payload"] for e in events]
    assert [Path(w["project"]).resolve() for w in waves] == [project.resolve()] * 2
    assert [sorted(Path(f).name for f in w["changed"]) for w in waves] == [
        ["a.jsonl", "b.jsonl", "c.jsonl"],
        ["d.jsonl", "e.jsonl"],
    ]
    assert [(w["changed_total"], w["removed"], w["removed_total"]) for w in waves] == [
        (3, [], 0),
        (2, [], 0),
    ]
    assert all(Path(f).parent.resolve() == incoming.resolve() for w in waves for f in w["changed"])


def _events(env: dict, n: int) -> list[dict]:
    """The server's stored `gruflow.data.changed` events, oldest first (the server writes
    events in the background: wait up to a minute for `n`)."""
    body = {"filter": {"event": {"name": ["gruflow.data.changed"]}}, "limit": 50}
    deadline = time.monotonic() + 60
    while True:
        found = _api(env, "/events/filter", body)["events"]
        if len(found) >= n or time.monotonic() > deadline:
            return sorted(found, key=lambda e: e["occurred"])
        time.sleep(2)
