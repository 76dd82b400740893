"""Project error type and the CLI guard that turns it into one line and a non-zero exit."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Set by the flow that runs a stage: the guard writes the stage's one-line reason and its
# traceback there (the flow prints the line and logs the traceback to the run's log file), so
# the terminal gets no traceback and no second line. Unset (plain `dvc repro`): the usual
# stderr behaviour.
STAGE_ERROR_ENV = "GRUFLOW_STAGE_ERROR"
# Set by the flow too: a stage that finished writes its own CPU seconds there
# (flows/resources.py; only this process knows them exactly). Never a DVC output.
STAGE_COST_ENV = "GRUFLOW_STAGE_COST"


class GruflowError(Exception):
    """A user-facing problem: the message names the input and the fix."""


def _hand_over(message: str, code: int) -> None:
    """Report a failure to the flow that runs this stage (see STAGE_ERROR_ENV)."""
    with open(os.environ[STAGE_ERROR_ENV], "w", encoding="utf-8") as f:
        json.dump(
            {
                "code": code,
                "message": message,
                "command": " ".join(sys.argv),
                "traceback": traceback.format_exc(),
            },
            f,
        )
    raise SystemExit(code)


def _report_cost() -> None:
    path = os.environ.get(STAGE_COST_ENV)
    if not path:
        return
    import resource

    me, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    with open(path, "w", encoding="utf-8") as f:  # (no ru_maxrss: it counts the parent's)
        json.dump({"cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}, f)


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a `main()`: user mistakes print one line on stderr and exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from components.verbosity import quiet_libraries

        quiet_libraries()  # known-harmless library warnings off unless GRUFLOW_VERBOSE
        try:
            result = fn(*args, **kwargs)
            _report_cost()
            return result
        except GruflowError as exc:
            if os.environ.get(STAGE_ERROR_ENV):
                _hand_over(str(exc), 2)
            print(f"gruflow: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception as exc:
            if not os.environ.get(STAGE_ERROR_ENV):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            _hand_over(f"{type(exc).__name__}: {first}", 1)

    return wrapper
