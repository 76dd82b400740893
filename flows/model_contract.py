"""What a registered gruflow model carries besides its weights: info.json (window length,
tokenizer digest, the clean stage's text rules, the generation defaults), its MLflow signature
(input `text`; the output columns of both modes; params with the same defaults) and an input
example in the corpus's own language.

Usage: `info = serving_info(root, params)`, `signature(info)`, `example_text(root, params)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from components.contract import METRICS_REPORT, split_file
from components.data.clean_rules import TextRules
from components.lm.inference import MASKED_SCORE_COLUMNS, SCORE_COLUMNS, request_defaults
from components.params import Params
from components.tuning.best import effective_params

EXAMPLE_CHARS = 40  # the input example: the start of the first test document, about this long
FALLBACK_EXAMPLE = "The return value"  # only when the test split is missing or empty


def serving_info(root: Path, params: Params) -> dict:
    """The registered model's info.json: the window length it was trained with (the tuned one
    when tuning changed it), the digest of its tokenizer (serving checks it), the text rules
    its training text went through (serving applies them) and the generation defaults."""
    from components.lm.pyfunc import file_digest

    effective, _ = effective_params(params, root)
    info = {
        "seq_len": effective.train.seq_len,
        "tokenizer_sha256": file_digest(root / params.paths.tokenizer),
        "text_rules": TextRules.of(params.clean).to_dict(),
        "generate": params.generate.model_dump(),
        "objective": effective.train.objective,
    }
    metrics = root / params.paths.reports / METRICS_REPORT
    if metrics.is_file() and (m := json.loads(metrics.read_text())).get("cache_size"):
        # the continuous cache evaluate chose on val: `score`'s default (cache_* = -1)
        info["cache"] = {
            "size": m["cache_size"],
            "theta": m["cache_theta"],
            "lambda": m["cache_lambda"],
        }
    return info


def example_text(root: Path, params: Params) -> str:
    """The start of the first test document (whole words where the text has blanks), so the
    example a model's page shows is in the language it was trained on."""
    path = split_file(root / params.paths.clean, "test")
    if not path.is_file():
        return FALLBACK_EXAMPLE
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        texts = pf.read_row_group(i, columns=["text"]).column("text").to_pylist()
        for text in texts:
            if text and text.strip():
                return _prefix(text.strip(), EXAMPLE_CHARS)
    return FALLBACK_EXAMPLE


def _prefix(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    cut = text[:n]
    blank = cut.rfind(" ")
    return cut[:blank] if blank > n // 2 else cut


def signature(info: dict):
    """Input: a `text` column. Output: `text` (generate) or the score columns (score), each
    optional since a response holds one mode's columns. Params: name, type and the model's
    defaults (MLflow fills in missing params from here, so they must be the info.json ones)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    defaults = request_defaults(info["generate"])
    columns = SCORE_COLUMNS
    if info.get("objective") == "masked":  # fill (text + fills) and the masked score
        defaults["mode"] = "fill"  # MLflow fills a missing mode from here: generate is a 400
        columns = {"fills": "string", **MASKED_SCORE_COLUMNS}
    outputs = [
        ColSpec("string", "text", required=False),
        *(ColSpec(kind, name, required=False) for name, kind in columns.items()),
    ]
    kinds = {
        "mode": "string",
        "max_new_tokens": "long",
        "top_k": "long",
        "seed": "long",
        "candidates": "long",
        "cache_size": "long",
    }
    param_specs = [
        ParamSpec(name, kinds.get(name, "double"), value) for name, value in defaults.items()
    ]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema(outputs),
        params=ParamSchema(param_specs),
    )
