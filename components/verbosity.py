"""Quiet by default: the libraries' known-harmless console noise off, `GRUFLOW_VERBOSE=1` (or
`gruflow --verbose`) brings it back.

Usage: `quiet_environment(os.environ)` before TensorFlow/Prefect load (the CLI does it, and stage
commands inherit the environment), `quiet_libraries()` in each process (the CLI, and every
stage's guarded `main()`); `quiet_tensorflow_import()` runs when `components` is imported.
Only messages known to be harmless are hidden; real warnings and errors still show, and
everything goes to the run's log file as before.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import warnings
from collections.abc import MutableMapping

VERBOSE_ENV = "GRUFLOW_VERBOSE"

# Environment defaults (a value the user set wins). TF_CPP_MIN_LOG_LEVEL=3 also hides the C++
# "failed call to cuInit" ERROR line TensorFlow prints on every machine without a GPU.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # MLflow's tqdm bars for artifact downloads of a few small local files
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# Set even when verbose: the Prefect server's anonymous usage heartbeat (at start and every 10
# minutes) is one ERROR line each time offline, and a pipeline has no business calling out.
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

# Python warnings known to be harmless here (regex on the start of the message; MLflow colours
# its messages, hence the optional ANSI code).
HARMLESS_WARNINGS = (
    r"`shuffle=True` was passed, but will be ignored",  # our tf.data pipelines shuffle themselves
    r"(\x1b\[\d+m)?Add type hints to the `predict` method",  # pyfunc checks its own input
    r"Logger '.*' attempted to send logs to the API without a flow run id",
)
# Loggers whose WARNING records are known noise; raised to ERROR unless verbose.
NOISY_LOGGERS = (
    "tensorflow",  # "N out of the last M calls ... triggered tf.function retracing"
    "absl",
    "mlflow.utils.environment",  # "uv export failed": MLflow falls back to its own inference
    "mlflow.utils.uv_utils",
)

# What a quiet console must not show (tests/test_verbosity.py greps for these).
NOISE_PATTERNS = (
    r"cuInit",
    r"oneDNN custom operations",
    r"This TensorFlow binary is optimized",
    r"shuffle=True` was passed",
    r"triggered tf\.function retracing",
    r"Add type hints",
    r"uv export failed",
    r"without a flow run id",
    r"Failed to send telemetry",
    r"Downloading artifacts",
    r"Still processing items",
    r"\[I \d{4}-\d\d-\d\d ",  # Optuna's INFO lines
    r"Starting temporary server",  # Prefect's start-up and run-page lines (temporary server)
    r"View at http",
)


def is_verbose(environ: MutableMapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(VERBOSE_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def quiet_environment(environ: MutableMapping[str, str]) -> None:
    """Set the quiet defaults in `environ` (values already set are kept)."""
    for key, value in ({} if is_verbose(environ) else QUIET_ENV).items() | OFFLINE_ENV.items():
        environ.setdefault(key, value)


def quiet_libraries() -> None:
    """Hide the known-harmless warnings and log records in this process (unless verbose)."""
    if is_verbose():
        return
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # MLflow shows its type-hint warning under its own `simplefilter("once")` (a filter put in
    # front of ours): the last step, showing a warning, drops the harmless ones too.
    if not getattr(warnings.showwarning, "gruflow_quiet", False):
        warnings.showwarning = _drop_harmless(warnings.showwarning)
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.ERROR:
            logger.setLevel(logging.ERROR)
    # MLflow's INFO lines: "Validating input example against model signature" per registration,
    # "Creating initial MLflow database tables..." on a new store
    for name in ("mlflow.pyfunc", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_optuna()


def quiet_optuna() -> None:
    """Optuna's INFO line per trial ("[I 2026-...] Trial 3 pruned. ..."): tune's summary line,
    reports/tune.json and MLflow say it (unless verbose). Optuna sets its own level when first
    used, so this goes through its API, in each process that runs trials."""
    optuna = sys.modules.get("optuna")
    if optuna is not None and not is_verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def native_stderr_to_log():
    """Send fd 2 (what C++ code writes) to the run's log file ($GRUFLOW_LOG_FILE, else
    nowhere) for the block; Python's sys.stderr is flushed first and restored after."""
    sink_path = os.environ.get("GRUFLOW_LOG_FILE") or os.devnull
    if sink_path != os.devnull:
        os.makedirs(os.path.dirname(sink_path) or ".", exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(sink_path, "a") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader's exec_module with the native stderr in the log file."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with native_stderr_to_log():
            self.loader.exec_module(module)

    def __getattr__(self, name):  # resource readers and the rest: the real loader's
        return getattr(self.loader, name)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual, once, and loads it through _QuietLoader: TensorFlow's C++
    start-up lines (oneDNN, "Could not find cuda drivers", cuInit) are logged before absl is
    initialised, where TF_CPP_MIN_LOG_LEVEL does not reach them."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_import() -> None:
    """Install the finder (unless verbose, or TensorFlow is already imported). It imports
    nothing itself: a process that never needs TensorFlow never loads it."""
    if is_verbose() or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def _drop_harmless(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not any(re.match(p, str(message), re.IGNORECASE) for p in HARMLESS_WARNINGS):
            show(message, category, filename, lineno, file, line)

    showwarning.gruflow_quiet = True
    return showwarning


def noise_in(text: str) -> list[str]:
    """The NOISE_PATTERNS found in `text` (console output of a command)."""
    return [p for p in NOISE_PATTERNS if re.search(p, text)]
