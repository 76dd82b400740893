"""The operations commands `gruflow retrain`, `gruflow deploy` and `gruflow worker`:
import-light CLI glue around flows/retrain.py, prefect.yaml and Prefect's worker.

`gruflow deploy` reads `orchestration.schedule`, `.timezone` and `.pool` from params.yaml and
passes them to `prefect deploy --all` as the env values prefect.yaml templates
(`{{ $GRUFLOW_SCHEDULE }}`, ...), with the git remote (`origin`) and branch as the code source.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from components.errors import GruflowError
from components.params import load_params
from flows.gitrepo import git_output


def _prefect(
    *args: str, env: dict | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    exe = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    out = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise GruflowError(
            f"prefect {' '.join(args)} failed: "
            f"{(out.stderr or out.stdout).strip().splitlines()[-1:]}"
        )
    return out


def _retrain(args: argparse.Namespace) -> int:
    from flows import tracking
    from flows.project_lock import project_lock
    from flows.rollback import keep_outputs, stages_failed

    root = Path(args.project).resolve()
    load_params(root / "params.yaml")
    tracking.check_reachable(tracking.store_uri(root))
    with project_lock(root, wait=not args.no_wait, command="gruflow retrain"):
        params = load_params(root / "params.yaml")
        # the pre-Prefect check forces an ingest: a failure before the retrain's stages all
        # succeeded puts it back too (flows/rollback.py), as the flow does for what it runs
        with keep_outputs(root, restore_if=stages_failed):
            # nothing changed: decided before Prefect starts (flows/noop.py); policy `always`
            # trains even then, as the flow does
            if not args.force and params.retrain.policy != "always":
                from flows.noop import retrain_skipped

                reason = retrain_skipped(root, params)
                if reason:
                    print(f"gruflow: retrain skipped — {reason}")
                    _print_costs(root, ["ingest"], None)
                    return 0
            from flows.interrupt import own_server
            from flows.retrain import retrain

            with own_server():  # Prefect's temporary server, out of reach of the terminal's Ctrl-C
                r = retrain(project=str(root), force=args.force, wait=not args.no_wait)
    if r.skipped:
        print(f"gruflow: retrain skipped — {r.reason} (MLflow run {r.run_id}, {r.seconds:.1f} s)")
        _print_costs(root, r.executed, r.cost)
        return 0
    print(f"gruflow: retrained — {r.reason}; stages executed: {', '.join(r.executed) or 'none'}")
    if r.decision:
        print(f"gruflow: {r.decision}")
    print(f"gruflow: pushed {r.pushed} file(s) to the DVC remote; MLflow run {r.run_id}")
    return 0


def _print_costs(root: Path, ran: list[str], drift: dict | None) -> None:
    """A skipped retrain's two cost lines: what it ran (stages, drift scoring), what it saved."""
    from flows.resources import read
    from flows.retrain_report import cost_line, saved_line

    stages = read(root).get("stages", {})
    print(f"gruflow: this skip's {cost_line(stages, ran, drift)}")
    print(f"gruflow: {saved_line(stages, ran)} (reports/resources.json)")


def watch_trigger_env(params) -> dict[str, str]:
    """The gruflow-retrain trigger's event resource and debounce (ISO 8601: Prefect's
    `within` reads no bare number from a templated string)."""
    from flows.watch import resource_id

    return {
        "GRUFLOW_PROJECT_RESOURCE": resource_id(params.registry.model_name),
        "GRUFLOW_DEBOUNCE": f"PT{params.orchestration.debounce}S",
    }


def env_for_deploy(root: Path) -> dict[str, str]:
    params = load_params(root / "params.yaml")
    o = params.orchestration
    git_url = os.environ.get("GRUFLOW_GIT_URL") or git_output(root, "remote", "get-url", "origin")
    if not git_url:
        raise GruflowError(
            "deployments clone the code from git: add a remote named origin "
            "(or set GRUFLOW_GIT_URL) and push your commit"
        )
    return {
        **os.environ,
        "GRUFLOW_SCHEDULE": o.schedule,
        "GRUFLOW_TIMEZONE": o.timezone,
        "GRUFLOW_POOL": o.pool,
        "GRUFLOW_GIT_URL": git_url,
        **watch_trigger_env(params),
        "GRUFLOW_GIT_BRANCH": os.environ.get("GRUFLOW_GIT_BRANCH")
        or git_output(root, "rev-parse", "--abbrev-ref", "HEAD")
        or "main",
    }


def _deploy(args: argparse.Namespace) -> int:
    root = Path(args.project).resolve()
    env = env_for_deploy(root)
    if not os.environ.get("PREFECT_API_URL"):
        raise GruflowError(
            "deployments live on a Prefect server: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`)"
        )
    pool = env["GRUFLOW_POOL"]
    if _prefect("work-pool", "inspect", pool, env=env, check=False).returncode != 0:
        _prefect("work-pool", "create", pool, "--type", "process", env=env)
        print(f"gruflow: created work pool {pool} (process)")
    if _prefect("gcl", "inspect", "gruflow-retrain", env=env, check=False).returncode != 0:
        _prefect("gcl", "create", "gruflow-retrain", "--limit", "1", env=env)
    _prefect("--no-prompt", "deploy", "--all", env=env, cwd=root)
    print(
        f"gruflow: deployed gruflow-retrain (cron '{env['GRUFLOW_SCHEDULE']}' "
        f"{env['GRUFLOW_TIMEZONE']}, trigger gruflow.data.changed debounce "
        f"{env['GRUFLOW_DEBOUNCE']}) and gruflow-stage (pool {pool}) from "
        f"{env['GRUFLOW_GIT_URL']}@{env['GRUFLOW_GIT_BRANCH']}"
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    exe = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    os.execv(exe, [exe, "worker", "start", "--pool", args.pool])
    return 0  # not reached


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    """retrain, deploy, worker; `common` is the CLI's shared --project option."""
    r = sub.add_parser(
        "retrain",
        parents=[common],
        help="refresh the data; retrain, gate and push only when something changed",
    )
    r.add_argument("--force", action="store_true", help="retrain even when nothing changed")
    r.add_argument(
        "--no-wait",
        action="store_true",
        help="fail at once when another run holds the project lock",
    )
    r.set_defaults(func=_retrain)
    d = sub.add_parser(
        "deploy", parents=[common], help="create the work pool if missing and deploy prefect.yaml"
    )
    d.set_defaults(func=_deploy)
    w = sub.add_parser("worker", help="start a Prefect worker on a work pool")
    w.add_argument("--pool", default="gpu", help="the work pool to take flow runs from")
    w.set_defaults(func=_worker)
    from flows.watch import add_command as add_watch  # `gruflow watch`: data-arrival events

    add_watch(sub, common)
    from flows.serve import add_command as add_serve  # `gruflow serve`: model server

    add_serve(sub, common)
