"""Stage `train` on a tiny project (the fixture tests/test_evaluate.py scores as well).

The project lives in a temporary folder: token Parquet files with the schema of
components/tokenize.py, built from a deterministic cyclic pattern a small GRU learns quickly;
a real (small) BPE tokenizer.json; an embeddings.npy of matching shape.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from components import evaluate, train  # noqa: E402
from components.contract import BOS, EOS  # noqa: E402
from components.errors import GruflowError  # noqa: E402
from components.lm.fit import training_data  # noqa: E402
from components.lm.windows import make_windows, read_stream, target_count  # noqa: E402
from components.params import Params, load_params  # noqa: E402
from components.tokenize import SCHEMA, train_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EMB_DIM, UNITS, SEQ_LEN = 8, 16, 12
# A fixed cycle over 20 token ids: the next token is a function of the current one.
PATTERN = np.random.default_rng(0).permutation(np.arange(4, 24)).astype(np.int32)
# (documents, pattern tokens per document) per split. The val split is short: 2 x 22 = 44
# tokens -> 42 targets (the second <bos> is none), read as 4 streams of one window of 12.
DOCS = {"train": (60, 90), "val": (2, 20), "test": (6, 90)}
TEXT = [
    "the parser reads the header and returns a list of names",
    "each thread opens a file, checks the next line and closes the socket",
    "the module writes an integer to the cached value",
] * 20


def pattern_doc(i: int, length: int = 90) -> list[int]:
    body = [int(PATTERN[(i * 7 + j) % PATTERN.size]) for j in range(length)]
    return [BOS, *body, EOS]


def write_tokens(path: Path, docs: list[list[int]]) -> None:
    table = pa.table(
        [
            pa.array([f"doc{i}" for i in range(len(docs))], pa.string()),
            pa.array(docs, pa.list_(pa.int32())),
            pa.array([4 * (len(d) - 2) + 3 for d in docs], pa.int64()),
        ],
        schema=SCHEMA,
    )
    pq.write_table(table, path)


def make_project(root: Path) -> tuple[Params, int]:
    """Clean text, token files, tokenizer and embeddings under `root`; every path absolute."""
    base = load_params(ROOT / "params.yaml")
    tokens = root / "data" / "tokens"
    tokens.mkdir(parents=True)
    offset = 0
    for split, (n, length) in DOCS.items():
        write_tokens(
            tokens / f"{split}.parquet", [pattern_doc(offset + i, length) for i in range(n)]
        )
        offset += n
    clean = root / "data" / "clean"  # the cleaned text, as components/clean.py writes it
    clean.mkdir(parents=True)
    for split, (n, _) in DOCS.items():
        pq.write_table(
            pa.table(
                {
                    "doc_id": [f"{split}{i}" for i in range(n)],
                    "text": [TEXT[i % len(TEXT)] for i in range(n)],
                    "source": ["synthetic"] * n,
                    "split": [split] * n,
                }
            ),
            clean / f"{split}.parquet",
        )
    artifacts = root / "artifacts"
    artifacts.mkdir()
    tok = train_tokenizer(
        iter(TEXT), base.tokenize.model_copy(update={"vocab_size": 300, "min_frequency": 1})
    )
    tok.save(str(artifacts / "tokenizer.json"))
    vocab = Tokenizer.from_file(str(artifacts / "tokenizer.json")).get_vocab_size()
    assert PATTERN.max() < vocab
    emb = np.random.default_rng(1).normal(scale=0.1, size=(vocab, EMB_DIM)).astype(np.float32)
    np.save(artifacts / "embeddings.npy", emb)
    # Every path into tmp; ones this test does not name go under root/other/<key>.
    paths = base.paths.model_copy(
        update={
            **{k: str(root / "other" / k) for k in base.paths.model_dump()},
            "raw": str(root / "data" / "raw"),
            "clean": str(clean),
            "tokens": str(tokens),
            "tokenizer": str(artifacts / "tokenizer.json"),
            "embeddings": str(artifacts / "embeddings.npy"),
            "model": str(artifacts / "model.keras"),
            "reports": str(root / "reports"),
        }
    )
    p = base.model_copy(
        update={
            "paths": paths,
            "tune": base.tune.model_copy(update={"n_trials": 0}),  # train on these params as is
            "embed": base.embed.model_copy(update={"dim": EMB_DIM}),
            "model": base.model.model_copy(
                update={
                    "embedding_dim": EMB_DIM,
                    "units": UNITS,
                    "gru_layers": 1,
                    "dropout": 0.0,
                    "embedding_init": "word2vec",
                    "embedding_trainable": True,
                }
            ),
            "train": base.train.model_copy(
                update={
                    "seq_len": SEQ_LEN,
                    "context": "carried",
                    "batch_size": 16,
                    "epochs": 2,
                    "learning_rate": 0.02,
                    "patience": 1,
                    "seed": 0,
                }
            ),
            "evaluate": base.evaluate.model_copy(update={"batch_size": 16}),
        }
    )
    # Nothing may point into the real project (evaluate also reads paths.clean, for samples).
    assert all(Path(v).is_relative_to(root) for v in p.paths.model_dump().values())
    return p, vocab


def with_paths(p: Params, **update) -> Params:
    return p.model_copy(update={"paths": p.paths.model_copy(update=update)})


def with_train(p: Params, **update) -> Params:
    return p.model_copy(update={"train": p.train.model_copy(update=update)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run of the tiny project (shared: training is the slow part)."""
    yield from train_tiny_project(tmp_path_factory)


def train_tiny_project(tmp_path_factory):
    """(params, vocabulary size, train summary) of the tiny project, trained without MLflow."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
        root = tmp_path_factory.mktemp("project")
        p, vocab = make_project(root)
        summary = train.run(p)
        yield p, vocab, summary


# --- train ------------------------------------------------------------------------------------


def test_train_run_writes_model_summary_and_history(trained):
    p, vocab, summary = trained
    reports = Path(p.paths.reports)
    saved = json.loads((reports / "train.json").read_text())
    timed = {"seconds", "tokens_per_second", "achieved_flops_per_second"}
    assert saved == {k: v for k, v in summary.items() if k not in timed}
    assert timed <= set(summary) and summary["tokens_per_second"] > 0  # shown, not saved
    for key in (
        "epochs_run",
        "best_epoch",
        "best_val_loss",
        "best_val_perplexity",
        "train_tokens",
        "parameters",
        "embedding_init",
    ):
        assert key in saved
    assert saved["epochs_run"] == 2
    assert saved["embedding_init"] == "word2vec"
    # which GRU kernel ran, and why (components/lm/kernels.py; tests/test_lm_kernels.py)
    assert saved["gru_kernel"] == "generic"
    assert saved["gru_kernel_reason"] == "no GPU: Keras's generic GRU loop"
    train_stream = read_stream(Path(p.paths.tokens) / "train.parquet")
    n_docs = DOCS["train"][0]
    assert saved["train_tokens"] == target_count(train_stream) == train_stream.size - n_docs
    with (reports / "train_history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    val_losses = [float(r["val_loss"]) for r in rows]
    assert saved["best_val_loss"] == pytest.approx(min(val_losses), rel=1e-6)
    assert saved["best_epoch"] == int(np.argmin(val_losses)) + 1
    assert saved["best_val_perplexity"] == pytest.approx(math.exp(saved["best_val_loss"]))
    for r in rows:
        assert float(r["val_perplexity"]) == pytest.approx(math.exp(float(r["val_loss"])), rel=1e-5)
    assert (reports / "model_summary.txt").read_text().strip()
    model = keras.saving.load_model(p.paths.model, safe_mode=True)
    assert model.outputs[0].shape[-1] == vocab
    assert model.count_params() == saved["parameters"]
    # Atomic writes leave no temporary files behind.
    leftovers = [
        f.name
        for d in (reports, Path(p.paths.model).parent)
        for f in d.iterdir()
        if f.name.startswith(".")
    ]
    assert leftovers == []


def test_train_best_val_loss_is_per_token_nll_of_the_val_split(trained):
    p, _, summary = trained
    model = keras.saving.load_model(p.paths.model, safe_mode=True)  # the restored best weights
    val = read_stream(Path(p.paths.tokens) / "val.parquet")
    s = evaluate.score_model(model, val, SEQ_LEN, p.train.batch_size)
    assert s["tokens"] == val.size - DOCS["val"][0]  # every token but each document's <bos>
    # Validation reads the split exactly as evaluate reads test: the same number.
    assert summary["best_val_loss"] == pytest.approx(s["nll"] / s["tokens"], rel=1e-5)


def test_train_same_seed_twice_is_deterministic(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
    p, _, first = trained
    assert p.train.context == "carried"  # the stateful trainer (truncated BPTT)
    p2, _ = make_project(tmp_path)
    second = train.run(p2)
    assert second["best_val_loss"] == first["best_val_loss"]
    assert second["best_epoch"] == first["best_epoch"]
    a = keras.saving.load_model(p.paths.model, safe_mode=True)
    b = keras.saving.load_model(p2.paths.model, safe_mode=True)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    # the file itself, byte for byte (save time and Keras's shared-object ids normalised), so
    # DVC gives both runs one hash; and the written reports carry no clock either
    assert Path(p.paths.model).read_bytes() == Path(p2.paths.model).read_bytes()
    for name in ("train.json", "train_history.csv"):
        assert (Path(p.paths.reports) / name).read_bytes() == (
            Path(p2.paths.reports) / name
        ).read_bytes(), name


def test_regularised_stateful_training_same_seed_twice_is_deterministic(tmp_path, monkeypatch):
    """Carried state (truncated BPTT) with every regulariser on — dropout, locked dropout,
    embedding dropout, weight drop: two runs give the same weights, model file and reports."""
    monkeypatch.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
    runs = []
    for name in ("a", "b"):
        p, _ = make_project(tmp_path / name)
        p = with_train(p, context="carried", epochs=1)
        p = p.model_copy(
            update={
                "model": p.model.model_copy(
                    update={
                        "dropout": 0.2,
                        "locked_dropout": True,
                        "embedding_dropout": 0.1,
                        "weight_drop": 0.3,
                    }
                )
            }
        )
        runs.append((p, train.run(p)))
    (pa_, a), (pb, b) = runs
    assert a["best_val_loss"] == b["best_val_loss"]
    assert Path(pa_.paths.model).read_bytes() == Path(pb.paths.model).read_bytes()
    for name in ("train.json", "train_history.csv"):
        assert (Path(pa_.paths.reports) / name).read_bytes() == (
            Path(pb.paths.reports) / name
        ).read_bytes(), name
    model = keras.saving.load_model(pa_.paths.model, safe_mode=True)
    assert model.get_layer("gru_0").weight_drop == 0.3  # the regularisers were really on


def test_train_seq_len_longer_than_train_split_raises(trained, tmp_path):
    p, _, _ = trained
    n = read_stream(Path(p.paths.tokens) / "train.parquet").size
    for seq_len in (n, n + 50):
        bad = with_paths(
            with_train(p, seq_len=seq_len),
            model=str(tmp_path / "m.keras"),
            reports=str(tmp_path / "reports"),
        )
        with pytest.raises(GruflowError, match="seq_len"):
            train.run(bad)
    assert not (tmp_path / "m.keras").exists()


def test_train_wrong_shaped_embeddings_raise_naming_the_file(trained, tmp_path):
    p, vocab, _ = trained
    bad_file = tmp_path / "bad_embeddings.npy"
    np.save(bad_file, np.zeros((vocab, EMB_DIM + 1), np.float32))
    bad = with_paths(
        p,
        embeddings=str(bad_file),
        model=str(tmp_path / "m.keras"),
        reports=str(tmp_path / "reports"),
    )
    with pytest.raises(
        GruflowError,
        match=rf"does not match vocabulary {vocab} x "
        rf"model.embedding_dim {EMB_DIM} — rerun the embed stage",
    ) as err:
        train.run(bad)
    assert str(bad_file) in str(err.value)
    assert not (tmp_path / "m.keras").exists()


def test_window_context_trains_cold_shuffled_windows(trained, tmp_path, monkeypatch):
    """`train.context: window`: every batch starts cold (no state variables), epochs are
    shuffled windows; validation still reads val with the state carried, as evaluate does."""
    monkeypatch.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
    p, _, carried = trained
    p2, _ = make_project(tmp_path)
    p2 = with_train(p2, context="window", epochs=1)
    summary = train.run(p2)
    model = keras.saving.load_model(p2.paths.model, safe_mode=True)
    val = read_stream(Path(p2.paths.tokens) / "val.parquet")
    s = evaluate.score_model(model, val, SEQ_LEN, p2.train.batch_size)
    assert summary["best_val_loss"] == pytest.approx(s["nll"] / s["tokens"], rel=1e-5)
    assert summary["best_val_loss"] != carried["best_val_loss"]
    train_stream = read_stream(Path(p2.paths.tokens) / "train.parquet")
    first = next(iter(training_data(train_stream, p2.train)[0]))[0].numpy()
    in_order = make_windows(train_stream, SEQ_LEN)[0][: len(first)]
    assert not np.array_equal(first, in_order)  # shuffled, not read in order
