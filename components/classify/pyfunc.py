"""MLflow pyfunc of the classifier (models-from-code): tokenizer.json + classifier.keras +
labels.json, nothing pickled.

Input: a DataFrame with a `text` column of non-empty strings. Output: one row per text with
`label` (the most probable class) and `prob_<class>` for every class (they sum to 1). A bad
request raises MlflowException(INVALID_PARAMETER_VALUE): the server answers 400.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MAX_TEXTS = 256
MAX_CHARS = 100_000


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def check_texts(model_input) -> list[str]:
    if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
        raise _bad("input must be a table with a 'text' column")
    texts = model_input["text"].tolist()
    if not texts or len(texts) > MAX_TEXTS:
        raise _bad(f"send 1..{MAX_TEXTS} texts per request (got {len(texts)})")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip() or len(t) > MAX_CHARS:
            raise _bad(f"text {i} must be a non-empty string of at most {MAX_CHARS} characters")
    return texts


class GruClassifier(PythonModel):
    def load_context(self, context):
        import keras
        from tokenizers import Tokenizer

        from components.classify import model as _layers  # noqa: F401  (custom layers)

        info = json.loads(Path(context.artifacts["info"]).read_text())
        digest = hashlib.sha256(Path(context.artifacts["tokenizer"]).read_bytes()).hexdigest()
        if digest != info["tokenizer_sha256"]:
            raise MlflowException(
                "tokenizer.json does not match the vocabulary this "
                "classifier was trained with — re-register it"
            )
        self.classes, self.max_len = list(info["classes"]), int(info["max_len"])
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.model = keras.saving.load_model(context.artifacts["model"], safe_mode=True)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        from components.contract import encode

        ids = [x[: self.max_len] for x in encode(self.tokenizer, texts)]
        x = np.zeros((len(ids), max(map(len, ids))), np.int32)  # (N, T), 0 = <pad>
        for i, row in enumerate(ids):
            x[i, : len(row)] = row
        return np.asarray(self.model.predict(x, verbose=0), np.float64)  # (N, C)

    def predict(self, context, model_input, params=None):
        probs = self.probabilities(check_texts(model_input))
        out = pd.DataFrame({"label": [self.classes[i] for i in probs.argmax(axis=1)]})
        for j, c in enumerate(self.classes):
            out[f"prob_{c}"] = probs[:, j]
        return out


mlflow.models.set_model(GruClassifier())
