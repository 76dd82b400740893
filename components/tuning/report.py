"""What the tune stage reports: one MLflow run per trial, the summary, and the study's plots.

Usage: inside components/tune.py. Trial runs go through components/live_log.py (only when the
flow asked for live logging); the flow logs the summary and plots (flows/tracking.log_tune).
Plots are matplotlib PNGs for `dvc plots` and MLflow.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from components import live_log
from components.artifacts import atomic_file
from components.contract import TUNE_PLOTS

PLOTS = TUNE_PLOTS
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class TrialRun:
    """A nested MLflow run for one trial under the tune stage's run (live_log); a no-op when
    the flow did not ask for live logging."""

    def __init__(self, number: int, values: dict):
        self.run = live_log.ChildRun(
            f"trial-{number}", values, {"optuna.trial_number": str(number)}
        )

    def log_epoch(self, epoch: int, val_loss: float) -> None:
        self.run.metric("val_loss", val_loss, epoch)

    def end(self, state: str) -> None:
        self.run.end(_STATUS[state], {"optuna.state": state})


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]


def best_params(study: optuna.Study) -> dict:
    """Dotted name -> value of the best complete trial; {} when none completed."""
    complete = _complete(study)
    if not complete:
        return {}
    params = min(complete, key=lambda t: t.value).params
    # 12 significant digits: a stepped float reads 0.15, not 0.15000000000000002
    return {k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in params.items()}


def concurrent(trials: list) -> bool:
    """Did any two trials run at the same time (parallel workers, `gruflow tune-worker`)?
    Then each one's sample depended on which results the others had reported yet."""
    spans = sorted(
        (t.datetime_start, t.datetime_complete)
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    )
    return any(start < end for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def summarise(study: optuna.Study | None, n_trials: int = 0) -> dict:
    """reports/tune.json: best and params.yaml (trial 0) values, trials by state, and whether
    the study is reproducible (all n_trials finished, one after another). No times: this file
    is a DVC output and must not depend on how fast the machine was."""
    trials = study.get_trials(deepcopy=False) if study is not None else []
    interrupted = {t.number for t in trials if t.user_attrs.get("interrupted")}
    by_state = {
        name: sum(t.state == state and t.number not in interrupted for t in trials)
        for name, state in (
            ("complete", TrialState.COMPLETE),
            ("pruned", TrialState.PRUNED),
            ("fail", TrialState.FAIL),
        )
    }
    complete = _complete(study) if study is not None else []
    best = min(complete, key=lambda t: t.value) if complete else None
    defaults = [t for t in complete if t.user_attrs.get("defaults")]
    finished = sum(by_state.values())
    reasons = []
    if study is not None and finished < n_trials:
        reasons.append(f"cut short by tune.timeout: {finished} of {n_trials} trials")
    if concurrent(trials):
        reasons.append("trials ran in parallel")
    return {
        "enabled": study is not None,
        "study": study.study_name if study else None,
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "defaults_val_loss": defaults[0].value if defaults else None,
        "n_trials": {**by_state, "interrupted": len(interrupted)},
        "pruned_fraction": round(by_state["pruned"] / finished, 3) if finished else 0.0,
        "reproducible": not reasons,
        "nonreproducible_reasons": reasons,
    }


def save_plots(study: optuna.Study | None, reports: Path) -> None:
    """Optimisation history and parameter importance; a note in the figure when there is too
    little to plot (DVC expects both files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    n = len(_complete(study)) if study is not None else 0
    makers = ((oplt.plot_optimization_history, 1), (oplt.plot_param_importances, 2))
    for name, (make, needed) in zip(PLOTS, makers, strict=True):
        ax, note = None, f"{n} complete trial(s): not enough to plot"
        if n >= needed:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # optuna's ExperimentalWarning
                    ax = make(study)
                if make is oplt.plot_optimization_history:
                    ax.set_ylabel("validation loss (nats/token)")
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                note = f"no plot: {exc}"
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
            ax.set_axis_off()
        fig = ax.figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        with atomic_file(reports / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
