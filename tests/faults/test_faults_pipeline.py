"""Faults at the real entry point (`gruflow run` processes) on one tiny project, in order:
two concurrent fresh runs under a CPU hog, a bad source after the good run, SIGKILL during a
data stage, during train, during each of ingest, tokenize, embed, tune and evaluate in turn,
right after the registry created the version, then a failed `dvc push` and credentials in
both URLs against a real MLflow server. Each test leaves the
project as the good run left it (up to new MLflow runs and versions)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.faults.kit import (
    digests,
    dvc_status,
    error_lines,
    fault_env,
    gruflow,
    kill_when,
    runs_by_status,
    stage_command_running,
    start,
    temp_leftovers,
    versions,
)
from tests.test_orchestration_faults import _wait_up, mlflow_server  # noqa: F401 (fixture)
from tests.test_pipeline_e2e import STAGES, tiny_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
SECRET, SECRET2 = "Tr4ck1ng-S3cret", "Dvc-R3mote-S3cret"
UP_TO_DATE = "Data and pipelines are up to date."
OUTPUTS = (
    "data",
    "reports",
    "artifacts/tokenizer.json",
    "artifacts/model.keras",
    "artifacts/embeddings.npy",
    "dvc.lock",
)


def _startup_seconds(log: Path) -> float:
    """From Prefect's 'Starting temporary server' to the flow run's first line (log file)."""
    stamps = {}
    for line in log.read_text().splitlines():
        for key, marker in (("start", "Starting temporary server"), ("flow", "Beginning flow run")):
            if marker in line and key not in stamps:
                stamps[key] = datetime.strptime(line[:12], "%H:%M:%S.%f")
    return (stamps["flow"] - stamps["start"]).total_seconds()


def _log_of(stderr: str, project: Path) -> Path:
    logs = sorted((project / ".gruflow" / "logs").glob("*.log"))
    named = re.findall(r"\(log: (.+?\.log)\)", stderr)
    return Path(named[-1]) if named else logs[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A fresh project; two `gruflow run` started together while two busy processes hog both
    cores until the first run's flow has begun (Prefect's temporary server is up)."""
    base = tmp_path_factory.mktemp("faults")
    project = tiny_project(base)
    env = fault_env(base)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    began = time.monotonic()
    try:
        first = start(project, env, base / "first")
        while not (project / ".gruflow" / "lock.holder").exists():
            assert first.poll() is None, (base / "first.err").read_text()[-3000:]
            time.sleep(0.05)
        second = start(project, env, base / "second")
        # the log file (the console leaves Prefect's start-up lines out)
        while first.poll() is None and not any(
            "Beginning flow run" in log.read_text()
            for log in (project / ".gruflow" / "logs").glob("*.log")
        ):
            time.sleep(0.2)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    first.wait(timeout=1500)
    second.wait(timeout=600)
    result = {
        "base": base,
        "project": project,
        "env": env,
        "seconds": time.monotonic() - began,
        "metrics": (project / "reports/metrics.json").read_bytes()
        if (project / "reports/metrics.json").exists()
        else b"",
    }
    for name, proc in (("first", first), ("second", second)):
        result[name] = subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            (base / f"{name}.out").read_text(),
            (base / f"{name}.err").read_text(),
        )
    return result


def test_two_fresh_runs_under_cpu_hog_second_waits(trained):
    first, second, project = trained["first"], trained["second"], trained["project"]
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"stages executed: {', '.join(STAGES)}" in first.stdout
    assert "stages executed: none" in second.stdout
    assert re.search(r"gruflow: waiting for pid \d+ \(gruflow run", second.stderr)
    assert "Traceback" not in first.stderr + second.stderr
    startup = _startup_seconds(_log_of(first.stderr, project))
    print(
        f"\nPrefect start-up under the CPU hog: {startup:.1f} s (default limit 20 s, "
        f"gruflow's 180 s); both runs {trained['seconds']:.0f} s"
    )
    assert versions(f"sqlite:///{project / 'mlflow.db'}")[0][0] == "1"


def _set_source(project: Path, source: str) -> str:
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["data"]["source"] = source
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return original


# case: (what the error line says, the warning lines before it: `{source}` is the path)
BAD_SOURCES = {
    "missing": ("does not exist", []),
    "cleans-to-nothing": ("stage clean failed: ", []),
    # UTF-16 is mostly NUL bytes: the reader skips the file with a warning (a run whose other
    # files are good goes on, counting it); with nothing else the error counts it too
    "utf16.txt": (
        "yielded no documents (1 files: 0 empty, 1 skipped as binary;",
        [
            "{source}: skipped, looks binary (over 30% control or non-UTF-8 bytes) — "
            "convert text to UTF-8"
        ],
    ),
    "image.png": ("unsupported file type", []),
    "no-text-column.jsonl": ("no column 'text' (has ['body'])", []),
    "int64-text.parquet": ("column 'text' holds int64, not text", []),
}


def _bad_source(base: Path, case: str) -> Path:
    source = base / (case if "." in case else f"{case}.jsonl")
    lines = [f"the parser reads line {i} of the corpus." for i in range(200)]
    if case == "cleans-to-nothing":
        source.write_text("".join(json.dumps({"text": "ab"}) + "\n" for _ in range(50)))
    elif case == "utf16.txt":
        source.write_text("\n".join(lines), encoding="utf-16")
    elif case == "image.png":
        source.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16)
    elif case == "no-text-column.jsonl":
        source.write_text("".join(json.dumps({"body": line}) + "\n" for line in lines))
    elif case == "int64-text.parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": pa.array(range(200), pa.int64())}), source)
    return source


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_source_after_good_run_leaves_project_identical(trained, case):
    """missing, UTF-16, PNG, JSONL without the text key, Parquet with an int64 text column:
    ingest fails (DVC deleted its outputs; they come back). cleans-to-nothing: ingest succeeds
    on the new source, clean fails; the run rolls ingest back too. The whole stderr is the
    one error line (after the reader's warning naming a skipped file, for UTF-16)."""
    project, env, base = trained["project"], trained["env"], trained["base"]
    before = digests(project, *OUTPUTS)
    source = _bad_source(base, case)
    original = _set_source(project, str(source))
    try:
        out = gruflow(project, env, "--no-push")
    finally:
        (project / "params.yaml").write_text(original)
    assert out.returncode == 2, out.stderr[-3000:]
    says, warnings = BAD_SOURCES[case]
    stage = "clean" if case == "cleans-to-nothing" else "ingest"
    *before_error, line = [x for x in out.stderr.splitlines() if x]
    assert before_error == [w.format(source=source) for w in warnings], out.stderr
    assert line.startswith(f"gruflow: error: stage {stage} failed: ") and says in line, line
    assert line.endswith(".log)") and error_lines(out.stderr) == [line]
    assert digests(project, *OUTPUTS) == before
    assert UP_TO_DATE in dvc_status(project, env)
    assert "Traceback" in _log_of(out.stderr, project).read_text()


def _after_rerun(trained, rerun, stage: str) -> None:
    project = trained["project"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert stage in rerun.stdout.split("stages executed: ")[1].splitlines()[0]
    assert UP_TO_DATE in dvc_status(project, trained["env"])
    assert (project / "reports/metrics.json").read_bytes() == trained["metrics"]
    status = runs_by_status(project)
    assert "RUNNING" not in status and status.get("KILLED", 0) >= 1, status
    held = versions(f"sqlite:///{project / 'mlflow.db'}")
    assert all(md5 for _, md5 in held) and len({md5 for _, md5 in held}) == len(held), held
    assert not temp_leftovers(project), "temp leftovers"


def test_sigkill_during_clean_then_rerun(trained):
    project, env, base = trained["project"], trained["env"], trained["base"]
    shutil.rmtree(project / "data" / "clean")  # clean must run again (same result), not be
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)  # run-cache restored
    proc = start(project, env, base / "kill-clean", "--no-push")
    kill_when(proc, lambda: bool(list((project / "data").glob(".clean.*"))))
    _after_rerun(trained, gruflow(project, env, "--no-push"), "clean")


def test_sigkill_during_train_then_rerun(trained):
    project, env, base = trained["project"], trained["env"], trained["base"]
    (project / "artifacts" / "model.keras").unlink()  # train must run again, so its cached
    _uncache(project, "train", "artifacts/model.keras")  # copy must go too (DVC restores it)
    proc = start(project, env, base / "kill-train", "--no-push")
    kill_when(proc, lambda: (project / "artifacts/checkpoints/state.json").exists())
    rerun = gruflow(project, env, "--no-push")
    assert "train: resuming after epoch 1" in rerun.stdout + rerun.stderr
    _after_rerun(trained, rerun, "train")


KILLED_STAGES = ("ingest", "tokenize", "embed", "tune", "evaluate")


def test_sigkill_during_each_other_stage_then_rerun(trained):
    """The outputs of ingest, tokenize, embed, tune (and its journal) and evaluate are gone
    with their cached copies, so one run after another reruns them; each run is killed while
    the next of these stages runs (its command alive below gruflow; tune: once a trial is
    complete in its journal), after the stage killed before it ran again. A final run ends
    as the uninterrupted run did."""
    project, env, base = trained["project"], trained["env"], trained["base"]
    for stage in KILLED_STAGES:
        _uncache_stage(project, stage)
    shutil.rmtree(project / "artifacts" / "tune")  # the journal: tune's trials must run again
    for before, stage in zip((None, *KILLED_STAGES), KILLED_STAGES, strict=False):
        proc = start(project, env, base / f"kill-{stage}", "--no-push")
        if stage == "tune":
            kill_when(proc, lambda: _completed_trials(project) > 0)
        else:
            kill_when(proc, lambda p=proc, s=stage: stage_command_running(p, s))
        out = (base / f"kill-{stage}.out").read_text()
        assert f"Running stage '{stage}'" in out, out[-3000:]
        assert before is None or f"Running stage '{before}'" in out, out[-3000:]
    rerun = gruflow(project, env, "--no-push")
    assert "Running stage 'evaluate'" in rerun.stdout
    _after_rerun(trained, rerun, "evaluate")


def _uncache_stage(project: Path, stage: str) -> None:
    """Delete every output of `stage` and its copy in the DVC cache (a folder's manifest),
    and the run cache, so DVC runs the stage again instead of restoring it."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    for out in lock["outs"]:
        path = project / out["path"]
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        md5 = out["md5"]
        (project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink(missing_ok=True)
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)


def _completed_trials(project: Path) -> int:
    """Trials the tune stage's Optuna journal records as COMPLETE (state 1 in op 6)."""
    journal = project / "artifacts" / "tune" / "study.journal"
    if not journal.is_file():
        return 0
    count = 0
    for line in journal.read_text().splitlines():
        try:
            op = json.loads(line)
        except ValueError:  # the line being written
            continue
        count += op.get("op_code") == 6 and op.get("state") == 1
    return count


def test_sigkill_right_after_created_version_then_rerun(trained, tmp_path):
    """A fresh registry (its own sqlite store): killed as MLflow says `Created version '1'`;
    the version already carries model_md5 (tags are created with it), so the rerun gates
    version 1 instead of registering a duplicate."""
    project, base = trained["project"], trained["base"]
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    env = {**trained["env"], "MLFLOW_TRACKING_URI": uri}
    proc = start(project, env, base / "kill-register", "--no-push")
    # MLflow's "Created version '1'" goes to the log file; the registry row is the same moment
    kill_when(proc, lambda: _has_version(tmp_path / "registry.db"))
    assert [md5 for _, md5 in versions(uri)] != [""]  # complete, or not created at all
    rerun = gruflow(project, env, "--no-push")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(versions(uri)) == 1 and versions(uri)[0][1]
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(uri, uri).get_model_version("gruflow-lm", "1").tags
    assert "gate.promoted" in tags
    assert "RUNNING" not in runs_by_status(project, uri)


def _uncache(project: Path, stage: str, out: str) -> None:
    """Remove `out`'s copy from the DVC cache (and the run cache), so DVC reruns `stage`."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]
    md5 = next(o["md5"] for o in lock["outs"] if o["path"] == out)
    (project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)


def _has_version(db: Path) -> bool:
    """A model version row exists (read-only: the test must not create or migrate the DB)."""
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return bool(con.execute("SELECT count(*) FROM model_versions").fetchone()[0])
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return False


def _files_holding(secret: bytes, *folders: Path) -> list[str]:
    return [
        str(p)
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file() and secret in p.read_bytes()
    ]


def test_failed_push_and_credentials_never_stored(trained, mlflow_server):  # noqa: F811
    """Tracking URI and DVC remote URL both carry a password; the remote is unreachable. The
    good run registers on the server and ends with one line (model registered, push failed,
    exit 1); a failing run ends with one line too. Neither password is in any output, file,
    log, the Prefect database or the MLflow server's store."""
    project, base = trained["project"], trained["base"]
    _wait_up(mlflow_server)
    uri = f"http://gruflow:{SECRET}@127.0.0.1:{mlflow_server['port']}"
    env = {
        **trained["env"],
        "MLFLOW_TRACKING_URI": uri,
        "GRUFLOW_DVC_REMOTE": f"http://dvc:{SECRET2}@127.0.0.1:9/remote",
    }
    good = gruflow(project, env)
    assert good.returncode == 1, good.stderr[-3000:]
    lines = error_lines(good.stderr)
    assert (
        len(lines) == 1
        and "model version 1 is registered, but `dvc push` failed" in lines[0]
        and "dvc push" in lines[0]
    )
    assert "registered model version 1" in good.stdout
    assert f"http://gruflow:***@127.0.0.1:{mlflow_server['port']}" in good.stdout
    original = _set_source(project, str(base / "missing.jsonl"))
    try:
        bad = gruflow(project, env)
    finally:
        (project / "params.yaml").write_text(original)
    assert bad.returncode == 2 and len(error_lines(bad.stderr)) == 1
    for out in (good, bad):
        assert "Traceback" not in out.stderr
        for secret in (SECRET, SECRET2):
            assert secret not in out.stdout + out.stderr
    for secret in (SECRET, SECRET2):
        assert (
            _files_holding(secret.encode(), project, base / "prefect-home", mlflow_server["base"])
            == []
        )
