"""The champion/challenger gate on a real MLflow sqlite registry, with models whose scores are
known by construction: uniform (every token equally likely), unigram (the test tokens' own
frequencies: better), NaN, and a word-level model that knows almost no word and puts all its
probability on <unk> — cheap targets that only the <unk> byte charge exposes."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from components.contract import EOS, UNK, encode  # noqa: E402
from components.lm.model import build_model  # noqa: E402
from components.params import load_params  # noqa: E402
from components.tokenize import train_tokenizer  # noqa: E402
from flows import registry, tracking  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "the parser reads the header and returns a list of names",
    "each thread opens a file, checks the next line and closes the socket",
    "the module writes an integer to the cached value",
    "a function returns the value of the attribute when it is set",
]
BEATS_BIGRAM = {"perplexity": 20.0, "bigram_perplexity": 50.0}


def save(path: Path, cfg, vocab: int, bias: np.ndarray) -> None:
    """A model whose logits are `bias` at every position (output kernel zero)."""
    keras.utils.set_random_seed(0)
    model = build_model(cfg, vocab)
    kernel, _ = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([np.zeros_like(kernel), bias.astype(np.float32)])
    model.save(path)


@pytest.fixture(scope="module")
def gate_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    (root / "components").symlink_to(ROOT / "components")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["seq_len"] = 16
    raw["tune"]["n_trials"] = 0  # no tune stage here: params.yaml is what the models use
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(root / "params.yaml")
    cfg = params.model.model_copy(
        update={"units": 8, "embedding_dim": 8, "embedding_init": "random"}
    )
    bpe = train_tokenizer(
        iter(TEXTS * 4), params.tokenize.model_copy(update={"vocab_size": 300, "min_frequency": 1})
    )
    bpe.save(str(root / "bpe.json"))
    v = bpe.get_vocab_size()
    counts = np.bincount(np.concatenate([ids[1:] for ids in encode(bpe, TEXTS)]), minlength=v)
    save(root / "uniform.keras", cfg, v, np.zeros(v))
    save(root / "unigram.keras", cfg, v, np.log(np.maximum(counts, 1e-3) / counts.sum()))
    save(root / "nan.keras", cfg, v, np.full(v, np.nan))
    # knows two words; all its probability on <unk>, a little on <eos>
    word = train_tokenizer(
        iter(["zzz qqq"]),
        params.tokenize.model_copy(update={"kind": "word", "vocab_size": 100, "min_frequency": 1}),
    )
    word.save(str(root / "word.json"))
    bias = np.full(word.get_vocab_size(), -30.0)
    bias[UNK], bias[EOS] = 0.0, -3.0
    save(root / "unk.keras", cfg, word.get_vocab_size(), bias)
    (root / "clean").mkdir()
    pq.write_table(pa.table({"text": TEXTS}), root / "clean" / "test.parquet")
    prev_uri = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        tracking.configure(root, "gruflow")
        yield {"root": root, "params": params}
        mlflow.set_tracking_uri(prev_uri)


def gate(project, name: str, model: str, tokenizer: str = "bpe.json") -> dict:
    """Register `model` as a new version of `name` and gate it (min_improvement 1 %)."""
    root, params = project["root"], project["params"]
    params = params.model_copy(
        update={
            "registry": params.registry.model_copy(update={"model_name": name}),
            "paths": params.paths.model_copy(
                update={"model": str(root / model), "tokenizer": str(root / tokenizer)}
            ),
        }
    )
    with mlflow.start_run() as run:
        version = tracking.log_and_register_model(
            root, params, run.info.run_id, tags={}, metrics={}
        )
    return registry.gate(name, version, BEATS_BIGRAM, root / "clean" / "test.parquet", 0.01)


@pytest.fixture(scope="module")
def decisions(gate_project):
    """Versions 1..6 of one model, each gated in turn: NaN (first, its metrics beat the bigram)
    <- uniform (finite) <- unigram (better) <- unigram (tie) <- uniform (worse) <- <unk>."""
    names = ["nan_first", "after_nan", "better", "tie", "worse", "unk"]
    models = [
        "nan.keras",
        "uniform.keras",
        "unigram.keras",
        "unigram.keras",
        "uniform.keras",
        "unk.keras",
    ]
    return {
        n: gate(gate_project, "lm", m, "word.json" if n == "unk" else "bpe.json")
        for n, m in zip(names, models, strict=True)
    }


def champion(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, "champion").version)


def test_a_better_challenger_replaces_the_champion(decisions):
    d = decisions["better"]
    assert d["promoted"] is True and d["champion_before"] == "2"
    assert d["challenger_charged_bits_per_byte"] < 0.99 * d["champion_charged_bits_per_byte"]
    tags = MlflowClient().get_model_version("lm", "3").tags
    assert tags["gate.promoted"] == "True" and tags["previous_champion"] == "2"


def test_a_tie_and_a_worse_challenger_are_not_promoted(decisions):
    tie, worse = decisions["tie"], decisions["worse"]
    assert tie["champion_before"] == "3" and tie["promoted"] is False
    assert tie["challenger_bits_per_byte"] == pytest.approx(tie["champion_bits_per_byte"])
    assert worse["champion_before"] == "3" and worse["promoted"] is False
    assert worse["challenger_bits_per_byte"] > worse["champion_bits_per_byte"]


def test_a_challenger_winning_only_through_unk_is_not_promoted(decisions):
    d = decisions["unk"]
    assert d["champion_before"] == "3" and d["promoted"] is False
    assert d["challenger_unk_rate"] > 0.8 and d["champion_unk_rate"] == 0.0
    # on the model's own loss it would win by far; the bytes its <unk>s stand for cost more
    assert d["challenger_bits_per_byte"] < 0.5 * d["champion_bits_per_byte"]
    assert d["challenger_charged_bits_per_byte"] > d["champion_charged_bits_per_byte"]
    assert champion("lm") == "3"


def test_a_nan_champion_is_replaced_by_a_finite_challenger(decisions):
    assert decisions["nan_first"]["promoted"] is True  # a first version: only the bigram counts
    d = decisions["after_nan"]
    assert d["champion_before"] == "1" and math.isnan(d["champion_bits_per_byte"])
    assert math.isfinite(d["challenger_bits_per_byte"]) and d["promoted"] is True
    tags = MlflowClient().get_model_version("lm", "2").tags
    assert tags["gate.promoted"] == "True" and tags["previous_champion"] == "1"


def test_better_compares_finite_scores_by_the_relative_margin():
    assert registry.better(0.98, 1.0, 0.01) and not registry.better(0.995, 1.0, 0.01)
    assert registry.better(5.0, math.nan, 0.01) and registry.better(5.0, math.inf, 0.01)
    assert not registry.better(math.nan, 1.0, 0.01) and not registry.better(math.nan, math.nan, 0)


def test_every_decision_says_why_and_what_next(decisions):
    """The decision line (CLI summary) is the version's description; the registered model's
    description names the champion."""
    client = MlflowClient()
    tie, better = decisions["tie"]["line"], decisions["better"]["line"]
    assert (
        tie.startswith("registered model version 4 as challenger: bits/byte ")
        and "promote it with `gruflow promote 4`" in tie
    )
    assert better.startswith("registered model version 3 as champion: bits/byte ")
    assert tie in client.get_model_version("lm", "4").description
    assert "Version 3 is the champion" in client.get_registered_model("lm").description


def test_without_a_champion_the_advice_is_to_promote_the_challenger(gate_project, capsys):
    """A first version that does not beat the bigram is only challenger: `gruflow generate`
    says to promote it (not to run the pipeline); with no version at all, to run it."""
    from flows.cli import main

    root, params = gate_project["root"], gate_project["params"]
    name = params.registry.model_name  # what `gruflow generate` in this project loads
    p = params.model_copy(
        update={
            "paths": params.paths.model_copy(
                update={"model": str(root / "uniform.keras"), "tokenizer": str(root / "bpe.json")}
            )
        }
    )
    with mlflow.start_run() as run:
        version = tracking.log_and_register_model(root, p, run.info.run_id, tags={}, metrics={})
    d = registry.gate(
        name,
        version,
        {"perplexity": 60.0, "bigram_perplexity": 50.0},
        root / "clean" / "test.parquet",
        0.01,
    )
    assert d["promoted"] is False and "does not beat the bigram baseline 50.00" in d["line"]
    assert "No champion yet" in MlflowClient().get_registered_model(name).description
    capsys.readouterr()  # MLflow's registration lines above
    assert main(["generate", "the parser", "--project", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and f"version {version} is the challenger" in err[0]
        and f"promote it with `gruflow promote {version}`" in err[0]
        and "gruflow run" not in err[0]
    )
    with pytest.raises(registry.GruflowError, match="run `gruflow run` first"):
        registry.model_uri("no-such-model")
    registry.promote(name, version)  # what the advice says to do
    assert registry.model_uri(name) == f"models:/{name}@champion"
    assert (
        f"Version {version} is the champion"
        in MlflowClient().get_registered_model(name).description
    )
