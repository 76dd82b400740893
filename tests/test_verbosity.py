"""Quiet by default: the known-harmless library noise stays off the console of a process set
up the way the CLI sets up a stage command; GRUFLOW_VERBOSE=1 brings it back."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import verbosity

ROOT = Path(__file__).resolve().parents[1]

# A stage-like process: the guarded main() quiets the libraries, the model module
# imports Keras the way the stages do, then Keras fits a tf.data
# dataset with shuffle=True (Keras warns), MLflow checks the pyfunc class and its uv export logs
# its fallback warning.
SCRIPT = """
import logging
from components.errors import guarded

@guarded
def main():
    import components.lm.model  # noqa: F401  (how every stage first imports Keras)
    import components.lm.pyfunc  # noqa: F401  (MLflow warns "Add type hints" under "once")
    import keras
    import numpy as np
    import tensorflow as tf
    x = np.zeros((8, 3), "float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    model.fit(data, shuffle=True, verbose=0)
    logging.getLogger("mlflow.utils.environment").warning("uv export failed or returned no "
                                                          "requirements.")
    print("done")

main()
"""


def _run(env_extra: dict[str, str]) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", verbosity.VERBOSE_ENV)
    }
    env |= env_extra | {"PYTHONPATH": str(ROOT)}
    verbosity.quiet_environment(env)  # what flows.entry does before a stage starts
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done" in out.stdout
    return out.stdout + out.stderr


def test_stage_process_is_quiet_by_default():
    quiet = _run({})
    assert verbosity.noise_in(quiet) == [], quiet[-2000:]


@pytest.mark.slow  # a second TensorFlow process (~30 s on a busy 2-core machine)
def test_stage_process_is_verbose_on_request():
    loud = _run({verbosity.VERBOSE_ENV: "1"})
    assert "shuffle=True` was passed" in loud and "uv export failed" in loud, loud[-2000:]
    assert "Add type hints" in loud


def test_quiet_environment_keeps_user_values_and_always_disables_telemetry():
    env = {"TF_CPP_MIN_LOG_LEVEL": "1"}
    verbosity.quiet_environment(env)
    assert env == {
        "TF_CPP_MIN_LOG_LEVEL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    env = {verbosity.VERBOSE_ENV: "1"}
    verbosity.quiet_environment(env)
    assert "TF_CPP_MIN_LOG_LEVEL" not in env and env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert not verbosity.is_verbose({verbosity.VERBOSE_ENV: "0"})


def test_noise_patterns_match_the_lines_seen_in_a_first_run():
    # lines as a first `make run` printed them before (issue 20); each must be recognised
    seen = [
        "E0000 00:00:1 cuda_driver.cc:152] failed call to cuInit: INTERNAL",
        "UserWarning: `shuffle=True` was passed, but will be ignored since the data",
        "\x1b[33mAdd type hints to the `predict` method to enable data validation",
        "WARNING mlflow.utils.environment: uv export failed or returned no requirements.",
        "ERROR | prefect.server.services.telemetry - Failed to send telemetry: ConnectError",
    ]
    assert all(verbosity.noise_in(line) for line in seen)
    assert verbosity.noise_in("gruflow: stages executed: ingest, clean") == []
