"""Typed, validated loader for params.yaml — the one place every tunable lives.

Usage: `cfg = load_params("params.yaml")`; stages receive only their section (`cfg.train`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import GruflowError

PosInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
SplitFraction = Annotated[float, Field(gt=0.0, lt=1.0)]  # val/test may not be empty


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Section):
    raw: str
    clean: str
    tokens: str
    tokenizer: str
    embeddings: str
    model: str
    reports: str


class Data(_Section):
    source: str = Field(min_length=1)
    text_column: str = Field(min_length=1)
    max_docs: NonNegInt


class Clean(_Section):
    min_chars: NonNegInt
    lowercase: bool


class Split(_Section):
    val_fraction: SplitFraction
    test_fraction: SplitFraction
    seed: NonNegInt

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> Split:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (train needs data)")
        return self


class Tokenize(_Section):
    kind: Literal["bpe"]
    vocab_size: Annotated[int, Field(strict=True, ge=16)]
    min_frequency: PosInt


class Embed(_Section):
    dim: PosInt
    window: PosInt
    negatives: PosInt
    min_count: PosInt
    epochs: PosInt
    seed: NonNegInt


class Model(_Section):
    embedding_dim: PosInt
    embedding_init: Literal["word2vec", "random"]
    embedding_trainable: bool
    units: PosInt
    gru_layers: PosInt
    dropout: Fraction


class Train(_Section):
    seq_len: Annotated[int, Field(strict=True, ge=2)]
    batch_size: PosInt
    epochs: PosInt
    learning_rate: Annotated[float, Field(gt=0.0)]
    clipnorm: Annotated[float, Field(gt=0.0)]
    patience: NonNegInt
    seed: NonNegInt


class Evaluate(_Section):
    batch_size: PosInt


class Registry(_Section):
    model_name: str = Field(min_length=1)
    min_improvement: Fraction


class Mlflow(_Section):
    experiment: str = Field(min_length=1)


class Params(_Section):
    paths: Paths
    data: Data
    clean: Clean
    split: Split
    tokenize: Tokenize
    embed: Embed
    model: Model
    train: Train
    evaluate: Evaluate
    registry: Registry
    mlflow: Mlflow

    @model_validator(mode="after")
    def _embedding_dims_agree(self) -> Params:
        if self.model.embedding_init == "word2vec" and self.model.embedding_dim != self.embed.dim:
            raise ValueError(
                f"model.embedding_dim ({self.model.embedding_dim}) must equal embed.dim "
                f"({self.embed.dim}) when model.embedding_init is word2vec"
            )
        return self


def _describe(err: ValidationError, file: Path) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{file}: unknown key '{key}' — remove it or fix its spelling"
    if first["type"] == "missing":
        return f"{file}: missing key '{key}' — add it (see the default params.yaml)"
    got = first.get("input")
    where = f"'{key}': " if key else ""
    msg = first["msg"].removeprefix("Value error, ")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{file}: {where}{msg}{shown}"


def parse_params(raw: object, file: Path | str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping; raise GruflowError naming the bad key."""
    file = Path(file)
    if not isinstance(raw, dict):
        raise GruflowError(f"{file}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise GruflowError(_describe(err, file)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise GruflowError(f"{path}: params file not found — run from the project root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise GruflowError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    return parse_params(raw, path)


def params_digest(params: Params) -> str:
    """Stable digest of the effective params (for lineage tags)."""
    blob = json.dumps(params.model_dump(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
