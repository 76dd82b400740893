"""`model.size: auto` (components/sizing.py): the rule, its validation, and that its choice
reaches the tokenizer, the model and the reports (README "Model size")."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components import tokenize
from components.errors import GruflowError
from components.params import load_params, parse_params
from components.sizing import (
    Size,
    choose_size,
    clean_train_bytes,
    resolve_size,
    size_report,
    sized_params,
    token_train_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_TRAIN_BYTES = 1_826_623  # the built-in corpus's train split (reports/clean.json, 3.11)


def auto(p, **tune):
    """`p` with model.size auto and tuning off (the default tune.space names model.units)."""
    return p.model_copy(
        update={
            "model": p.model.model_copy(update={"size": "auto"}),
            "tune": p.tune.model_copy(update={"n_trials": 0, **tune}),
        }
    )


def test_auto_picks_exactly_the_params_yaml_sizes_on_the_built_in_corpus():
    p = load_params(ROOT / "params.yaml")
    defaults = Size(p.tokenize.vocab_size, p.model.embedding_dim, p.model.units, p.model.gru_layers)
    assert defaults == Size(4000, 64, 128, 1)
    assert choose_size(BUILTIN_TRAIN_BYTES, p.train.epochs) == defaults
    # a built-in corpus from another Python's docs keeps them: the band is 1-4 MiB (open)
    for n_bytes in (2**20 + 1, 3 * 2**20, 4 * 2**20 - 1):
        assert choose_size(n_bytes, p.train.epochs) == defaults


def parameters(s: Size) -> int:
    e, h, v = s.embedding_dim, s.units, s.vocab_size
    gru = 3 * (e * h + h * h) + 3 * (s.gru_layers - 1) * 2 * h * h
    return v * e + gru + h * v


def test_sizes_grow_monotonically_with_the_corpus_and_the_budget():
    grid = [int(1e4 * 1.3**k) for k in range(45)]  # 10 kB .. 1.3 GB
    for epochs in (1, 4, 16):
        sizes = [choose_size(n, epochs) for n in grid]
        for a, b in zip(sizes, sizes[1:], strict=False):
            assert b.vocab_size >= a.vocab_size and b.embedding_dim >= a.embedding_dim
            assert b.units * b.gru_layers >= a.units * a.gru_layers
            assert parameters(b) >= parameters(a)
        assert sizes[0] == Size(1000, 32, 128, 1)  # the floors
        assert sizes[-1].vocab_size == 32000 and sizes[-1].embedding_dim == 512
    for n in grid:
        widths = [choose_size(n, e).units * choose_size(n, e).gru_layers for e in (1, 2, 4, 8)]
        assert widths == sorted(widths)
    assert choose_size(2**30, 64) == Size(32000, 512, 512, 2)  # width past 512: a 2nd layer


def test_each_fourfold_corpus_doubles_the_sizes():
    small, ref, large = (choose_size(n, 4) for n in (2**19, 2**21, 2**23))
    assert (small.vocab_size, small.embedding_dim, small.units) == (2000, 32, 128)  # floor
    assert (large.vocab_size, large.embedding_dim, large.units) == (8000, 128, 256)
    assert ref == Size(4000, 64, 128, 1)
    assert choose_size(2**21, 16).units == 256  # 4x the epochs: 2x the units, same vocabulary


@pytest.mark.parametrize("bad", [(0, 4), (1000, 0), (-5, 4)])
def test_choose_size_refuses_non_positive_counts(bad):
    with pytest.raises(ValueError, match="must be positive"):
        choose_size(*bad)


def test_explicit_keeps_every_value_and_reads_no_file(tmp_path):
    p = load_params(ROOT / "params.yaml")
    assert p.model.size == "explicit"
    assert resolve_size(p, 10) is p
    assert sized_params(p, tmp_path) is p  # no token files there: not read
    assert size_report(p, 0) == {"mode": "explicit"}


def test_auto_sets_model_embed_and_subword_vocabulary_together():
    p = auto(load_params(ROOT / "params.yaml"))
    q = resolve_size(p, 2**23)
    assert (q.model.embedding_dim, q.model.units, q.model.gru_layers) == (128, 256, 1)
    assert q.embed.dim == q.model.embedding_dim == 128  # word2vec init needs them equal
    assert q.tokenize.vocab_size == 8000
    word = p.model_copy(update={"tokenize": p.tokenize.model_copy(update={"kind": "word"})})
    assert resolve_size(word, 2**23).tokenize.vocab_size == p.tokenize.vocab_size
    assert size_report(word, 2**23)["vocab_size"] == p.tokenize.vocab_size


def test_auto_size_that_breaks_another_value_names_it():
    p = auto(load_params(ROOT / "params.yaml"))
    p = p.model_copy(update={"model": p.model.model_copy(update={"attention_heads": 3})})
    with pytest.raises(GruflowError, match=r"model.size auto .*attention_heads \(3\)"):
        resolve_size(p, 2**21)


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_bad_size_value_is_one_line_naming_the_key():
    raw = raw_params()
    raw["model"]["size"] = "large"
    with pytest.raises(GruflowError) as err:
        parse_params(raw)
    assert "'model.size'" in str(err.value) and "\n" not in str(err.value)


def test_auto_with_a_tuned_size_names_the_space_entry():
    raw = raw_params()
    raw["model"]["size"] = "auto"
    assert raw["tune"]["n_trials"] > 0 and "model.units" in raw["tune"]["space"]
    with pytest.raises(GruflowError, match=r"'tune.space.model.units': model.size auto"):
        parse_params(raw)
    raw["tune"]["space"].pop("model.units")
    assert parse_params(raw).model.size == "auto"


def write_clean(clean: Path, n_words: int = 24_000) -> None:
    """A train split with ~3,000 distinct made-up words (BPE has merges to spare)."""
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ne", "tu", "ra", "si", "po", "de", "gu", "vo", "ze"]
    words = ["".join(rng.choice(syllables, size=3)) for _ in range(3000)]
    clean.mkdir(parents=True)
    for split, n in {"train": n_words, "val": 600, "test": 600}.items():
        picks = rng.choice(words, size=n)
        docs = [" ".join(picks[i : i + 60]) for i in range(0, n, 60)]
        table = pa.table({"doc_id": [f"{split}{i}" for i in range(len(docs))], "text": docs})
        pq.write_table(table, clean / f"{split}.parquet")


def test_tokenize_stage_trains_auto_vocabulary_and_reports_it(tmp_path, monkeypatch):
    raw = raw_params()
    raw["model"]["size"] = "auto"
    raw["tune"]["space"].pop("model.units")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    write_clean(tmp_path / raw["paths"]["clean"])
    monkeypatch.chdir(tmp_path)
    tokenize.main()
    report = json.loads((tmp_path / "reports" / "tokenize.json").read_text())
    n_bytes = clean_train_bytes(tmp_path / raw["paths"]["clean"])
    assert token_train_bytes(tmp_path / raw["paths"]["tokens"]) == n_bytes  # later stages agree
    assert report["size"] == {"mode": "auto", "train_bytes": n_bytes, "epochs": 4} | (
        choose_size(n_bytes, 4).as_dict()
    )
    assert report["size"]["vocab_size"] == 1000 < raw["tokenize"]["vocab_size"]
    assert report["vocab_size"] == 1000  # the tokenizer really has auto's vocabulary
    # the embed/tune/train view of the same split picks the same sizes
    p = sized_params(load_params("params.yaml"))
    assert p.embed.dim == p.model.embedding_dim == report["size"]["embedding_dim"]


def test_later_stages_need_the_token_files(tmp_path):
    p = auto(load_params(ROOT / "params.yaml"))
    with pytest.raises(GruflowError, match="train.parquet: missing — run the tokenize stage"):
        sized_params(p, tmp_path)
    with pytest.raises(GruflowError, match="train.parquet: missing — run the clean stage"):
        clean_train_bytes(tmp_path)


def test_train_stage_builds_and_reports_auto_sizes(tmp_path, monkeypatch):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    import components.lm.model  # noqa: F401  (registers the custom layers for loading)
    from components import train
    from components.tuning.best import effective_params
    from tests.test_train import make_project

    monkeypatch.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
    p, _ = make_project(tmp_path)
    p = auto(
        p.model_copy(update={"model": p.model.model_copy(update={"embedding_init": "random"})})
    )
    n_bytes = token_train_bytes(Path(p.paths.tokens))
    chosen = choose_size(n_bytes, p.train.epochs)
    assert chosen.units != p.model.units  # the tiny project's explicit 16 would be kept
    train.run(p)
    saved = json.loads((Path(p.paths.reports) / "train.json").read_text())["size"]
    assert saved["mode"] == "auto"
    assert (saved["units"], saved["embedding_dim"], saved["gru_layers"]) == (
        chosen.units,
        chosen.embedding_dim,
        chosen.gru_layers,
    )
    model = keras.saving.load_model(p.paths.model, compile=False)
    assert model.get_layer("gru_0").units == chosen.units
    assert model.get_layer("embedding").output_dim == chosen.embedding_dim
    # what the flow logs to MLflow as model.* params (flows/tracking.log_train)
    assert effective_params(p)[0].model.units == chosen.units
    report = json.loads((Path(p.paths.reports) / "train.json").read_text())
    assert math.isfinite(report["best_val_loss"])
