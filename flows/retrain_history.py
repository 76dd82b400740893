"""Retrain decisions for `gruflow history`: every `gruflow retrain` that trained or skipped,
with its policy, reason and the drift numbers behind it, read back from the MLflow runs the
retrain flow tagged (`retrain` = trained | skipped, metrics `drift.*`).

Usage: `print(render(decisions(experiment)))`.
"""

from __future__ import annotations

import datetime as dt

from mlflow.tracking import MlflowClient

SHOWN = (
    ("drift.bpb_ratio", "bpb ratio"),
    ("drift.fallback_rise", "fallback rise"),
    ("drift.js_divergence", "JS"),
    ("drift.champion_age_days", "age d"),
    ("drift.new_documents", "new docs"),
)
COUNT = "drift.new_documents"


def decisions(experiment: str) -> list[dict]:
    """The experiment's retrain runs, oldest first: time, decision, policy, reason, numbers."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = sorted(
        (
            r
            for value in ("trained", "skipped")  # tags allow no IN (...) filter
            for r in client.search_runs(
                [exp.experiment_id], f"tags.retrain = '{value}'", max_results=1000
            )
        ),
        key=lambda r: r.info.start_time,
    )
    return [
        {
            "time": dt.datetime.fromtimestamp(r.info.start_time / 1000, dt.UTC).isoformat(
                timespec="seconds"
            ),
            "retrain": r.data.tags["retrain"],
            "policy": r.data.tags.get("retrain.policy", "-"),
            "reason": r.data.tags.get("retrain_reason", ""),
            "metrics": {k: v for k, v in r.data.metrics.items() if k.startswith("drift.")},
            "run_id": r.info.run_id,
        }
        for r in runs
    ]


def render(rows: list[dict]) -> str:
    if not rows:
        return "retrain decisions: none recorded yet"
    lines = ["retrain decisions", f"{'time':25}  {'retrain':8}  {'policy':9}  numbers / reason"]
    for r in rows:
        numbers = ", ".join(
            f"{label} {r['metrics'][key]:.{0 if key == COUNT else 3}f}"
            for key, label in SHOWN
            if key in r["metrics"]
        )
        lines.append(
            f"{r['time']:25}  {r['retrain']:8}  {r['policy']:9}  "
            f"{numbers + ' — ' if numbers else ''}{r['reason']}"
        )
    return "\n".join(lines)
