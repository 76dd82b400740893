"""A retrain's drift check, before any training: the clean stage, the champion's drift on the
new documents (flows/drift_check.py), the policy's decision, and the costs of what ran before
the retrain's MLflow run existed.

Usage (from flows/retrain.py): `drifted = measure_drift(root, params, why, force)`;
`record_costs(root, run_id, ran, drifted)`; `drift_record(run_id, params, drifted)`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from components.drift import Decision, decide
from components.params import Params
from flows import resources
from flows.secrets import redacted_errors

log = logging.getLogger(__name__)


@dataclass
class Drifted:
    report: dict
    decision: Decision
    path: Path
    clean_ran: bool = False  # measure_drift executed the clean stage
    cost: dict = field(default_factory=dict)  # wall_s, cpu_s of the drift scoring itself


def drift_report(root: Path, params: Params) -> dict:
    """drift_check.measure, never failing the retrain: any error is recorded as
    {"unavailable": why} with a one-line warning (on_drift then trains, as for a champion whose
    lineage cannot be read; on_change and always train anyway)."""
    from flows import drift_check

    try:
        return drift_check.measure(root, params)
    except Exception as exc:  # noqa: BLE001 -- a measurement, never a reason to fail
        why = f"drift measurement failed: {type(exc).__name__}: {exc}".splitlines()[0]
        log.warning("gruflow retrain: %s", why)
        return {"unavailable": why}


@task(name="measure-drift")
@redacted_errors
def measure_drift(root: Path, params: Params, why_changed: str, force: bool = False) -> Drifted:
    """Before any training: the clean stage (new documents cleaned and split; forced with
    `force`), then the champion's drift on them (reports/drift.json) and the policy's decision.
    Its own cost (wall, CPU of this process: model load and scoring) is kept in `cost`."""
    from flows import drift_check
    from flows.pipeline import step  # the clean stage where params place it

    not_data = drift_check.non_data_changes(root)  # before clean: its deps still say why
    clean_ran, _ = step(root, params, "clean", force)
    wall, cpu = time.perf_counter(), time.process_time()
    report = drift_report(root, params)
    decision = decide(params.retrain, report, report.get("age_days"), why_changed, not_data)
    path = drift_check.write(root, params, report, decision)
    cost = {
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
    }
    return Drifted(report, decision, path, clean_ran, cost)


def record_costs(root: Path, run_id: str, ran: list[str], drifted: Drifted | None) -> dict:
    """The resources.json entries of `ran` (stages executed before this MLflow run existed:
    forced ingest, clean) and the drift scoring's cost onto the retrain's run; returns the
    report's stages."""
    stages = resources.read(root).get("stages", {})
    entries = {s: stages[s] for s in ran if s in stages}
    if drifted is not None and drifted.cost:
        entries["drift"] = drifted.cost
    resources.log_entries(run_id, entries)
    return stages


def drift_record(run_id: str, params: Params, drifted: Drifted) -> str:
    """Drift numbers and decision onto the MLflow run; the artifact's drift section."""
    from flows import drift_check

    policy = params.retrain.policy
    drift_check.log_to_run(run_id, drifted.path, drifted.report, drifted.decision, policy)
    return drift_check.markdown(drifted.report, drifted.decision, policy)
