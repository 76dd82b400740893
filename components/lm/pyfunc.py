"""MLflow pyfunc wrapper (models-from-code): tokenizer.json + model.keras, nothing pickled.

Input: a DataFrame with a `text` column. Params: mode (generate | score), max_new_tokens,
temperature, top_k, seed, cache_size/cache_theta/cache_lambda. `generate` returns the
continuation of each text; `score` returns per-text perplexity and bits per byte (plus the
summed NLL, tokens and bytes behind them) and, when the continuous cache is on (by default the
size, θ and λ the evaluate stage chose on val, from info.json), the same with a `_cache` suffix.
Every param is checked in both modes (`components.lm.inference.check_params`); bad requests raise
MlflowException(INVALID_PARAMETER_VALUE): the server answers 400. The transport limits (body
size, records, Content-Type, nesting) are `gruflow serve`'s (`components/lm/serve_guard.py`).
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

from components.lm.cache import score_texts_cache
from components.lm.inference import (
    DEFAULT_PARAMS,
    MAX_NEW_TOKENS_CAP,
    BadRequest,
    cache_choice,
    check_params,
    check_texts,
    generate,
)

__all__ = ["GruLM", "DEFAULT_PARAMS", "MAX_NEW_TOKENS_CAP", "file_digest"]


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
        self.cache = info.get("cache")  # evaluate's (size, θ, λ); absent: no cache by default
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.model = keras.saving.load_model(context.artifacts["model"], safe_mode=True)

    def predict(self, context, model_input, params=None):
        try:
            p = check_params(params)
            texts = check_texts(_texts(model_input))
        except BadRequest as exc:
            raise _bad(str(exc)) from None
        if p["mode"] == "score":
            return pd.DataFrame(score_texts_cache(self.model, self.tokenizer, texts,
                                                  self.seq_len, cache_choice(p, self.cache)))
        return pd.DataFrame({"text": [
            generate(self.model, self.tokenizer, t, p["max_new_tokens"], p["temperature"],
                     p["top_k"], p["seed"], self.seq_len)
            for t in texts]})


def _texts(model_input) -> list:
    if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
        raise BadRequest("input must be a table with a 'text' column")
    return model_input["text"].tolist()


mlflow.models.set_model(GruLM())
