"""The one place a stage talks to MLflow: live progress (train epochs, tune trials) into the
run the flow opened for it. Does nothing unless the flow set contract.LIVE_RUN_ENV, so plain
`dvc repro` never imports or touches MLflow; summaries are logged by the flow afterwards.

Usage: `live_log.metrics({"val_loss": 2.1}, step=3)`; `trial = live_log.ChildRun("trial-0",
params, tags)`, `trial.metric("val_loss", 2.1, 0)`, `trial.end("FINISHED")`.
"""

from __future__ import annotations

import os

from components.contract import LIVE_RUN_ENV


def run_id() -> str | None:
    """The MLflow run the flow asked this stage to log to, or None (logging off)."""
    return os.environ.get(LIVE_RUN_ENV) or None


def _client():
    from mlflow.tracking import MlflowClient  # only when logging is on

    return MlflowClient()


def metrics(values: dict[str, float], step: int | None = None) -> None:
    """Log numbers to the stage's run (a no-op when logging is off)."""
    parent = run_id()
    if parent:
        client = _client()
        for key, value in values.items():
            client.log_metric(parent, key, float(value), step=step)


class ChildRun:
    """A run nested under the stage's run (one per tune trial); a no-op when logging is off."""

    def __init__(self, name: str, params: dict, tags: dict[str, str] | None = None):
        self.parent = run_id()
        if not self.parent:
            return
        from mlflow.entities import Param

        self.client = _client()
        experiment = self.client.get_run(self.parent).info.experiment_id
        run = self.client.create_run(
            experiment,
            tags={"mlflow.parentRunId": self.parent, "mlflow.runName": name, **(tags or {})},
        )
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def metric(self, key: str, value: float, step: int) -> None:
        if self.parent:
            self.client.log_metric(self.run_id, key, value, step=step)

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        """Close the run with an MLflow status (FINISHED, KILLED, FAILED)."""
        if self.parent:
            for key, value in (tags or {}).items():
                self.client.set_tag(self.run_id, key, value)
            self.client.set_terminated(self.run_id, status=status)
