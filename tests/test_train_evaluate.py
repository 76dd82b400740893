"""Stages `train` and `evaluate`, the count baselines, scoring and sampling, on a tiny project.

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
from components.carry import shuffle_documents, stream_dataset, training_data  # noqa: E402
from components.errors import GruflowError  # noqa: E402
from components.inference import score_texts, zero_states  # noqa: E402
from components.lm_pyfunc import sample_next  # noqa: E402
from components.model import build_model  # noqa: E402
from components.params import Params, load_params  # noqa: E402
from components.tokenize import BOS, EOS, PAD, SCHEMA, train_tokenizer  # noqa: E402
from components.windows import (  # noqa: E402
    make_windows,
    read_stream,
    target_count,
    unigram_log_probs,  # noqa: E402
)

ROOT = Path(__file__).resolve().parents[1]
EMB_DIM, UNITS, SEQ_LEN = 8, 16, 12
# A fixed cycle over 20 token ids: the next token is a function of the current one.
PATTERN = np.random.default_rng(0).permutation(np.arange(4, 24)).astype(np.int32)
# (documents, pattern tokens per document) per split. The val split is short: 2 x 22 = 44
# tokens -> 42 targets (the second <bos> is none), read as 4 streams of one window of 12.
DOCS = {"train": (60, 90), "val": (2, 20), "test": (6, 90)}
TEXT = ["the parser reads the header and returns a list of names",
        "each thread opens a file, checks the next line and closes the socket",
        "the module writes an integer to the cached value"] * 20


def pattern_doc(i: int, length: int = 90) -> list[int]:
    body = [int(PATTERN[(i * 7 + j) % PATTERN.size]) for j in range(length)]
    return [BOS, *body, EOS]


def write_tokens(path: Path, docs: list[list[int]]) -> None:
    table = pa.table(
        [pa.array([f"doc{i}" for i in range(len(docs))], pa.string()),
         pa.array(docs, pa.list_(pa.int32())),
         pa.array([4 * (len(d) - 2) + 3 for d in docs], pa.int64())], schema=SCHEMA)
    pq.write_table(table, path)


def make_project(root: Path) -> tuple[Params, int]:
    """Clean text, token files, tokenizer and embeddings under `root`; every path absolute."""
    base = load_params(ROOT / "params.yaml")
    tokens = root / "data" / "tokens"
    tokens.mkdir(parents=True)
    offset = 0
    for split, (n, length) in DOCS.items():
        write_tokens(tokens / f"{split}.parquet",
                     [pattern_doc(offset + i, length) for i in range(n)])
        offset += n
    clean = root / "data" / "clean"  # the cleaned text, as components/clean.py writes it
    clean.mkdir(parents=True)
    for split, (n, _) in DOCS.items():
        pq.write_table(pa.table({
            "doc_id": [f"{split}{i}" for i in range(n)],
            "text": [TEXT[i % len(TEXT)] for i in range(n)],
            "source": ["synthetic"] * n, "split": [split] * n}), clean / f"{split}.parquet")
    artifacts = root / "artifacts"
    artifacts.mkdir()
    tok = train_tokenizer(iter(TEXT), base.tokenize.model_copy(
        update={"vocab_size": 300, "min_frequency": 1}))
    tok.save(str(artifacts / "tokenizer.json"))
    vocab = Tokenizer.from_file(str(artifacts / "tokenizer.json")).get_vocab_size()
    assert PATTERN.max() < vocab
    emb = np.random.default_rng(1).normal(scale=0.1, size=(vocab, EMB_DIM)).astype(np.float32)
    np.save(artifacts / "embeddings.npy", emb)
    # Every path into tmp; ones this test does not name go under root/other/<key>.
    paths = base.paths.model_copy(update={
        **{k: str(root / "other" / k) for k in base.paths.model_dump()},
        "raw": str(root / "data" / "raw"), "clean": str(clean), "tokens": str(tokens),
        "tokenizer": str(artifacts / "tokenizer.json"),
        "embeddings": str(artifacts / "embeddings.npy"),
        "model": str(artifacts / "model.keras"), "reports": str(root / "reports")})
    p = base.model_copy(update={
        "paths": paths,
        "tune": base.tune.model_copy(update={"n_trials": 0}),  # train on these params as is
        "embed": base.embed.model_copy(update={"dim": EMB_DIM}),
        "model": base.model.model_copy(update={
            "embedding_dim": EMB_DIM, "units": UNITS, "gru_layers": 1, "dropout": 0.0,
            "embedding_init": "word2vec", "embedding_trainable": True}),
        "train": base.train.model_copy(update={
            "seq_len": SEQ_LEN, "batch_size": 16, "epochs": 2, "learning_rate": 0.02,
            "patience": 1, "seed": 0}),
        "evaluate": base.evaluate.model_copy(update={"batch_size": 16}),
    })
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
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GRUFLOW_MLFLOW_RUN_ID", raising=False)
        root = tmp_path_factory.mktemp("project")
        p, vocab = make_project(root)
        summary = train.run(p)
        yield p, vocab, summary


@pytest.fixture(scope="module")
def evaluated(trained):
    p, vocab, _ = trained
    return evaluate.run(p)


# --- train ------------------------------------------------------------------------------------


def test_train_run_writes_model_summary_and_history(trained):
    p, vocab, summary = trained
    reports = Path(p.paths.reports)
    saved = json.loads((reports / "train.json").read_text())
    assert saved == summary
    for key in ("epochs_run", "best_epoch", "best_val_loss", "best_val_perplexity",
                "train_tokens", "parameters", "embedding_init"):
        assert key in saved
    assert saved["epochs_run"] == 2
    assert saved["embedding_init"] == "word2vec"
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
        assert float(r["val_perplexity"]) == pytest.approx(math.exp(float(r["val_loss"])),
                                                           rel=1e-5)
    assert (reports / "model_summary.txt").read_text().strip()
    model = keras.saving.load_model(p.paths.model, safe_mode=True)
    assert model.outputs[0].shape[-1] == vocab
    assert model.count_params() == saved["parameters"]
    # Atomic writes leave no temporary files behind.
    leftovers = [f.name for d in (reports, Path(p.paths.model).parent) for f in d.iterdir()
                 if f.name.startswith(".")]
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
    p2, _ = make_project(tmp_path)
    second = train.run(p2)
    assert second["best_val_loss"] == first["best_val_loss"]
    assert second["best_epoch"] == first["best_epoch"]
    a = keras.saving.load_model(p.paths.model, safe_mode=True)
    b = keras.saving.load_model(p2.paths.model, safe_mode=True)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_train_seq_len_longer_than_train_split_raises(trained, tmp_path):
    p, _, _ = trained
    n = read_stream(Path(p.paths.tokens) / "train.parquet").size
    for seq_len in (n, n + 50):
        bad = with_paths(with_train(p, seq_len=seq_len), model=str(tmp_path / "m.keras"),
                         reports=str(tmp_path / "reports"))
        with pytest.raises(GruflowError, match="seq_len"):
            train.run(bad)
    assert not (tmp_path / "m.keras").exists()


def test_train_wrong_shaped_embeddings_raise_naming_the_file(trained, tmp_path):
    p, vocab, _ = trained
    bad_file = tmp_path / "bad_embeddings.npy"
    np.save(bad_file, np.zeros((vocab, EMB_DIM + 1), np.float32))
    bad = with_paths(p, embeddings=str(bad_file), model=str(tmp_path / "m.keras"),
                     reports=str(tmp_path / "reports"))
    with pytest.raises(GruflowError) as err:
        train.run(bad)
    assert str(bad_file) in str(err.value)
    assert not (tmp_path / "m.keras").exists()


def test_stream_dataset_reads_streams_in_order_each_target_once():
    stream = np.arange(4, 4 + 50, dtype=np.int32)
    ds, steps, streams, n = stream_dataset(stream, 8, 4, epochs=2)
    assert n == stream.size - 1 and streams == 4 and steps == 2  # 4 streams of 13 targets
    batches = [tuple(np.asarray(t) for t in b) for b in ds]
    assert len(batches) == 2 * steps  # two epochs, the same batches in the same order
    for a, b in zip(batches[:steps], batches[steps:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    xs, ys, ws = (np.stack(parts) for parts in zip(*batches[:steps], strict=True))  # (K, S, T)
    real = ws > 0
    assert sorted(ys[real].tolist()) == stream[1:].tolist()
    np.testing.assert_array_equal(ys[~real], PAD)
    # Batch k + 1 of a stream continues batch k: its first input is batch k's last target.
    np.testing.assert_array_equal(xs[1, :, 0], ys[0, :, -1])
    # A split shorter than batch_size windows becomes fewer, longer streams.
    assert stream_dataset(stream, 8, 64)[2] == 7


# --- evaluate ---------------------------------------------------------------------------------


def test_evaluate_run_writes_metrics_and_beats_unigram(trained, evaluated):
    p, _, _ = trained
    m = evaluated
    saved = json.loads((Path(p.paths.reports) / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for key in ("perplexity", "bits_per_byte", "token_accuracy", "baseline_perplexity",
                "bigram_perplexity"):
        assert key in saved and math.isfinite(saved[key])
    tokens = Path(p.paths.tokens)
    test = read_stream(tokens / "test.parquet")
    n_bytes = pq.read_table(tokens / "test.parquet").column("n_bytes").to_pylist()
    assert saved["test_tokens"] == test.size - len(n_bytes)  # no <bos> is a target
    assert saved["test_bytes"] == sum(n_bytes) + len(n_bytes)
    nll = math.log(saved["perplexity"]) * saved["test_tokens"]
    assert saved["bits_per_byte"] == pytest.approx(nll / math.log(2) / saved["test_bytes"],
                                                   rel=1e-6)
    n_docs = DOCS["test"][0]
    words = sum(len(TEXT[i % len(TEXT)].split()) for i in range(n_docs)) + n_docs
    assert saved["test_words"] == words
    assert saved["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-6)
    for name in ("baseline", "bigram"):  # the baselines' word figures: same NLL, per word
        base_nll = math.log(saved[f"{name}_perplexity"]) * saved["test_tokens"]
        assert saved[f"{name}_word_perplexity"] == pytest.approx(math.exp(base_nll / words),
                                                                 rel=1e-6)
    assert 0.0 <= saved["token_accuracy"] <= saved["top5_accuracy"] <= 1.0
    # The cycle is learnable: the model and the bigram both beat the unigram baseline.
    assert saved["perplexity"] < saved["baseline_perplexity"]
    assert saved["bigram_perplexity"] < saved["baseline_perplexity"]


def test_evaluate_missing_model_raises(trained, tmp_path):
    p, _, _ = trained
    bad = with_paths(p, model=str(tmp_path / "nope.keras"), reports=str(tmp_path / "r"))
    with pytest.raises(GruflowError, match="nope.keras"):
        evaluate.run(bad)


def _witten_bell_table(train_stream: np.ndarray, vocab: int) -> np.ndarray:
    """P(w | v) for every (v, w), from bigram_log_probs one pair at a time."""
    table = np.zeros((vocab, vocab))
    for v in range(vocab):
        for w in range(vocab):
            lp = evaluate.bigram_log_probs(train_stream, np.array([v, w], np.int32), vocab)
            assert lp.shape == (1,)
            table[v, w] = math.exp(lp[0])
    return table


def test_bigram_log_probs_normalise_for_seen_and_unseen_contexts():
    vocab = 9
    train_stream = np.array([2, 4, 5, 4, 5, 4, 6, 7, 4, 5, 3, 8], np.int32)
    table = _witten_bell_table(train_stream, vocab)
    seen, unseen = 4, 1  # 4 is followed by 5, 5, 6, 5; 1 never occurs (8 only as last token)
    np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(table[seen].sum(), 1.0, atol=1e-6)
    uni = np.exp(unigram_log_probs(train_stream, vocab).astype(np.float64))
    np.testing.assert_allclose(table[unseen], uni, rtol=1e-6)
    np.testing.assert_allclose(table[8], uni, rtol=1e-6)  # 8 is never a context
    # Witten-Bell by hand for context 4: c(4)=4, T(4)=2 distinct successors {5, 6}.
    np.testing.assert_allclose(table[seen, 5], (3 + 2 * uni[5]) / (4 + 2), rtol=1e-6)
    np.testing.assert_allclose(table[seen, 0], (0 + 2 * uni[0]) / (4 + 2), rtol=1e-6)
    assert table[seen, 5] > table[seen, 6] > uni[6]
    # A longer test stream gives one log-probability per transition, matching the table.
    test = np.array([4, 5, 4, 6, 1, 0, 8], np.int32)
    lp = evaluate.bigram_log_probs(train_stream, test, vocab)
    np.testing.assert_allclose(np.exp(lp), table[test[:-1], test[1:]], rtol=1e-6)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def tiny_model(vocab: int = 20, seed: int = 0, layers: int = 2):
    cfg = load_params(ROOT / "params.yaml").model.model_copy(
        update={"units": 8, "embedding_dim": 8, "gru_layers": layers, "dropout": 0.0})
    keras.utils.set_random_seed(seed)
    return build_model(cfg, vocab)


def one_pass_logp(model, stream: np.ndarray, block: int) -> np.ndarray:
    """log p(stream[i+1] | stream[:i+1]) for every i, from ONE call of the model on the whole
    stream with attention limited to blocks of `block` (the computation that carried state
    across windows of `block` must equal)."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("CausalAttention"):
            layer["config"]["block"] = block
    whole = keras.Model.from_config(config)
    whole.set_weights(model.get_weights())
    x = stream[None, :-1]
    logits = np.asarray(whole([x, *zero_states(whole, 1)], training=False)[0])[0]  # (n, V)
    return _log_softmax(logits)[np.arange(x.shape[1]), stream[1:]]


@pytest.mark.parametrize("streams", [1, 3])
def test_score_model_in_windows_equals_one_pass_per_stream(streams):
    """The evaluate stage reads the test stream in windows of T with the GRU state carried;
    the result equals one pass over each of its parallel streams within 1e-4 nats per token."""
    seq_len, vocab = 8, 20
    model = tiny_model(vocab)
    stream = np.random.default_rng(9).integers(4, vocab, size=61).astype(np.int32)
    stream[0] = BOS
    s = evaluate.score_model(model, stream, seq_len, batch_size=streams)
    L = -(-(stream.size - 1) // streams)  # target positions per stream
    expected = np.concatenate([-one_pass_logp(model, stream[j * L:(j + 1) * L + 1], seq_len)
                               for j in range(streams)])
    assert s["tokens"] == stream.size - 1 == expected.size
    np.testing.assert_allclose(s["per_target_nll"], expected, atol=1e-4)
    assert abs(s["nll"] - expected.sum()) / s["tokens"] < 1e-4
    # Not vacuous: restarting every window cold (the old evaluation) gives other numbers.
    x, y, w = make_windows(stream, seq_len)
    cold = -_log_softmax(np.asarray(model([x, *zero_states(model, len(x))])[0]))
    cold = np.take_along_axis(cold, y[..., None], -1)[..., 0].reshape(-1)[: stream.size - 1]
    assert np.abs(cold - expected)[seq_len:].max() > 1e-3


def test_bos_is_never_a_target_and_eos_always_is():
    """Hand count on two documents <bos> 5 6 <eos> <bos> 7 <eos>: the targets are 5 6 <eos>
    7 <eos> (five), never the second <bos>; model and baselines are scored on exactly those."""
    vocab = 10
    stream = np.array([BOS, 5, 6, EOS, BOS, 7, EOS], np.int32)
    model = tiny_model(vocab, layers=1)
    s = evaluate.score_model(model, stream, seq_len=4, batch_size=1)
    logp = one_pass_logp(model, stream, 4)  # one value per position, target stream[i + 1]
    is_target = np.array([1, 1, 1, 0, 1, 1], bool)  # position 3 predicts the <bos>
    assert s["tokens"] == 5 == target_count(stream)
    assert s["nll"] == pytest.approx(-logp[is_target].sum(), abs=5e-4)
    np.testing.assert_array_equal(s["per_target_weight"], is_target.astype(np.float32))
    # The unigram baseline: add-one over the train targets, <bos> never counted.
    train = np.array([BOS, 5, 5, EOS, BOS, 6, EOS], np.int32)  # targets 5 5 <eos> 6 <eos>
    p = {5: 3 / 15, 6: 2 / 15, 7: 1 / 15, EOS: 3 / 15}  # (count + 1) / (5 + 10)
    expected = -sum(math.log(p[t]) for t in (5, 6, EOS, 7, EOS))
    assert evaluate.baseline_nll(train, stream, vocab)["unigram"] == pytest.approx(expected)
    bigram = evaluate.bigram_log_probs(train, stream, vocab)
    assert evaluate.baseline_nll(train, stream, vocab)["bigram"] == pytest.approx(
        -bigram[is_target].sum())


def test_count_words_adds_one_end_per_document():
    assert evaluate.count_words(["a b  c", "d\ne"]) == 3 + 2 + 2


def test_score_texts_carries_state_across_windows(trained):
    """The pyfunc's `score` (and `gruflow score`): a text longer than seq_len equals one pass
    over the whole text; texts scored side by side do not affect each other."""
    p, vocab, _ = trained
    tok = Tokenizer.from_file(p.paths.tokenizer)
    model = tiny_model(vocab)
    texts = [" ".join(TEXT[:4]), TEXT[1]]
    ids = [np.array([BOS, *tok.encode(t, add_special_tokens=False).ids, EOS], np.int32)
           for t in texts]
    assert ids[0].size > 3 * SEQ_LEN
    rows = score_texts(model, tok, texts, SEQ_LEN, batch_size=2)
    for row, doc in zip(rows, ids, strict=True):
        expected = -one_pass_logp(model, doc, SEQ_LEN).sum()
        assert row["tokens"] == doc.size - 1
        assert abs(row["nll"] - expected) / row["tokens"] < 1e-4
    alone = score_texts(model, tok, texts[1:], SEQ_LEN)
    assert alone[0]["nll"] == pytest.approx(rows[1]["nll"], rel=1e-6)


def test_make_windows_weights_zero_on_padding_and_bos_targets():
    x, y, w = make_windows(np.arange(4, 4 + 21, dtype=np.int32), 6)
    assert x.shape == (4, 6) and w.sum() == 20
    assert (y[w == 0] == PAD).all()
    x, y, w = make_windows(np.array([BOS, 5, EOS, BOS, 6, EOS], np.int32), 6)
    assert w.tolist() == [[1, 1, 0, 1, 1, 0]]  # <bos> target and the padded slot


# --- sampling ---------------------------------------------------------------------------------


def _logits(seed: int, n: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=n).astype(np.float32)


def test_sample_next_temperature_zero_is_argmax():
    rng = np.random.default_rng(0)
    for seed in range(20):
        z = _logits(seed)
        assert sample_next(z, 0.0, 0, rng) == int(np.argmax(z))
        assert sample_next(z, 0.0, 5, rng) == int(np.argmax(z))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 5.0])
def test_sample_next_top_k_one_is_argmax(temperature):
    rng = np.random.default_rng(1)
    for seed in range(20):
        z = _logits(seed)
        before = z.copy()
        assert sample_next(z, temperature, 1, rng) == int(np.argmax(z))
        np.testing.assert_array_equal(z, before)  # the caller's logits are not modified


def test_sample_next_top_k_restricts_support_and_follows_softmax():
    z = _logits(3, n=8)
    rng = np.random.default_rng(2)
    top3 = set(np.argsort(z)[-3:].tolist())
    assert {sample_next(z, 1.0, 3, rng) for _ in range(300)} <= top3
    draws = np.array([sample_next(z, 2.0, 0, rng) for _ in range(4000)])
    freq = np.bincount(draws, minlength=z.size) / draws.size
    p = np.exp(z / 2.0 - (z / 2.0).max())
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.03)


def test_sample_next_same_seed_same_samples():
    z = _logits(4)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_next(z, 1.5, 10, rng) for _ in range(40)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_carried_epochs_shuffle_whole_documents_reproducibly():
    docs = [pattern_doc(i, length=3 + i % 5) for i in range(12)]
    stream = np.concatenate(docs).astype(np.int32)
    a, b = shuffle_documents(stream, 0, 0), shuffle_documents(stream, 0, 1)
    np.testing.assert_array_equal(a, shuffle_documents(stream, 0, 0))  # keyed on (seed, epoch)
    assert not np.array_equal(a, b) and not np.array_equal(a, stream)

    def split(s):
        return sorted(tuple(d) for d in np.split(s, np.flatnonzero(s == BOS)[1:]))

    assert split(a) == split(b) == split(stream)  # whole documents, each once
    ds, steps, streams, n = stream_dataset(stream, 6, 3, epochs=2, seed=0)
    batches = [tuple(np.asarray(t) for t in batch) for batch in ds]
    assert len(batches) == 2 * steps
    for epoch in range(2):  # every target once per epoch, in that epoch's document order
        ys = np.stack([b[1] for b in batches[epoch * steps:(epoch + 1) * steps]])
        ws = np.stack([b[2] for b in batches[epoch * steps:(epoch + 1) * steps]])
        assert ws.sum() == n == target_count(stream)
        shuffled = shuffle_documents(stream, 0, epoch)
        np.testing.assert_array_equal(ys.transpose(1, 0, 2).reshape(streams, -1)[0][:5],
                                      shuffled[1:6])
    resumed = [np.asarray(b[0]) for b in stream_dataset(stream, 6, 3, 2, seed=0,
                                                        first_epoch=1)[0]]
    np.testing.assert_array_equal(np.stack(resumed), np.stack([b[0] for b in batches[steps:]]))


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


def test_generate_reads_blocks_with_state_carried(trained):
    """Greedy generation past seq_len: finished blocks pass on their GRU state, attention sees
    the current block — the same tokens as greedy steps of one pass with block attention."""
    from components.inference import generate

    p, vocab, _ = trained
    tok = Tokenizer.from_file(p.paths.tokenizer)
    model = tiny_model(vocab, seed=3)
    kernel, bias = model.get_layer("logits").get_weights()
    bias[:4] = -30.0  # no special token: the continuation runs its full length
    model.get_layer("logits").set_weights([kernel, bias])
    prompt, n = "the parser reads", 2 * SEQ_LEN + 5
    ids = [BOS, *tok.encode(prompt, add_special_tokens=False).ids]
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("CausalAttention"):
            layer["config"]["block"] = SEQ_LEN
    whole = keras.Model.from_config(config)
    whole.set_weights(model.get_weights())
    for _ in range(n):
        x = np.array([ids], np.int32)
        ids.append(int(np.argmax(np.asarray(whole([x, *zero_states(whole, 1)])[0])[0, -1])))
    got = generate(model, tok, prompt, n, 0.0, 0, 0, SEQ_LEN)
    assert got == tok.decode(ids[-n:])
    assert len(ids) > 2 * SEQ_LEN  # the text spans three blocks
