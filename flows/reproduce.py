"""`gruflow reproduce VERSION`: rebuild a registered version from its lineage and compare.

Usage: `gruflow reproduce 3 [--name gruflow-lm] [--project DIR]`.
The version's commit is checked out into a temporary git worktree; its input (the ingest
snapshot) is pulled from the DVC remote by the version's own dvc.lock, or rebuilt from
data.source when the remote lacks it; every other stage is rerun there by DVC, isolated (its own
MLflow store, nothing logged or registered in the user's). Each output hash is compared with the
version's `dvc.*` tags and each metric with its `metric.*` tags; the verdict is recorded on the
version as `reproduce.verdict` / `reproduce.date` / `reproduce.mismatches`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from components.errors import GruflowError
from components.params import Params, load_params
from flows.lineage import read_lock, stage_of_outputs, version_tags

INPUT_STAGE = "ingest"  # its outputs are the run's inputs: pulled, not rebuilt, when possible


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def check_source(root: Path, tags: dict[str, str], name: str, version: str) -> str:
    """The version's commit, or a one-line refusal: dirty tree, unknown or unreachable commit."""
    commit = tags.get("git_commit", "")
    if tags.get("git_dirty") != "False":
        raise GruflowError(
            f"{name} version {version} was built from a working tree with "
            f"uncommitted changes (git_dirty={tags.get('git_dirty', 'unknown')}):"
            " its code and params are in no commit, so it cannot be reproduced"
        )
    if not commit or _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode:
        raise GruflowError(
            f"{name} version {version}: commit {commit or '(none)'} is not in "
            f"the repository at {root} — fetch it (git fetch) and try again"
        )
    return commit


def version_lock(tags: dict[str, str], dest: Path) -> dict:
    """The dvc.lock the version was built with (logged with the model), or {}."""
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=tags["mlflow_run_id"], artifact_path="lineage/dvc.lock", dst_path=str(dest)
        )
    except Exception:  # older versions, pruned artifacts: fall back to the commit's lock
        return {}
    return read_lock(Path(path))


def pull_inputs(root: Path, params: Params, wt: Path, lock: dict, echo) -> bool:
    """Put the version's ingest outputs into the worktree from the DVC remote; False (said on
    the console) when that is impossible and ingest must rebuild them from data.source."""
    from dvc.repo import Repo

    from flows import placement

    if INPUT_STAGE not in (lock.get("stages") or {}):
        echo("reproduce: the version's dvc.lock is unknown: rebuilding the inputs from data.source")
        return False
    (wt / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    url = placement.remote_url(root, params)  # the user's remote, made absolute
    saved = os.environ.get("GRUFLOW_DVC_REMOTE")
    try:
        if url:
            os.environ["GRUFLOW_DVC_REMOTE"] = url
        placement.ensure_remote(wt, load_params(wt / "params.yaml"))
        with Repo(str(wt)) as repo:
            repo.pull(targets=[f"{wt / 'dvc.yaml'}:{INPUT_STAGE}"])
    except Exception as exc:  # no remote, object missing, unreachable: rebuild instead
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        echo(
            f"reproduce: the DVC remote lacks the inputs ({reason}): rebuilding them from "
            "data.source"
        )
        return False
    finally:
        os.environ.pop("GRUFLOW_DVC_REMOTE", None)
        if saved is not None:
            os.environ["GRUFLOW_DVC_REMOTE"] = saved
    echo(f"reproduce: inputs ({INPUT_STAGE} outputs) pulled from the DVC remote")
    return True


def run_stages(wt: Path, scratch: Path, skip: set[str], echo) -> None:
    """Every stage of the commit's dvc.yaml, forced, in order, in the worktree."""
    stages = [s for s in yaml.safe_load((wt / "dvc.yaml").read_text())["stages"] if s not in skip]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GRUFLOW_", "MLFLOW_"))
    }  # no live logging, no shared study
    bin_dir = Path(sys.executable).parent
    env |= {
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    }
    for i, stage in enumerate(stages, 1):
        echo(f"reproduce: [{i}/{len(stages)}] {stage} ...")
        t0 = time.monotonic()
        done = subprocess.run(
            [str(bin_dir / "dvc"), "repro", "--force", "--single-item", stage],
            cwd=wt,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise GruflowError(f"reproduce: stage {stage} failed in the checkout: {last}")
        echo(f"reproduce: [{i}/{len(stages)}] {stage} done ({time.monotonic() - t0:.0f} s)")


def compare(
    tags: dict[str, str], lock: dict, metrics: dict, inputs: set[str], gpu: bool, rtol: float
) -> tuple[list[tuple[str, str, str, str]], list[str], str]:
    """(rows: name | recorded | reproduced | match, mismatches, verdict)."""
    stages = stage_of_outputs(lock)
    outs = {
        o["path"]: o.get("md5", "")
        for e in (lock.get("stages") or {}).values()
        for o in e.get("outs", [])
    }
    rows, mismatches, close = [], [], True
    for key in sorted(k for k in tags if k.startswith("dvc.")):
        path = key[4:]
        label, got = f"{stages.get(path, '?')}: {path}", outs.get(path, "(missing)")
        match = "input" if path in inputs else "yes" if got == tags[key] else "NO"
        if match == "NO":
            mismatches.append(label)
        rows.append((label, tags[key], got, match))
    for key in sorted(k for k in tags if k.startswith("metric.")):
        name, recorded, value = key[7:], float(tags[key]), metrics.get(key[7:])
        got = float(value) if isinstance(value, int | float) else None
        within = got is not None and abs(got - recorded) <= rtol * abs(recorded)
        match = "yes" if got == recorded else "within tol" if gpu and within else "NO"
        if match != "yes":
            mismatches.append(f"metric {name}")
            close = close and match == "within tol"
        rows.append((f"metric {name}", tags[key], "(missing)" if got is None else repr(got), match))
    verdict = "identical" if not mismatches else "within_tolerance" if gpu and close else "differs"
    return rows, mismatches, verdict


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("stage or metric", "recorded", "reproduced", "match")
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip() for r in [head, *rows]
    )


def reproduce(
    root: Path, params: Params, name: str, version: str, echo: Callable[[str], None] = print
) -> dict:
    """Rebuild `version` in a temporary worktree, compare, record the verdict on it."""
    from mlflow.tracking import MlflowClient

    tags = version_tags(name, version)
    commit = check_source(root, tags, name, version)
    echo(f"reproduce: {name} version {version} from commit {commit[:12]}")
    with tempfile.TemporaryDirectory(prefix="gruflow-reproduce-") as tmp:
        scratch, wt = Path(tmp), Path(tmp) / "project"
        if _git(root, "worktree", "add", "--detach", str(wt), commit).returncode:
            raise GruflowError(f"reproduce: git could not check out {commit[:12]} into {wt}")
        try:
            pulled = pull_inputs(root, params, wt, version_lock(tags, scratch), echo)
            run_stages(wt, scratch, {INPUT_STAGE} if pulled else set(), echo)
            lock, wp = read_lock(wt / "dvc.lock"), load_params(wt / "params.yaml")
            reports = wt / wp.paths.reports
            metrics = json.loads((reports / "metrics.json").read_text())
            device = json.loads((reports / "train.json").read_text()).get("device", "")
            inputs = {o["path"] for o in lock["stages"][INPUT_STAGE]["outs"]} if pulled else set()
        finally:
            _git(root, "worktree", "remove", "--force", str(wt))
            _git(root, "worktree", "prune")
    gpu = "GPU" in device or "GPU" in tags.get("train_device", "")
    rows, mismatches, verdict = compare(
        tags, lock, metrics, inputs, gpu, params.reproduce.gpu_metric_rtol
    )
    client = MlflowClient()
    record = {
        "reproduce.verdict": verdict,
        "reproduce.date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reproduce.mismatches": ", ".join(mismatches)[:5000] or "none",
    }
    for key, value in record.items():
        client.set_model_version_tag(name, version, key, value)
    return {"rows": rows, "mismatches": mismatches, "verdict": verdict, "pulled": pulled}


def _reproduce(args: argparse.Namespace) -> int:
    from flows.cli import _registry

    root, name = _registry(args)
    name = args.name or name
    result = reproduce(root, load_params(root / "params.yaml"), name, str(args.version))
    print(table(result["rows"]))
    print(
        f"gruflow: {name} version {args.version}: {result['verdict']}"
        + (
            f" ({len(result['mismatches'])} mismatch(es): {', '.join(result['mismatches'][:5])})"
            if result["mismatches"]
            else ""
        )
    )
    return 0 if result["verdict"] != "differs" else 1


def add_commands(sub, common) -> None:
    p = sub.add_parser(
        "reproduce",
        parents=[common],
        help="rebuild a registered version from its commit in a temporary "
        "worktree and compare every output hash and metric with what was "
        "recorded",
    )
    p.add_argument("version", type=int, help="registered model version number")
    p.add_argument("--name", help="registered model (default: registry.model_name)")
    p.set_defaults(func=_reproduce)
