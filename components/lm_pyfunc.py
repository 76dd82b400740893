"""MLflow pyfunc wrapper (models-from-code): tokenizer.json + model.keras, nothing pickled.

Input: a DataFrame with a `text` column. Params: mode (generate | score), max_new_tokens,
temperature, top_k, seed. `generate` returns the continuation of each text; `score` returns
its perplexity per token and bits per byte.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

MAX_NEW_TOKENS_CAP = 512
DEFAULT_PARAMS = {"mode": "generate", "max_new_tokens": 32, "temperature": 1.0, "top_k": 0,
                  "seed": 0}


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sample_next(logits: np.ndarray, temperature: float, top_k: int,
                rng: np.random.Generator) -> int:
    """Greedy when temperature is 0, else softmax(logits / T) restricted to the top k."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < z.size:
        z[np.argsort(z)[:-top_k]] = -np.inf
    p = np.exp(z - z.max())
    return int(rng.choice(z.size, p=p / p.sum()))


class GruLM(PythonModel):
    def load_context(self, context):
        import keras
        from tokenizers import Tokenizer

        from components import model as _layers  # noqa: F401  (registers custom layers)

        info = json.loads(Path(context.artifacts["info"]).read_text())
        if file_digest(context.artifacts["tokenizer"]) != info["tokenizer_sha256"]:
            raise ValueError("tokenizer.json does not match the vocabulary this model was "
                             "trained with (digest mismatch)")
        self.seq_len = int(info["seq_len"])
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.model = keras.saving.load_model(context.artifacts["model"], safe_mode=True)

    def predict(self, context, model_input, params=None):
        p = {**DEFAULT_PARAMS, **(params or {})}
        texts = _texts(model_input)
        if p["mode"] == "score":
            return pd.DataFrame([self.score(t) for t in texts])
        if p["mode"] != "generate":
            raise ValueError(f"params.mode must be 'generate' or 'score', got {p['mode']!r}")
        n, temp, k = int(p["max_new_tokens"]), float(p["temperature"]), int(p["top_k"])
        if not 0 < n <= MAX_NEW_TOKENS_CAP:
            raise ValueError(f"params.max_new_tokens must be in 1..{MAX_NEW_TOKENS_CAP}, got {n}")
        if temp < 0:
            raise ValueError(f"params.temperature must be >= 0, got {temp}")
        rng = np.random.default_rng(int(p["seed"]))
        return pd.DataFrame({"text": [self.generate(t, n, temp, k, rng) for t in texts]})

    def generate(self, prompt: str, n: int, temperature: float, top_k: int,
                 rng: np.random.Generator) -> str:
        from components.tokenize import BOS, EOS

        prompt_ids = [BOS, *self.tokenizer.encode(prompt, add_special_tokens=False).ids]
        ids = list(prompt_ids)
        for _ in range(n):
            window = np.array([ids[-self.seq_len:]], dtype=np.int32)  # (1, T)
            logits = np.asarray(self.model.predict_on_batch(window))[0, -1]  # (V,)
            nxt = sample_next(logits, temperature, top_k, rng)
            if nxt == EOS:
                break
            ids.append(nxt)
        return self.tokenizer.decode(ids[len(prompt_ids):])

    def score(self, text: str) -> dict[str, float]:
        from components.evaluate import score_model
        from components.tokenize import encode

        stream = np.array(encode(self.tokenizer, [text])[0], dtype=np.int32)
        s = score_model(self.model, stream, self.seq_len, 64)
        n_bytes = len(text.encode("utf-8")) + 1
        return {"perplexity": math.exp(s["nll"] / s["tokens"]),
                "bits_per_byte": s["nll"] / math.log(2) / n_bytes}


def _texts(model_input) -> list[str]:
    if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
        raise ValueError("input must be a table with a 'text' column")
    texts = model_input["text"].tolist()
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text row {i} must be a non-empty string")
    return texts


mlflow.models.set_model(GruLM())
