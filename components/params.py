"""Typed, validated loader for params.yaml — the one place every tunable lives.

Usage: `cfg = load_params("params.yaml")`; stages receive only their section (`cfg.train`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
    word2vec: str
    projector: str
    model: str
    checkpoints: str
    best_params: str
    tune_dir: str
    classifier: str
    reports: str

    @field_validator("*")
    @classmethod
    def _not_above_project(cls, value: str) -> str:
        # DVC tracks outputs only inside the repository (outside, `dvc status` fails with
        # "unexpected error"), and a failed stage restores only what is in the project.
        # Absolute paths are checked against the project in load_params (it knows the root).
        if not value.strip() or (
            not PurePosixPath(value).is_absolute()
            and posixpath.normpath(value).split("/")[0] in ("..", ".")
        ):
            raise ValueError("must be a path inside the project, e.g. data/raw")
        return value


def _check_inside(params: Params, root: Path, file: Path) -> None:
    """Every paths.* entry, made absolute against the project root, stays below it."""
    base = os.path.normpath(root.absolute())
    for key, value in params.paths.model_dump().items():
        full = os.path.normpath(os.path.join(base, value))
        if os.path.commonpath([base, full]) != base or full == base:
            raise GruflowError(
                f"{file}: 'paths.{key}': must be a path inside the project "
                f"{base}, e.g. data/raw (got {value!r})"
            )


SourceName = Annotated[str, Field(strict=True, min_length=1)]


class Data(_Section):
    source: SourceName | Annotated[list[SourceName], Field(min_length=1)]
    text_column: str = Field(min_length=1)
    unit: Literal["file", "paragraph", "line"]
    include: Annotated[list[SourceName], Field(min_length=1)]
    max_docs: NonNegInt

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


SCRIPTS = (
    "Latin",
    "Greek",
    "Cyrillic",
    "Armenian",
    "Hebrew",
    "Arabic",
    "Devanagari",
    "Indic",
    "Thai",
    "Georgian",
    "Hangul",
    "Kana",
    "Han",
)  # letter scripts clean.scripts may name


class Drift(_Section):
    """Gate against the previous run's data profile (same data.source); 0 turns a check off."""

    mean_chars: Annotated[float, Field(ge=0.0)]  # relative change of mean characters/document
    script_mix: Annotated[float, Field(ge=0.0, le=1.0)]  # total-variation distance
    top_tokens: Annotated[float, Field(ge=0.0, le=1.0)]  # 1 - Jaccard of the top-50 words


class Clean(_Section):
    strip_html: bool
    mask_pii: bool
    min_chars: NonNegInt
    min_words: NonNegInt
    min_documents: PosInt
    normalize: Literal["nfkc", "nfc", "none"]  # Unicode form; saved with the model
    lowercase: bool
    scripts: list[Literal[SCRIPTS]]  # type: ignore[valid-type]
    dedup: Literal["exact", "near", "none"]
    near_dup: bool
    near_dup_threshold: Annotated[float, Field(gt=0.0, le=1.0)]
    near_dup_ngram: PosInt
    drift: Drift


class Split(_Section):
    val_fraction: SplitFraction
    test_fraction: SplitFraction
    seed: NonNegInt
    group_near_duplicates: bool
    max_test_train_overlap: Annotated[float, Field(ge=0.0, le=1.0)]

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> Split:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (train needs data)")
        return self


class Tokenize(_Section):
    kind: Literal["bpe", "unigram", "wordpiece", "word", "char"]
    vocab_size: Annotated[int, Field(strict=True, ge=16)]
    min_frequency: PosInt
    train_max_bytes: NonNegInt
    pre_tokenizer: Literal["default", "whitespace"]
    unk_marker: str = Field(strict=True)

    @model_validator(mode="after")
    def _whitespace_is_for_words(self) -> Tokenize:
        if self.pre_tokenizer == "whitespace" and self.kind != "word":
            raise ValueError("pre_tokenizer 'whitespace' keeps whole words: it needs kind 'word'")
        if self.unk_marker and self.pre_tokenizer != "whitespace":
            raise ValueError(
                "unk_marker is matched against whole whitespace-separated tokens: "
                "it needs pre_tokenizer 'whitespace' (or set it to \"\")"
            )
        if any(c.isspace() for c in self.unk_marker):
            raise ValueError(f"unk_marker {self.unk_marker!r} must not contain blanks")
        return self


class Embed(_Section):
    algorithm: Literal["skipgram", "cbow"]
    dim: PosInt
    window: PosInt
    negatives: PosInt
    min_count: PosInt
    subsample: Fraction
    epochs: PosInt
    seed: NonNegInt
    workers: PosInt
    probes: Literal["auto"] | list[Annotated[str, Field(strict=True, min_length=1)]]
    neighbours: PosInt
    pairs_file: str = Field(strict=True, min_length=1)
    analogy_file: str = Field(strict=True)

    @field_validator("probes", mode="before")
    @classmethod
    def _auto_or_words(cls, value: object) -> object:
        if isinstance(value, str) and value != "auto":
            raise ValueError(
                f"use auto (the corpus's most frequent words) or a list of words, e.g. [{value}]"
            )
        return value

    @model_validator(mode="after")
    def _one_worker(self) -> Embed:
        # gensim's worker threads update shared vectors in an order set by thread scheduling
        # (its docs: fully reproducible runs need workers=1), so the vectors would change run
        # to run and DVC could not vouch for them.
        if self.workers != 1:
            raise ValueError(
                f"workers: {self.workers} gensim threads make the vectors depend "
                "on thread scheduling — use 1 (the only reproducible value)"
            )
        return self


class ModelParams(_Section):
    size: Literal["explicit", "auto"]  # auto: components/sizing.py replaces the sizes below
    embedding_dim: PosInt
    embedding_init: Literal["word2vec", "random"]
    embedding_trainable: bool
    units: PosInt
    gru_layers: PosInt
    attention_heads: PosInt
    attention_window: NonNegInt
    tie_embeddings: bool
    dropout: Fraction
    locked_dropout: bool
    embedding_dropout: Fraction
    weight_drop: Fraction  # DropConnect on the GRU's recurrent kernel (0 = off)

    @model_validator(mode="after")
    def _heads_divide_units(self) -> ModelParams:
        if self.units % self.attention_heads:
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must divide units ({self.units})"
            )
        return self


class Train(_Section):
    objective: Literal["causal", "masked"]
    mask_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    seq_len: Annotated[int, Field(strict=True, ge=2)]
    context: Literal["carried", "window"]
    batch_size: PosInt
    epochs: PosInt
    learning_rate: Annotated[float, Field(gt=0.0)]
    schedule: Literal["cosine", "constant"]
    warmup_fraction: Fraction
    min_lr_fraction: Annotated[float, Field(ge=0.0, le=1.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    label_smoothing: Fraction
    clipnorm: Annotated[float, Field(gt=0.0)]
    patience: NonNegInt
    seed: NonNegInt
    mixed_precision: bool
    xla: bool


class Generate(_Section):
    """Generation defaults: saved with each registered model (info.json and its signature),
    so `gruflow generate`, the served model and a request without params all use them."""

    max_new_tokens: Annotated[int, Field(strict=True, ge=1, le=512)]
    temperature: Annotated[float, Field(ge=0.0)]  # 0 = greedy
    top_k: NonNegInt  # 0 = no limit
    top_p: Annotated[float, Field(gt=0.0, le=1.0)]  # nucleus; 1 = off
    repetition_penalty: Annotated[float, Field(ge=1.0)]  # 1 = off
    seed: NonNegInt


class Cache(_Section):
    """Continuous cache pointer (Grave et al. 2017) in evaluate and `score`: size 0 = off;
    thetas and lambdas are grids, the pair with the lowest val NLL is used on test; λ < 1
    (λ = 1 would drop the model: infinite NLL for any target the cache has not seen)."""

    size: NonNegInt
    thetas: Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=1)]
    lambdas: Annotated[list[Annotated[float, Field(ge=0.0, lt=1.0)]], Field(min_length=1)]


class Evaluate(_Section):
    batch_size: PosInt
    cache: Cache


class Registry(_Section):
    model_name: str = Field(min_length=1)
    min_improvement: Fraction


class RetrainDrift(_Section):
    """on_drift: retrain when a measured drift crosses its threshold (0 turns a check off)."""

    bpb_ratio: Annotated[float, Field(ge=0.0)]  # new documents' bits/byte over the test's
    fallback_rate: Annotated[float, Field(ge=0.0, le=1.0)]  # <unk>/byte-fallback share, rise
    js_divergence: Annotated[float, Field(ge=0.0, le=1.0)]  # bits, new vs old train tokens


class Retrain(_Section):
    """`gruflow retrain`: when to train, and how much text the drift measurement reads."""

    policy: Literal["always", "on_change", "on_drift"]
    max_age_days: Annotated[float, Field(ge=0.0)]  # on_drift: retrain an older champion; 0 = off
    max_bytes: PosInt  # text scored per side (new / old)
    drift: RetrainDrift


class Mlflow(_Section):
    experiment: str = Field(min_length=1)


class Reproduce(_Section):
    """`gruflow reproduce`: on CPU everything must match exactly; when train ran on a GPU
    (recorded or reproduced), metrics may differ by this relative amount."""

    gpu_metric_rtol: Annotated[float, Field(ge=0.0, lt=1.0)]


class Orchestration(_Section):
    """Where stages run (work pool per stage, absent or "local" = in the flow's process), the
    default DVC remote, and the schedule `gruflow deploy` gives the retraining deployment."""

    dvc_remote: str = Field(strict=True)
    placement: dict[
        Literal["ingest", "clean", "tokenize", "embed", "tune", "train", "evaluate"], str
    ] = {}
    pool: str = Field(default="gpu", min_length=1)
    schedule: str = Field(default="0 3 * * *", min_length=1)
    timezone: str = Field(default="UTC", min_length=1)
    stage_timeout: PosInt = 21600
    watch_interval: PosInt = 5  # `gruflow watch`: seconds between polls of the folder source
    debounce: NonNegInt = 600  # gruflow-retrain trigger: at most one run per this many seconds

    @model_validator(mode="after")
    def _one_pool(self) -> Orchestration:
        # the gruflow-stage deployment lives on one work pool: a stage cannot name another
        for stage, pool in self.placement.items():
            if pool not in ("", "local", self.pool):
                raise ValueError(
                    f"placement.{stage}: '{pool}' is not the stage pool "
                    f"'{self.pool}' (orchestration.pool) — placed stages all run "
                    "there; use that name, or 'local'"
                )
        return self


TUNABLE_SECTIONS = ("model", "train")  # tune.space may name fields of these sections only
AUTO_SIZED = ("model.embedding_dim", "model.units", "model.gru_layers")  # model.size auto sets


class SpaceSpec(_Section):
    """One tuned parameter: a numeric range (int, float, logfloat) or a list of choices."""

    type: Literal["int", "float", "logfloat", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    choices: list[bool | int | float | str] | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> SpaceSpec:
        if self.type == "categorical":
            if not self.choices or (self.low, self.high, self.step) != (None, None, None):
                raise ValueError(
                    "categorical needs a non-empty 'choices' list and no low/high/step"
                )
            return self
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high' (and no 'choices')")
        if not self.low < self.high:
            raise ValueError(
                f"empty or inverted range: low ({self.low}) must be below high ({self.high})"
            )
        if self.type == "int" and not all(float(v).is_integer() for v in self.bounds()):
            raise ValueError("int needs whole-number low/high/step")
        if self.type == "logfloat" and (self.low <= 0 or self.step is not None):
            raise ValueError("logfloat needs low > 0 and no step")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be positive (got {self.step})")
        return self

    def bounds(self) -> list[int | float]:
        return [v for v in (self.low, self.high, self.step) if v is not None]

    def candidates(self) -> list[bool | int | float | str]:
        """Values whose validity for the target field stands for the whole space."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def contains(self, value: object) -> bool:
        if self.type == "categorical":
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) < 1e-9


class Tune(_Section):
    n_trials: NonNegInt
    timeout: NonNegInt
    n_workers: PosInt
    seed: NonNegInt
    sampler_startup_trials: NonNegInt
    pruner: Literal["median", "hyperband"]
    pruner_startup_trials: NonNegInt
    pruner_warmup_epochs: NonNegInt
    data_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    max_epochs: PosInt
    study_name: str = Field(strict=True, min_length=1)
    storage: str = Field(strict=True)
    space: dict[str, SpaceSpec]
    accept_nonreproducible: bool

    @model_validator(mode="after")
    def _parallel_needs_consent(self) -> Tune:
        # Parallel trials see each other's results in an order set by process scheduling, so
        # the study (and the model trained from it) would differ run to run.
        if self.n_workers > 1 and not self.accept_nonreproducible:
            raise ValueError(
                f"n_workers: {self.n_workers} parallel workers make the study "
                "depend on process scheduling — use 1, or set "
                "tune.accept_nonreproducible: true (outputs are then tagged "
                "reproducible: false)"
            )
        return self


class Serve(_Section):
    """`gruflow serve`: where it listens and the limits it enforces before the model runs."""

    host: str = Field(min_length=1)
    port: Annotated[int, Field(strict=True, gt=0, lt=65536)]
    max_request_bytes: PosInt  # larger request bodies: 413
    max_records: PosInt  # more records in one request: 400
    max_generated_tokens: PosInt  # records x max_new_tokens in one generate request: 400
    max_concurrent: PosInt  # requests predicting at once; the others wait their turn
    timeout: PosInt  # seconds one admitted request may take (then 504)


class Finetune(_Section):
    """The classification stage: a labelled source and the classifier fine-tuned on the LM."""

    source: str = Field(strict=True)  # "" = off | "builtin" | a file or folder path
    text_column: str = Field(min_length=1)
    label_column: str = Field(min_length=1)
    encoder: Literal["pretrained", "scratch"]
    compare_scratch: bool  # with encoder pretrained, also train scratch (comparison)
    freeze_epochs: NonNegInt
    epochs: PosInt
    patience: NonNegInt
    batch_size: PosInt
    learning_rate: Annotated[float, Field(gt=0.0)]
    encoder_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)]  # pretrained encoder's lr share
    head_dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    pooling: Literal["attention", "concat"]  # concat: attention ‖ masked mean ‖ masked max
    max_len: Annotated[int, Field(strict=True, ge=4)]
    val_fraction: SplitFraction
    test_fraction: SplitFraction
    seed: NonNegInt
    model_name: str = Field(min_length=1)
    min_improvement: Fraction  # challenger macro-F1 must beat the champion's by this

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> Finetune:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (train needs data)")
        if self.freeze_epochs > self.epochs:
            raise ValueError(
                f"freeze_epochs ({self.freeze_epochs}) cannot exceed epochs ({self.epochs})"
            )
        return self


class Params(_Section):
    paths: Paths
    data: Data
    clean: Clean
    split: Split
    tokenize: Tokenize
    embed: Embed
    model: ModelParams
    train: Train
    tune: Tune
    generate: Generate
    evaluate: Evaluate
    registry: Registry
    retrain: Retrain
    mlflow: Mlflow
    reproduce: Reproduce
    orchestration: Orchestration
    serve: Serve
    finetune: Finetune

    @model_validator(mode="after")
    def _embedding_dims_agree(self) -> Params:
        if self.model.embedding_init == "word2vec" and self.model.embedding_dim != self.embed.dim:
            raise ValueError(
                f"model.embedding_dim ({self.model.embedding_dim}) must equal embed.dim "
                f"({self.embed.dim}) when model.embedding_init is word2vec"
            )
        return self

    @model_validator(mode="after")
    def _near_duplicates_searched(self) -> Params:
        if not self.clean.near_dup:
            if self.clean.dedup == "near":
                raise ValueError("clean.dedup 'near' needs clean.near_dup: true")
            if self.split.group_near_duplicates:
                raise ValueError("split.group_near_duplicates needs clean.near_dup: true")
        return self

    @model_validator(mode="after")
    def _auto_sizes_not_tuned(self) -> Params:
        # auto picks these from the corpus: a study over them would train other sizes than
        # its first trial (the params.yaml values) says, and train would not know which wins
        if self.model.size == "auto" and self.tune.n_trials:
            for name in self.tune.space:
                if name in AUTO_SIZED:
                    raise ValueError(
                        f"'tune.space.{name}': model.size auto picks {name} from the corpus "
                        "— remove it from tune.space, or set model.size: explicit"
                    )
        return self

    @model_validator(mode="after")
    def _tune_space_names_fields(self) -> Params:
        for name, spec in self.tune.space.items():
            _check_space_entry(self, name, spec)
        return self


def _check_space_entry(p: Params, name: str, spec: SpaceSpec) -> None:
    """A space entry must name a model/train field, every value must suit that field, and the
    params.yaml value must lie inside (it is trial 0 of the study)."""
    key = f"'tune.space.{name}'"
    section, _, field = name.partition(".")
    if section not in TUNABLE_SECTIONS or field not in type(getattr(p, section)).model_fields:
        raise ValueError(
            f"{key}: unknown parameter — name a field of the "
            f"{' or '.join(TUNABLE_SECTIONS)} section, e.g. train.learning_rate"
        )
    current = getattr(p, section)
    for value in spec.candidates():
        try:
            type(current).model_validate({**current.model_dump(), field: value})
        except ValidationError as err:
            msg = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{key}: {value!r} is not a valid {name} ({msg})") from None
    default = getattr(current, field)
    if p.tune.n_trials and not spec.contains(default):
        raise ValueError(
            f"{key}: the {name} value {default!r} lies outside the space — widen "
            "the space (the params.yaml values are the study's first trial)"
        )


def with_overrides(p: Params, values: dict[str, object], source: str) -> Params:
    """Params with dotted `section.field` values replaced, validated again like params.yaml."""
    raw = p.model_dump()
    for name, value in values.items():
        section, _, field = name.partition(".")
        if section not in TUNABLE_SECTIONS or field not in raw[section]:
            raise GruflowError(
                f"{source}: unknown parameter '{name}' — only "
                f"{'/'.join(TUNABLE_SECTIONS)} fields can be overridden"
            )
        raw[section][field] = value
    return parse_params(raw, source)


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
    except UnicodeDecodeError as exc:
        raise GruflowError(
            f"{path}: not UTF-8 text (byte {exc.start}) — save it as UTF-8 YAML"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise GruflowError(
            f"{path}: not valid YAML{where} ({problem}) — fix the syntax there"
        ) from None
    params = parse_params(raw, path)
    _check_inside(params, path.parent, path)
    return params


def params_digest(params: Params) -> str:
    """Stable digest of the effective params (for lineage tags)."""
    blob = json.dumps(params.model_dump(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
