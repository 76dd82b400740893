"""The text a retrain publishes, from plain data (no Prefect, MLflow or DVC here): the
`gruflow-retrain` markdown artifact of a skip or a training run, its cost tables (what the run
cost, what a skip saved) and the CLI's cost lines.

Usage: `skip_markdown(...)`, `trained_markdown(...)`, `resources_markdown(stages, ran, drift)`,
`saved_line(stages, ran)`, `cost_line(stages, ran, drift)` — `stages` is the `stages` mapping
of reports/resources.json (flows/resources.py), `ran` the stages this retrain executed
(forced ingest, clean, ...), `drift` the wall/CPU seconds of the drift scoring or None.
"""

from __future__ import annotations

from flows.resources import NUMBERS, total

DRIFT_ROW = "drift scoring"  # the flow's own work: champion loaded, new and old text scored


def _cost_rows(rows: dict[str, dict]) -> list[str]:
    lines = [
        "| stage | wall s | CPU s | peak RSS MiB | GPU s | GPU MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in [*rows.items(), ("total", total(rows))]:
        cells = [("-" if e.get(k) is None else f"{e[k]:g}") for k in NUMBERS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _ran(stages: dict, ran: list[str], drift: dict | None) -> dict[str, dict]:
    """The entries of the stages that ran, plus the drift scoring (not a stage: its peak
    memory and GPU use are not measured)."""
    rows = {s: stages[s] for s in ran if s in stages}
    if drift:
        rows[DRIFT_ROW] = {k: drift.get(k) for k in NUMBERS}
    return rows


def resources_markdown(
    stages: dict, ran: list[str], drift: dict | None = None, skipped: bool = False
) -> str:
    """The artifact's cost section: what this run cost (the stages it executed and the drift
    scoring); for a skip also what it saved — the last measured cost of every stage that did
    not run."""
    rows = _ran(stages, ran, drift)
    title = "What this skip cost" if skipped else "Resources of this run"
    out = [f"\n## {title}\n"]
    out += _cost_rows(rows) if rows else ["Nothing recorded (reports/resources.json)."]
    if skipped:
        rest = {s: e for s, e in stages.items() if s not in ran}
        out.append("\n## What this skip saved (each stage's last measured run)\n")
        out += _cost_rows(rest) if rest else ["No stage cost recorded yet."]
    return "\n".join(out) + "\n"


def saved_line(stages: dict, ran: list[str]) -> str:
    """For a skipped retrain: the last measured cost of every stage that did not run."""
    rest = {s: e for s, e in stages.items() if s not in ran}
    if not rest:
        return "no stage cost recorded yet"
    t = total(rest)
    return (
        f"saved about {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} CPU s: the last measured "
        f"cost of {len(rest)} stage(s)"
    )


def cost_line(stages: dict, ran: list[str], drift: dict | None = None) -> str:
    """What the run itself cost: its stages (as recorded) plus the drift scoring."""
    rows = _ran(stages, ran, drift)
    if not rows:
        return "cost: nothing recorded"
    t = total(rows)
    return f"cost {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} CPU s ({', '.join(rows)})"


def skip_markdown(
    model: str, version: str, reason: str, run_id: str, tracking_uri: str, sections: list[str]
) -> str:
    """The artifact of a skipped retrain: why, the champion, the MLflow run, then `sections`
    (the drift section when drift was measured, the cost section)."""
    text = (
        f"# gruflow retrain: skipped\n\n{reason}.\n\n| | |\n|---|---|\n"
        f"| model | {model} version {version} |\n"
        f"| MLflow run | {run_id} ({tracking_uri}) |\n"
    )
    return text + "".join("\n" + s for s in sections)


def trained_markdown(
    model: str,
    reason: str,
    executed: list[str],
    run_id: str,
    tracking_uri: str,
    metrics: dict,
    version: str | None,
    gate_tags: dict[str, str],
    pushed: int,
) -> str:
    """The head of a training retrain's artifact: why, the stages, the metrics, the gate."""
    lines = [
        "# gruflow retrain: trained\n",
        f"Why: {reason}.\n",
        f"Stages executed: {', '.join(executed) or 'none'}\n",
        f"MLflow parent run `{run_id}` in `{tracking_uri}`\n",
    ]
    numbers = {
        k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    if numbers:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in numbers.items()]
        lines.append("")
    if version:
        lines += [
            f"## Gate: {model} version {version} (models:/{model}/{version})\n",
            "| | |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in sorted(gate_tags.items()) if k.startswith("gate.")]
    else:
        lines.append("No new model version (the registry already holds this model).")
    lines.append(f"\n{pushed} file(s) pushed to the DVC remote.")
    return "\n".join(lines)
