"""Shared test settings: quiet TensorFlow, Keras on the TensorFlow backend."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `import dvc` runs colorama.init(), which wraps sys.stdout/sys.stderr for good. Imported first
# inside a test using capsys, it would wrap that test's capture stream, closed right after:
# every later write (DVC, Prefect's console handler) then fails with "I/O operation on closed
# file". Importing it here wraps pytest's session-wide capture instead.
import dvc  # noqa: E402, F401
