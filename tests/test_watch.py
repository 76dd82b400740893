"""`gruflow watch` without a server: snapshots, the diff, the pending burst, the payload, the
saved state and the one-line errors. The real event → trigger → one retrain path runs against a
Prefect server in tests/test_watch_trigger.py (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.errors import GruflowError
from flows import watch
from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = "incoming"  # relative to the project root
    (tmp_path / "incoming").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def test_snapshot_sees_new_changed_and_removed_files(project):
    folder = project / "incoming"
    (folder / "a.txt").write_text("one")
    (folder / "skip.bin").write_bytes(b"\0")  # not a source format: never reported
    paths = [folder]
    old = watch.take_snapshot(paths, ["**/*"])
    assert list(old) == [str(folder / "a.txt")]
    (folder / "a.txt").write_text("one more")
    (folder / "b.md").write_text("two")
    changed, removed = watch.diff(old, watch.take_snapshot(paths, ["**/*"]))
    assert changed == [str(folder / "a.txt"), str(folder / "b.md")] and removed == []
    (folder / "a.txt").unlink()
    changed, removed = watch.diff(watch.take_snapshot(paths, ["**/*"]), {})
    assert removed == [str(folder / "b.md")]


def test_empty_folder_is_an_empty_snapshot_and_missing_source_fails(project):
    assert watch.take_snapshot([project / "incoming"], ["**/*"]) == {}
    with pytest.raises(GruflowError, match="does not exist"):
        watch.take_snapshot([project / "nowhere"], ["**/*"])


def test_builtin_source_cannot_be_watched(params):
    with pytest.raises(GruflowError, match="no file or folder to watch"):
        watch.watched_paths(params.data.model_copy(update={"source": "builtin"}), ROOT)


def test_pending_merges_a_burst_and_payload_counts_what_it_leaves_out(project):
    pending = watch.Pending()
    pending.add(["a", "b"], [])
    pending.add(["c"], ["b"])  # b written, then removed within the burst
    assert pending.changed == {"a", "c"} and pending.removed == {"b"}
    big = watch.Pending({f"f{i:03d}" for i in range(150)})
    body = watch.payload(project, big)
    assert len(body["changed"]) == watch.MAX_NAMES and body["changed_total"] == 150
    assert body["project"] == str(project)


def test_once_reports_files_that_arrived_since_the_saved_snapshot(project, monkeypatch):
    sent = []
    monkeypatch.setattr(watch, "emit", lambda root, name, p: sent.append(p) or True)
    assert watch.watch(project, once=True) == 0  # first start: baseline only
    assert (project / watch.STATE).is_file()
    (project / "incoming" / "new.jsonl").write_text('{"text": "hello there world"}\n')
    assert watch.watch(project, once=True) == 1
    assert sent[0].changed == {str(project / "incoming" / "new.jsonl")}
    assert watch.watch(project, once=True) == 0  # the snapshot advanced after the event


def test_unsent_event_keeps_the_changes_for_the_next_start(project, monkeypatch):
    monkeypatch.setattr(watch, "emit", lambda root, name, p: False)  # server down
    watch.watch(project, once=True)
    (project / "incoming" / "new.txt").write_text("arrived while the server was down")
    assert watch.watch(project, once=True) == 0
    sent = []
    monkeypatch.setattr(watch, "emit", lambda root, name, p: sent.append(p) or True)
    assert watch.watch(project, once=True) == 1 and len(sent[0].changed) == 1


def test_cli_needs_a_prefect_server(project, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["watch", "--project", str(project)]) == 2
    err = capsys.readouterr().err
    assert "set PREFECT_API_URL" in err and len(err.strip().splitlines()) == 1
    assert not (project / watch.STATE).exists()  # nothing written


def test_deploy_env_carries_the_trigger_resource_and_debounce(params):
    from flows.cli_ops import watch_trigger_env

    env = watch_trigger_env(params)
    assert env["GRUFLOW_PROJECT_RESOURCE"] == f"gruflow.project.{params.registry.model_name}"
    assert env["GRUFLOW_DEBOUNCE"] == f"PT{params.orchestration.debounce}S"
    trigger = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"][0]["triggers"][0]
    assert trigger["expect"] == [watch.EVENT] and trigger["posture"] == "Reactive"
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    filled = {
        **trigger,
        "within": env["GRUFLOW_DEBOUNCE"],
        "match": {"prefect.resource.id": env["GRUFLOW_PROJECT_RESOURCE"]},
    }
    assert DeploymentEventTrigger(**filled).within.total_seconds() == params.orchestration.debounce


def test_a_file_removed_between_listing_and_stat_is_not_a_crash(project, monkeypatch):
    """A busy folder: a file listed by the walk can be gone (moved away, a cleanup job) before
    its stat. The long-running watcher must not die of it; the file is simply not there (a
    removal, if it was seen before)."""
    folder = project / "incoming"
    (folder / "a.txt").write_text("one")
    gone = folder / "gone.txt"
    real = watch.source_files
    monkeypatch.setattr(watch, "source_files", lambda src, inc: [*real(src, inc), gone])
    assert list(watch.take_snapshot([folder], ["**/*"])) == [str(folder / "a.txt")]
