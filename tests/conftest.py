"""Shared test settings: quiet TensorFlow, Keras on the TensorFlow backend; the default params."""

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `import dvc` runs colorama.init(), which wraps sys.stdout/sys.stderr for good. Imported first
# inside a test using capsys, it would wrap that test's capture stream, closed right after:
# every later write (DVC, Prefect's console handler) then fails with "I/O operation on closed
# file". Importing it here wraps pytest's session-wide capture instead.
import dvc  # noqa: E402, F401
import pytest  # noqa: E402

from components.params import Params, load_params  # noqa: E402


@pytest.fixture(scope="session")
def params() -> Params:
    """The project's params.yaml, validated (tests change sections with model_copy)."""
    return load_params(Path(__file__).resolve().parents[1] / "params.yaml")
