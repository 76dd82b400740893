"""`gruflow lineage VERSION` and `gruflow history`: where a registered model came from, on one
screen, read from the tags the pipeline wrote on the version and the registry's alias history.

Usage: `gruflow lineage 3 [--name gruflow-lm]`, `gruflow history [--name gruflow-lm]`.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

from components.errors import GruflowError
from components.params import load_params


def version_tags(name: str, version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return dict(MlflowClient().get_model_version(name, str(version)).tags)
    except MlflowException:
        raise GruflowError(
            f"model '{name}' has no version {version} — see the registry "
            "(mlflow ui) for the versions that exist"
        ) from None


def stage_of_outputs(lock: dict) -> dict[str, str]:
    """Output path -> stage, from a parsed dvc.lock."""
    return {
        out["path"]: stage
        for stage, entry in (lock.get("stages") or {}).items()
        for out in entry.get("outs", [])
    }


def read_lock(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def params_at(root: Path, commit: str) -> dict | None:
    """params.yaml as committed at `commit`; None when git cannot show it."""
    shown = subprocess.run(
        ["git", "show", f"{commit}:params.yaml"], cwd=root, capture_output=True, text=True
    )
    return yaml.safe_load(shown.stdout) if shown.returncode == 0 else None


def params_diff(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, value then, value now) for every key that differs."""
    a, b = flatten(old), flatten(new)
    return [
        (k, a.get(k, "(absent)"), b.get(k, "(absent)"))
        for k in sorted(set(a) | set(b))
        if a.get(k, "(absent)") != b.get(k, "(absent)")
    ]


def _section(title: str, rows: list[str]) -> list[str]:
    return ["", title, *(rows or ["  (none recorded)"])]


def render(root: Path, name: str, version: str, tags: dict[str, str], history: list[dict]) -> str:
    commit = tags.get("git_commit", "unknown")
    lines = [
        f"{name} version {version}",
        f"  commit {commit}  dirty: {tags.get('git_dirty', '?')}  reproducible: "
        f"{tags.get('reproducible', '?')}  params digest {tags.get('params_digest', '?')}",
    ]
    then = params_at(root, commit) if commit != "unknown" else None
    now = yaml.safe_load((root / "params.yaml").read_text())
    if then is None:
        diff_rows = [f"  (commit {commit[:12]} not in this repository: cannot compare)"]
    else:
        diff_rows = [f"  {k}: {a!r} then, {b!r} now" for k, a, b in params_diff(then, now)] or [
            "  (same as the current params.yaml)"
        ]
    lines += ["", "params that differ from the current params.yaml", *diff_rows]
    stages = stage_of_outputs(read_lock(root / "dvc.lock"))
    outs = sorted(
        (stages.get(k[4:], "?"), k[4:], v) for k, v in tags.items() if k.startswith("dvc.")
    )
    lines += _section(
        "data hash per stage (dvc.lock md5)", [f"  {s:9} {p:40} {h}" for s, p, h in outs]
    )
    lines += _section(
        "metrics", [f"  {k[7:]:22} {v}" for k, v in sorted(tags.items()) if k.startswith("metric.")]
    )
    gate = (
        [f"  promoted: {tags['gate.promoted']} — {tags.get('gate.reason', '')}"]
        if "gate.promoted" in tags
        else []
    )
    lines += _section("gate decision", gate)
    verdict = (
        [
            f"  {tags['reproduce.verdict']} on {tags.get('reproduce.date', '?')}; "
            f"mismatches: {tags.get('reproduce.mismatches') or 'none'}"
        ]
        if "reproduce.verdict" in tags
        else [f"  (never checked: run gruflow reproduce {version})"]
    )
    lines += ["", "reproduce verdict", *verdict]
    mine = [e for e in history if version in (e["old"], e["new"])]
    lines += _section(
        "alias history of this version",
        [
            f"  {e['time']}  {e['alias']}: {e['old'] or '-'} -> {e['new']}  "
            f"({e['kind']}: {e['reason']})"
            for e in mine
        ],
    )
    return "\n".join(lines)


def _lineage(args: argparse.Namespace) -> int:
    from flows import alias_history
    from flows.cli import _registry

    root, name = _registry(args)
    name = args.name or name
    print(
        render(
            root,
            name,
            str(args.version),
            version_tags(name, str(args.version)),
            alias_history.events(name),
        )
    )
    return 0


def _history(args: argparse.Namespace) -> int:
    from flows import alias_history, retrain_history
    from flows.cli import _registry

    root, name = _registry(args)
    name = args.name or name
    print(alias_history.render(name, alias_history.events(name)))
    experiment = load_params(root / "params.yaml").mlflow.experiment
    print("\n" + retrain_history.render(retrain_history.decisions(experiment)))
    return 0


def add_commands(sub, common) -> None:
    lineage = sub.add_parser(
        "lineage",
        parents=[common],
        help="where a registered version came from: commit, params diff, "
        "data hashes, metrics, gate, reproduce verdict, alias history",
    )
    lineage.add_argument("version", type=int, help="registered model version number")
    lineage.set_defaults(func=_lineage)
    history = sub.add_parser(
        "history",
        parents=[common],
        help="who was champion when: every alias change, "
        "and every retrain decision with its drift numbers",
    )
    history.set_defaults(func=_history)
    for p in (lineage, history):
        p.add_argument("--name", help="registered model (default: registry.model_name)")
