"""MLflow pyfunc wrapper (models-from-code): tokenizer.json + model.keras, nothing pickled.

Input: a DataFrame with a `text` column. Params: mode (generate | score), max_new_tokens,
temperature, top_k, seed. `generate` returns the continuation of each text; `score` returns
per-text perplexity and bits per byte (plus the summed NLL, tokens and bytes behind them).
Bad requests raise MlflowException(INVALID_PARAMETER_VALUE): the server answers 400.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from components.lm.inference import generate, score_texts

__all__ = ["GruLM", "DEFAULT_PARAMS", "MAX_NEW_TOKENS_CAP", "file_digest"]

MAX_NEW_TOKENS_CAP = 512
DEFAULT_PARAMS = {"mode": "generate", "max_new_tokens": 32, "temperature": 1.0, "top_k": 0,
                  "seed": 0}


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class GruLM(PythonModel):
    def load_context(self, context):
        import keras
        from tokenizers import Tokenizer

        from components.lm import model as _layers  # noqa: F401  (registers custom layers)

        info = json.loads(Path(context.artifacts["info"]).read_text())
        if file_digest(context.artifacts["tokenizer"]) != info["tokenizer_sha256"]:
            raise MlflowException("tokenizer.json does not match the vocabulary this model "
                                  "was trained with (digest mismatch) — re-register the model")
        self.seq_len = int(info["seq_len"])
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.model = keras.saving.load_model(context.artifacts["model"], safe_mode=True)

    def predict(self, context, model_input, params=None):
        p = {**DEFAULT_PARAMS, **(params or {})}
        texts = _texts(model_input)
        if p["mode"] == "score":
            return pd.DataFrame(score_texts(self.model, self.tokenizer, texts, self.seq_len))
        if p["mode"] != "generate":
            raise _bad(f"params.mode must be 'generate' or 'score', got {p['mode']!r}")
        n, temp, k = int(p["max_new_tokens"]), float(p["temperature"]), int(p["top_k"])
        if not 0 < n <= MAX_NEW_TOKENS_CAP:
            raise _bad(f"params.max_new_tokens must be in 1..{MAX_NEW_TOKENS_CAP}, got {n}")
        if temp < 0:
            raise _bad(f"params.temperature must be >= 0, got {temp}")
        if k < 0:
            raise _bad(f"params.top_k must be >= 0 (0 = no limit), got {k}")
        if int(p["seed"]) < 0:
            raise _bad(f"params.seed must be >= 0, got {p['seed']}")
        return pd.DataFrame({"text": [
            generate(self.model, self.tokenizer, t, n, temp, k, int(p["seed"]), self.seq_len)
            for t in texts]})


def _texts(model_input) -> list[str]:
    if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
        raise _bad("input must be a table with a 'text' column")
    texts = model_input["text"].tolist()
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise _bad(f"text row {i} must be a non-empty string, got {t!r}")
    return texts


mlflow.models.set_model(GruLM())
