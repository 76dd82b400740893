"""MLflow pyfunc wrapper (models-from-code): tokenizer.json + model.keras, nothing pickled.

Input: a DataFrame with a `text` column. Params: mode (generate | score | fill), max_new_tokens,
temperature, top_k, top_p, repetition_penalty, seed, candidates,
cache_size/cache_theta/cache_lambda; their defaults are the `generate` section of params.yaml
when the model was registered (info.json). `generate` returns the continuation of each text;
`score` returns per-text perplexity and bits per byte (plus the summed NLL, tokens and bytes
behind them) and, when the continuous cache is on (by default the size, θ and λ the evaluate
stage chose on val, from info.json), the same with a `_cache` suffix. Texts first go through the
clean stage's text rules the model was trained after (info.json `text_rules`: NFKC, masks, ...),
so `，` and `,` read alike. A masked LM (info.json `objective: masked`) answers `fill` (each text
with its `<mask>`s filled, and per `<mask>` the `candidates` most likely tokens as JSON in
`fills`) and `score` (masked perplexity under the fixed evaluation mask); `generate` is a 400.
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

from components.data.clean_rules import TextRules, clean_texts
from components.lm.cache import score_texts_cache
from components.lm.inference import (
    MAX_NEW_TOKENS_CAP,
    BadRequest,
    cache_choice,
    check_params,
    check_texts,
    generate,
    request_defaults,
)

__all__ = ["GruLM", "MAX_NEW_TOKENS_CAP", "file_digest", "prepare_prompt", "prepare_texts"]


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare_texts(texts: list[str], rules: TextRules | None) -> list[str]:
    """Texts to score through the model's training text rules (none for a model saved
    without them); a text the rules leave empty is a bad request."""
    if rules is None:
        return texts
    out = clean_texts(texts, rules)
    for i, text in enumerate(out):
        if not text:
            raise BadRequest(
                f"text row {i} is empty after the model's text rules "
                f"({rules.normalize}, controls and zero-width removed)"
            )
    return out


def prepare_prompt(prompt: str, rules: TextRules | None) -> str:
    """A prompt through the training text rules, keeping one trailing blank: a prompt is
    the start of a document, and "def " asks for what follows the space."""
    if rules is None:
        return prompt
    text = clean_texts([prompt], rules)[0]
    tail = prompt[len(prompt.rstrip()) :]
    return text + ("\n" if "\n" in tail else " " if tail and text else "")


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class GruLM(PythonModel):
    def load_context(self, context):
        import keras
        from tokenizers import Tokenizer

        from components.lm import masked as _masked  # noqa: F401  (a masked LM's layers)
        from components.lm import model as _layers  # noqa: F401  (registers custom layers)

        info = json.loads(Path(context.artifacts["info"]).read_text())
        if file_digest(context.artifacts["tokenizer"]) != info["tokenizer_sha256"]:
            raise MlflowException(
                "tokenizer.json does not match the vocabulary this model "
                "was trained with (digest mismatch) — re-register the model"
            )
        self.seq_len = int(info["seq_len"])
        rules = info.get("text_rules")  # absent: registered before rules were saved
        self.rules = None if rules is None else TextRules(**rules)
        self.defaults = request_defaults(info.get("generate"))
        self.objective = info.get("objective", "causal")  # versions before masked: causal
        self.cache = info.get("cache")  # evaluate's (size, θ, λ); absent: no cache by default
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.model = keras.saving.load_model(context.artifacts["model"], safe_mode=True)

    def predict(self, context, model_input, params=None):
        if self.objective == "masked" and not (params or {}).get("mode"):
            params = {**(params or {}), "mode": "fill"}  # a masked LM's default
        try:
            p = check_params(params, self.defaults)
            texts = check_texts(_texts(model_input))
            if p["mode"] in ("score", "fill"):  # the rules keep `<mask>` as it is
                texts = prepare_texts(texts, self.rules)
            check_mode(self.objective, p["mode"])
            if self.objective == "masked":
                return self._masked(texts, p)
        except BadRequest as exc:
            raise _bad(str(exc)) from None
        if p["mode"] == "score":
            return pd.DataFrame(
                score_texts_cache(
                    self.model, self.tokenizer, texts, self.seq_len, cache_choice(p, self.cache)
                )
            )
        return pd.DataFrame(
            {
                "text": [
                    generate(
                        self.model,
                        self.tokenizer,
                        prepare_prompt(t, self.rules),
                        p["max_new_tokens"],
                        p["temperature"],
                        p["top_k"],
                        p["seed"],
                        self.seq_len,
                        p["top_p"],
                        p["repetition_penalty"],
                    )
                    for t in texts
                ]
            }
        )

    def _masked(self, texts: list[str], p: dict) -> pd.DataFrame:
        from components.lm.masked_inference import fill, score_masked_texts

        if p["mode"] == "score":
            return pd.DataFrame(score_masked_texts(self.model, self.tokenizer, texts, self.seq_len))
        rows = [fill(self.model, self.tokenizer, t, self.seq_len, p["candidates"]) for t in texts]
        # fills as JSON text: one string cell per row whatever the number of <mask>s
        return pd.DataFrame(
            {"text": [r["text"] for r in rows], "fills": [json.dumps(r["fills"]) for r in rows]}
        )


def check_mode(objective: str, mode: str) -> None:
    """A masked LM fills and scores but cannot continue text; a causal LM cannot fill."""
    if objective == "masked" and mode == "generate":
        raise BadRequest(
            "this model was trained with train.objective masked: it predicts "
            "hidden tokens from both sides and cannot continue a text — use "
            "params.mode 'fill' (write <mask> where a token is missing) or 'score'"
        )
    if objective != "masked" and mode == "fill":
        raise BadRequest(
            "params.mode 'fill' needs a masked LM (train.objective masked); this "
            "model is causal — use 'generate' or 'score'"
        )


def _texts(model_input) -> list:
    if not isinstance(model_input, pd.DataFrame) or "text" not in model_input.columns:
        raise BadRequest("input must be a table with a 'text' column")
    return model_input["text"].tolist()


mlflow.models.set_model(GruLM())
